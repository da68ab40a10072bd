"""A frozen generator as a source of synthetic samples: z -> (block features, image[, true mask]).

Generator checkpoints are plain dicts loaded with ``weights_only=True``::

    {"format": "lagm_ray.generator/v1", "init_kwargs": {...Generator(**kw)...},
     "state_dict": {...NVlabs G_ema names...}, "meta": {"category", "class_names", "resolution", ...}}

For the embedded world the latent *is* the scene: the renderer's parameters are
``normal_cdf(z[:, :P])``, so every generated image has an exact true mask (the render of those
parameters), which no real GAN can offer. ``embedded:<category>`` names the toy generators shipped
in ``lagm_ray/assets``. A file is told by its content, whatever its suffix: a torch.save checkpoint (zip or
legacy format) is read with ``weights_only=True``; a pickle is taken for an NVlabs stylegan2-ada-pytorch network
pickle, read by :mod:`lagm_ray.models.nvlabs_import` (which never runs code from the pickle); any other file
(an image, an archive) is refused with its type named. ``lagm import-generator`` converts an NVlabs pickle to the
format above once, with a category and class names in its meta.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .data.toyworld import render
from .errors import CheckpointError, ConfigError
from .models.generator import Generator
from .models.nvlabs_import import check_generator_init_kwargs, import_generator
from .models.safe_pickle import identify_file
from .storage import load_checkpoint

ASSETS = Path(__file__).parent / "assets"
GENERATOR_FORMAT = "lagm_ray.generator/v1"


def embedded_generator_path(category: str) -> Path:
    return ASSETS / f"toy_generator_{category}.pt"


def resolve_generator_path(spec: str) -> Path:
    if spec.startswith("embedded:"):
        return embedded_generator_path(spec.split(":", 1)[1])
    return Path(spec)


def latent_to_params(z: torch.Tensor, num_params: int) -> torch.Tensor:
    """Standard-normal latents -> uniform [0, 1) renderer parameters (the embedded world's scene)."""
    p = 0.5 * (1.0 + torch.erf(z[:, :num_params].double() / 2.0**0.5))
    return p.float().clamp(0.0, 1.0 - 1e-6)


def _read_checkpoint_file(path: Path) -> dict[str, Any]:
    """A torch checkpoint with ``torch.load(weights_only=True)``, an NVlabs pickle with the importer, whatever
    the suffix; anything else refused, naming what it is. Torch's errors are rephrased: they advise loading
    with ``weights_only=False``, which would run code from the file."""
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint not found: {path} (not a file)")
    found = identify_file(path)
    if found.kind in ("pickle", "empty"):
        return import_nvlabs_checkpoint(path)
    if found.kind != "torch":
        raise CheckpointError(f"{path}: this is {found.description}, not a generator checkpoint (a lagm_ray "
                              "checkpoint written by torch.save, or an NVlabs network pickle)")
    return load_checkpoint(path)  # its errors are rephrased (storage.torch_load_error)


def import_nvlabs_checkpoint(pkl: str | Path, category: str | None = None,
                             class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """An NVlabs pickle's G_ema as a generator checkpoint dict (``GENERATOR_FORMAT``)."""
    G, init_kwargs, meta = import_generator(pkl)
    if category is not None:
        meta["category"] = category
    if class_names is not None:
        meta["class_names"] = list(class_names)
    return {"format": GENERATOR_FORMAT, "init_kwargs": init_kwargs, "state_dict": G.state_dict(), "meta": meta}


def read_generator_checkpoint(spec: str | Path) -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint dict) of a generator spec: ``embedded:<category>``, or a file: a lagm_ray checkpoint
    or an NVlabs network pickle, told apart by content."""
    path = resolve_generator_path(str(spec))
    if not path.exists():
        hint = " (train it with `lagm train-generator`)" if str(spec).startswith("embedded:") else ""
        raise FileNotFoundError(f"generator checkpoint not found: {path}{hint}")
    ckpt = _read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != GENERATOR_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a lagm_ray generator checkpoint (format {found!r})")
    check_generator_init_kwargs(ckpt.get("init_kwargs"), str(path))
    return path, ckpt


def generator_meta(spec: str | Path) -> dict[str, Any]:
    return dict(read_generator_checkpoint(spec)[1].get("meta", {}))


def check_generator_fits(spec: str | Path, img_resolution: int, generator_classes: Sequence[str] | None,
                         resolution: int, class_names: Sequence[str]) -> None:
    """Refuse a generator that cannot serve the data: ``data.resolution`` must be one of its synthesis blocks
    (a lower one runs the synthesis only up to it) and its part classes, when it names them, the dataset's.
    The driver checks this from the checkpoint alone, before anything is built or Ray starts."""
    blocks = [2 ** i for i in range(2, int(img_resolution).bit_length())]
    if resolution not in blocks:
        raise ConfigError(f"data.resolution is {resolution} but the generator {spec} makes {img_resolution} px "
                          f"images (blocks at {blocks} px)")
    if generator_classes and list(generator_classes) != list(class_names):
        raise ConfigError(f"generator.checkpoint {spec}: its classes {list(generator_classes)} "
                          f"differ from the dataset's {list(class_names)}")


def load_generator(spec: str | Path, device: torch.device | str = "cpu") -> tuple[Generator, dict[str, Any]]:
    _, ckpt = read_generator_checkpoint(spec)
    G = Generator(**ckpt["init_kwargs"])
    G.load_state_dict(ckpt["state_dict"], strict=True)
    G.eval().requires_grad_(False).to(device)
    return G, dict(ckpt.get("meta", {}))


@dataclass
class SyntheticBatch:
    z: torch.Tensor
    features: list[torch.Tensor]  # synthesis block outputs, coarse to fine
    images: torch.Tensor  # [B, 3, R, R] in [-1, 1]
    true_masks: torch.Tensor | None  # [B, R, R] for the embedded world, else None


class SyntheticSource:
    """Samples a frozen generator. Deterministic given the torch.Generator (or seed) passed in."""

    def __init__(self, G: Generator, meta: dict[str, Any], truncation_psi: float = 1.0,
                 truncation_cutoff: int | None = None, noise_mode: str = "const", resolution: int | None = None):
        """``resolution`` below the generator's runs synthesis only up to that block and takes its running
        skip image as the image: for the toy generators, trained to match the render at every block
        (deep supervision), that is the same scene at that resolution, for a fraction of the cost. For
        NVlabs' generators the skip image of an inner block is only StyleGAN2's partial sum."""
        if resolution is not None and resolution not in G.block_resolutions:
            raise ValueError(f"resolution {resolution} is not one of the generator's block resolutions "
                             f"{G.block_resolutions}")
        self.G = G
        self._resolution = resolution or G.img_resolution
        self.meta = meta
        self.truncation_psi = truncation_psi
        self.truncation_cutoff = truncation_cutoff
        self.noise_mode = noise_mode
        self.device = next(G.parameters()).device

    @classmethod
    def from_spec(cls, spec: str, device: torch.device | str = "cpu", **kwargs: Any) -> "SyntheticSource":
        G, meta = load_generator(spec, device)
        return cls(G, meta, **kwargs)

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def block_resolutions(self) -> list[int]:
        """The synthesis blocks that run: the ones whose outputs are the features."""
        return [r for r in self.G.block_resolutions if r <= self._resolution]

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def category(self) -> str | None:
        return self.meta.get("category")

    @property
    def has_true_masks(self) -> bool:
        return self.meta.get("world") == "embedded" and self.truncation_psi == 1.0

    def feature_channels(self) -> list[int]:
        return self.G.feature_channels()[:len(self.block_resolutions)]

    def latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim, generator=generator).to(self.device)

    def seeded_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """One latent per seed, each drawn from its own ``torch.Generator().manual_seed(seed)``: image i
        depends on ``seeds[i]`` alone, not on which batch, shard, worker or order it is generated in."""
        return torch.stack([torch.randn(self.G.z_dim, generator=torch.Generator().manual_seed(int(s)))
                            for s in seeds]).to(self.device)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, generator: torch.Generator | None = None,
               z: torch.Tensor | None = None) -> SyntheticBatch:
        if z is None:
            if generator is None:
                generator = torch.Generator().manual_seed(0 if seed is None else seed)
            z = self.latents(n, generator)
        images, features = self.G(z.to(self.device), None, truncation_psi=self.truncation_psi,
                                  truncation_cutoff=self.truncation_cutoff, noise_mode=self.noise_mode,
                                  return_features=True, resolution=self._resolution)
        true_masks = self.true_masks(z) if self.has_true_masks else None
        return SyntheticBatch(z=z, features=[f.float() for f in features], images=images.clamp(-1, 1),
                              true_masks=true_masks)

    def true_masks(self, z: torch.Tensor) -> torch.Tensor:
        params = latent_to_params(z.cpu(), self.meta["num_params"])
        _, masks = render(self.meta["category"], params, self.resolution)
        return masks.to(self.device)


# ---- what the trainer, the methods and data generation take from a batch


def feature_select(features: Sequence[torch.Tensor], index: Sequence[int] | None) -> list[torch.Tensor]:
    """The generator blocks that feed the annotator (``annotator.feature_resolutions``)."""
    return list(features) if index is None else [features[i] for i in index]


def feature_index(available: Sequence[int], resolutions: Sequence[int]) -> list[int]:
    """Indices of the generator blocks (``available`` block resolutions) that ``annotator.feature_resolutions``
    names; every block when it is empty. Shared by the trainer and `lagm generate`, which rebuild the same
    annotator from a checkpoint."""
    available = list(available)
    if not resolutions:
        return list(range(len(available)))
    bad = [r for r in resolutions if r not in available]
    if bad:
        raise ConfigError(f"annotator.feature_resolutions: {bad} not among the generator's blocks {available}")
    return [available.index(r) for r in sorted(resolutions)]


def to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Synthetic images down to the segmentor's input resolution (Table C.9)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="area")


def sample(n: int, seed: int, category: str = "faces", device: str = "cpu") -> SyntheticBatch:
    """``sample(n, seed)`` on an embedded toy generator: features, image and true mask."""
    return SyntheticSource.from_spec(f"embedded:{category}", device).sample(n, seed=seed)
