"""Reading real dataset files with errors that name the file, and the report `lagm data check` prints.

Every real-format loader (CelebAMask-HQ, PASCAL-Part, DatasetGAN's sets, CGPart) reads through
these helpers, so a corrupt image, a mask with a value outside the label set, or an image/mask size
mismatch fails the same way everywhere: a :class:`DataError` whose message starts with the path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError
from .datasets import resize_labels


def require_root(dataset: str, root: str | Path, layout: Sequence[str]) -> Path:
    """``root`` as a Path, if it is a folder holding at least one of the release's top-level entries
    ``layout``; else one ConfigError naming the folder and what it should hold. An empty, mistyped or
    other dataset's folder would otherwise fail file by file (CelebAMask-HQ: 30,000 lines)."""
    root = Path(root)
    entries = ", ".join(f"{entry}/" for entry in layout)
    holds = f"a {dataset} folder holds {entries}"
    if not root.exists():
        raise ConfigError(f"{root}: no such folder ({holds})")
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder ({holds})")
    if not any(root.iterdir()):
        raise ConfigError(f"{root}: the folder is empty ({holds})")
    if not any((root / entry).exists() for entry in layout):
        raise ConfigError(f"{root}: holds none of {entries}, so it is not a {dataset} folder")
    return root


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]. Grey and RGBA inputs are converted; a truncated or corrupt file raises."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated JPEG only fails on load
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({type(e).__name__}: {e})") from e


def read_label_png(path: str | Path) -> np.ndarray:
    """A label map stored as an image: [H, W] uint8. Palette ('P') PNGs give their indices, grey gives
    its values, RGB masks whose three channels agree give one of them (CelebAMask-HQ's part masks)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode == "I;16" or im.mode == "I":
                a = np.asarray(im)
                if a.max(initial=0) > 255:
                    raise DataError(f"{path}: mask values up to {int(a.max())} do not fit a label map")
                return a.astype(np.uint8)
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable mask ({type(e).__name__}: {e})") from e
    if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
        raise DataError(f"{path}: colour mask (channels differ); expected a label map (grey or palette PNG)")
    return a[..., 0].copy()


def check_labels(mask: np.ndarray, valid: Iterable[int], path: str | Path) -> None:
    """Raise naming ``path`` and the offending values if ``mask`` holds a value outside ``valid``."""
    valid_arr = np.asarray(sorted(set(int(v) for v in valid)))
    values = np.unique(mask)
    bad = values[~np.isin(values, valid_arr)]
    if bad.size:
        raise DataError(f"{path}: mask has unknown label value(s) {bad.tolist()}; valid: {valid_arr.tolist()}")


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: str | Path, mask_path: str | Path) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]}")


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """A uint8 HWC image -> [1, 3, S, S] in [-1, 1], by area averaging (as is when already S x S)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    return x if x.shape[-2:] == (size, size) else F.interpolate(x, size=(size, size), mode="area")


def to_tensors(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HWC images and their label maps -> ([N,3,S,S] in [-1,1], [N,S,S] int64): each image by area
    averaging and each mask by nearest neighbour, on its own, since an image and its mask may differ in
    size (CelebAMask-HQ, DatasetGAN's sets) and so may the pairs."""
    if not images:
        return torch.zeros(0, 3, size, size), torch.zeros(0, size, size, dtype=torch.long)
    xs = [image_tensor(im, size) for im in images]
    ys = [resize_labels(torch.from_numpy(np.ascontiguousarray(m)).long()[None], size) for m in masks]
    return torch.cat(xs), torch.cat(ys)


@dataclass
class DataReport:
    """What `lagm data check` found in a dataset folder."""

    dataset: str
    root: str
    class_names: list[str]
    num_checked: int = 0
    problems: list[str] = field(default_factory=list)  # one line each, starting with the file
    class_pixels: list[int] = field(default_factory=list)  # per class, over the checked masks
    samples: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (image, mask) for the picture

    @property
    def ok(self) -> bool:
        return not self.problems

    def class_frequencies(self) -> dict[str, float]:
        total = max(1, sum(self.class_pixels))
        return {n: c / total for n, c in zip(self.class_names, self.class_pixels)}

    def add(self, image: np.ndarray, mask: np.ndarray, max_samples: int = 8) -> None:
        """Count a checked pair's class pixels; keep the first few (same-size) pairs for the picture."""
        counts = np.bincount(mask.ravel(), minlength=len(self.class_names))[: len(self.class_names)]
        self.class_pixels = (np.asarray(self.class_pixels or [0] * len(self.class_names)) + counts).tolist()
        if len(self.samples) < max_samples and image.shape[:2] == mask.shape[:2]:
            self.samples.append((image, mask))


def check_pairs(dataset: str, root: str | Path, class_names: Sequence[str],
                listers: Sequence[Callable[[str | Path], list[tuple[Path, Path]]]],
                read_pair: Callable[[Path, Path], tuple[np.ndarray, np.ndarray]],
                limit: int | None = None, layout: Sequence[str] = ()) -> DataReport:
    """The data check of a dataset stored as (image, mask) file pairs: each lister finds the pairs of one
    split (the first ``limit`` of each are read); every failure is one problem line naming the file.
    A ``root`` that holds none of ``layout`` (the release's top-level entries) is one ConfigError."""
    if layout:
        require_root(dataset, root, layout)
    report = DataReport(dataset=dataset, root=str(root), class_names=list(class_names),
                        class_pixels=[0] * len(class_names))
    pairs: list[tuple[Path, Path]] = []
    for lister in listers:
        try:
            found = lister(root)
        except DataError as e:
            report.problems.append(str(e))
            continue
        pairs += found[:limit] if limit is not None else found
    for image_path, mask_path in pairs:
        report.num_checked += 1
        try:
            image, mask = read_pair(image_path, mask_path)
        except DataError as e:
            report.problems.append(str(e))
            continue
        report.add(image, mask)
    return report
