"""What determines a dataset's rows, and so its identity: the generation settings (:class:`GenerationSpec`) and
the annotator and generator that label (:class:`AnnotatorInfo`, identified by content, not by path).

Determinism. A row is a function of its seed and of the dataset's identity (annotator and generator
files, truncation, filters, forward batch size): each latent comes from its own
``torch.Generator().manual_seed(seed)`` and shard k always holds the same seeds, so the number of workers
and the order they finish in change nothing. The forward batch size is part of the identity because CPU
matrix products round differently for different batch sizes (about 1e-6), which is enough to move a few
pixels across a uint8 boundary. The torch thread count splits those sums differently too, so rows are
byte-identical only between workers with the same thread count (a Ray actor: ``int(cpus_per_actor)``, at
least 1); at different counts, and between a CPU and a GPU, they agree only up to such rounding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .. import __version__
from ..errors import ConfigError, DataError

DATASET_FORMAT = "lagm_ray.dataset/v1"


class DatasetError(DataError):
    """A generated dataset directory, manifest or shard is missing, corrupt or does not match; names the file."""


class SettingsMismatch(DatasetError):
    """The directory (manifest or a shard) holds rows of another identity than the command asks for."""


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate. Every field changes the rows, so all of them are part of a dataset's identity."""

    num_images: int
    shard_size: int = 500
    seed: int = 0  # shard k holds seeds [seed + k * shard_size, seed + (k + 1) * shard_size)
    batch_size: int = 16  # generator forward batch (see the module docstring for why it is identity)
    truncation_psi: float | None = None  # None: the annotator run's generator.truncation_psi
    min_confidence: float | None = None  # drop images whose confidence is below (DatasetGAN-style filtering)
    max_entropy: float | None = None  # drop images whose mean entropy is above

    def __post_init__(self) -> None:
        """Each bad value is a ConfigError naming the option of `lagm generate` that sets it."""
        for name in ("num_images", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_option(name)} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.truncation_psi is not None and not (math.isfinite(self.truncation_psi) and self.truncation_psi >= 0):
            raise ConfigError(f"--truncation must be a number >= 0, got {self.truncation_psi}")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise ConfigError(f"--min-confidence must be in [0, 1], got {self.min_confidence}")
        if self.max_entropy is not None and not (math.isfinite(self.max_entropy) and self.max_entropy >= 0):
            raise ConfigError(f"--max-entropy must be a number >= 0, got {self.max_entropy}")

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_images / self.shard_size)

    def shard_seeds(self, index: int) -> range:
        start = index * self.shard_size
        return range(self.seed + start, self.seed + min(start + self.shard_size, self.num_images))

    def chunks(self, index: int) -> Iterator[range]:
        """Forward batches of a shard, aligned at the shard's first seed (so a shard's rows never depend
        on which other shards a worker happens to generate)."""
        seeds = self.shard_seeds(index)
        for i in range(0, len(seeds), self.batch_size):
            yield seeds[i:i + self.batch_size]

    def keep(self, confidence: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        keep = torch.ones_like(confidence, dtype=torch.bool)
        if self.min_confidence is not None:
            keep &= confidence >= self.min_confidence
        if self.max_entropy is not None:
            keep &= entropy <= self.max_entropy
        return keep

    def resolved(self, truncation_psi: float) -> "GenerationSpec":
        return dataclasses.replace(self, truncation_psi=float(truncation_psi))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_workers(concurrency: int | None, cpus_per_actor: float) -> None:
    """The actor pool's options, checked before anything starts: Ray would turn a pool of 0 actors into 1
    without a word, and an actor of 0 CPUs is not a worker."""
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
    if not (math.isfinite(cpus_per_actor) and cpus_per_actor > 0):
        raise ConfigError(f"--cpus-per-actor must be > 0, got {cpus_per_actor}")


@dataclass(frozen=True)
class AnnotatorInfo:
    """Who labels: a run checkpoint and its generator, identified by content (sha256), not by path.
    Cheap to build (no networks) and picklable, so a Ray driver describes and its actors load."""

    path: str
    sha256: str
    step: int
    config: dict[str, Any]  # the annotator run's config
    class_names: tuple[str, ...]
    generator_spec: str  # as the run's config names it (``embedded:faces`` or a path)
    generator_path: str
    generator_sha256: str
    resolution: int
    truncation_psi: float
    true_masks: bool  # embedded world at psi = 1: every image has an exact mask

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def record(self) -> dict[str, Any]:
        return {"annotator": {"path": self.path, "sha256": self.sha256, "step": self.step, "config": self.config},
                "generator": {"spec": self.generator_spec, "path": self.generator_path,
                              "sha256": self.generator_sha256, "resolution": self.resolution}}


def identity(info: AnnotatorInfo, spec: GenerationSpec) -> dict[str, Any]:
    """Everything that determines the rows. A directory only ever holds rows of one identity."""
    return {"format": DATASET_FORMAT, "lagm_ray.version": __version__, "annotator_sha256": info.sha256,
            "generator_sha256": info.generator_sha256, "class_names": list(info.class_names),
            **spec.resolved(info.truncation_psi).to_dict()}


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Where two identities differ, for the error that refuses to mix them."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys) or "no difference"
