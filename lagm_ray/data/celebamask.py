"""CelebAMask-HQ in its release layout, merged to LAGM's 8 face classes and split as in Table A.1.

Layout (the official download, unchanged)::

    ROOT/CelebA-HQ-img/{i}.jpg                                   i = 0 .. 29999, 1024x1024
    ROOT/CelebAMask-HQ-mask-anno/{i // 2000}/{i:05d}_{part}.png  512x512 binary, one per present part

Split (Table A.1 numbers images from 1; the files, and the reference code's celeba_split/*.txt,
count from 0, so file index = Table A.1 number - 1):

    unlabelled  1 .. 28,000      -> files     0 .. 27999  (the GAN's training set)
    train       28,001 .. 29,500 -> files 28000 .. 29499  (N labels = the first N)
    validation  27,501 .. 28,000 -> files 27500 .. 27999  (inside the unlabelled range, as in the paper)
    test        29,501 .. 30,000 -> files 29500 .. 29999

Masks: the 18 part masks are painted into one 19-class map in the release's part order (PARTS,
the order of CelebAMask-HQ's g_mask.py and of the reference code), so where parts overlap the
later part wins: hair covers skin and ears, hat covers hair, eyeglasses cover the nose (and that
nose then becomes skin). The 19 classes are then merged to 8 by Table A.1 (MERGE). Masks are 512 px
for 1024 px images; both are resized to the requested size (images by area, masks nearest).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .datasets import LabelledSplits, resize_labels
from .files import DataReport, image_tensor, read_image, read_label_png, require_root

CLASS_NAMES = ["background", "ear", "eye", "eyebrow", "skin", "hair", "mouth", "nose"]

# The release's part files, in painting order (later overwrites earlier); class 0 is background.
PARTS = ["skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
         "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]

# Table A.1 (left): 8-class name of each 19-class part. Eyeglasses stay skin ("skin = rest");
# hat, earring (ear_r), necklace (neck_l), neck and cloth are background.
MERGE = {
    "skin": "skin", "nose": "nose", "eye_g": "skin", "l_eye": "eye", "r_eye": "eye",
    "l_brow": "eyebrow", "r_brow": "eyebrow", "l_ear": "ear", "r_ear": "ear",
    "mouth": "mouth", "u_lip": "mouth", "l_lip": "mouth", "hair": "hair",
    "hat": "background", "ear_r": "background", "neck_l": "background", "neck": "background", "cloth": "background",
}
# 19-class value -> 8-class value (index 0 is the implicit background).
MERGE_LUT = np.array([0] + [CLASS_NAMES.index(MERGE[p]) for p in PARTS], dtype=np.uint8)

NUM_IMAGES = 30_000
SPLITS = {  # file indices (0-based): first index and size of each range
    "unlabelled": (0, 28_000),
    "train": (28_000, 1_500),
    "val": (27_500, 500),
    "test": (29_500, 500),
}
IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MASK_SCALE = 2  # release masks are half the image size (512 for 1024); equal sizes are accepted too


def split_ids(split: str, n: int | None = None) -> list[int]:
    """File indices of the first ``n`` images of a split (all of it when ``n`` is None)."""
    start, size = SPLITS[split]
    if n is not None and n > size:
        raise ConfigError(f"CelebAMask-HQ's {split} split holds {size} images, {n} requested")
    return list(range(start, start + (size if n is None else n)))


def image_path(root: str | Path, i: int) -> Path:
    return Path(root) / IMAGE_DIR / f"{i}.jpg"


def mask_path(root: str | Path, i: int, part: str) -> Path:
    return Path(root) / MASK_DIR / str(i // 2000) / f"{i:05d}_{part}.png"


def _binary(mask: np.ndarray, path: Path) -> np.ndarray:
    """A part mask as bool; it must hold only 0/255 or only 0/1."""
    values = set(np.unique(mask).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        raise DataError(f"{path}: part mask has value(s) {sorted(values - {0, 1, 255}) or sorted(values)}; "
                        f"expected a binary mask (0/255 or 0/1)")
    return mask > 0


def inspect_sample(root: str | Path, i: int) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Image ``i`` and its merged 8-class label map (at mask resolution), plus every problem found
    (one line each, starting with the file). The arrays are None when a problem prevents them."""
    problems: list[str] = []
    image = None
    try:
        image = read_image(image_path(root, i))
    except DataError as e:
        problems.append(str(e))

    label19: np.ndarray | None = None
    first: Path | None = None  # the first mask read: the others must have its size
    any_file = False
    for value, part in enumerate(PARTS, start=1):
        path = mask_path(root, i, part)
        if not path.is_file():
            continue  # a part absent from the face has no file
        any_file = True
        try:
            m = _binary(read_label_png(path), path)
        except DataError as e:
            problems.append(str(e))
            continue
        if label19 is None:
            label19, first = np.zeros(m.shape, np.uint8), path
        elif m.shape != label19.shape:
            problems.append(f"{path}: mask is {m.shape[1]}x{m.shape[0]} but {first.name} of the same image is "
                            f"{label19.shape[1]}x{label19.shape[0]}")
            continue
        label19[m] = value
    if label19 is None:
        if not any_file:  # every face has skin at least: the annotation folder is missing or misplaced
            problems.append(f"{mask_path(root, i, 'skin')}: no part mask file for image {i} "
                            f"(looked for {mask_path(root, i, '*')})")
        return image, None, problems

    if image is not None:
        h, w = image.shape[:2]
        mh, mw = label19.shape
        if (mh * MASK_SCALE, mw * MASK_SCALE) != (h, w) and (mh, mw) != (h, w):
            problems.append(f"{first}: mask is {mw}x{mh} but its image {image_path(root, i)} is {w}x{h}; "
                            f"CelebAMask-HQ masks are half the image size (or the same size)")
    return image, MERGE_LUT[label19], problems


def read_sample(root: str | Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, 8-class uint8 label map at mask resolution); DataError naming the file."""
    image, mask, problems = inspect_sample(root, i)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) with image {i})" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    return image, mask


def _in_threads(fn, ids: list[int]) -> list:
    """``fn`` over ``ids`` in order, in threads (PIL releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(fn, ids))


def _load_labelled(root: Path, ids: list[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, S, S] in [-1, 1] and labels [N, S, S]; image and mask sizes differ in the
    release, so each is resized on its own."""
    if not ids:
        return torch.zeros(0, 3, size, size), torch.zeros(0, size, size, dtype=torch.long)

    def one(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = read_sample(root, i)
        return image_tensor(image, size), resize_labels(torch.from_numpy(mask).long()[None], size)

    pairs = _in_threads(one, ids)
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def _root(data: DataConfig) -> Path:
    root = Path(data.root or "")
    if not data.root or not root.is_dir():
        raise ConfigError(f"data.root: CelebAMask-HQ root {data.root!r} is not a directory "
                          f"(it should hold {IMAGE_DIR}/ and {MASK_DIR}/)")
    return root


def load_splits(data: DataConfig, size: int) -> LabelledSplits:
    """The first ``data.num_labelled`` training images, first ``num_val`` / ``num_test`` of their ranges."""
    root = _root(data)
    try:
        ids = {"train": split_ids("train", data.num_labelled), "val": split_ids("val", data.num_val),
               "test": split_ids("test", data.num_test)}
    except ConfigError as e:
        raise ConfigError(f"data.num_labelled/num_val/num_test: {e}") from None
    tr, va, te = (_load_labelled(root, ids[s], size) for s in ("train", "val", "test"))
    return LabelledSplits(list(CLASS_NAMES), *tr, *va, *te)


def load_unlabelled(data: DataConfig, size: int, n: int) -> torch.Tensor:
    """The first ``n`` unlabelled images (files 0 .. n-1), [n, 3, S, S] in [-1, 1]."""
    root = _root(data)
    try:
        ids = split_ids("unlabelled", n)
    except ConfigError as e:
        raise ConfigError(f"unlabelled images: {e}") from None
    if not ids:
        return torch.zeros(0, 3, size, size)
    return torch.cat(_in_threads(lambda i: image_tensor(read_image(image_path(root, i)), size), ids))


def check(root: str | Path, limit: int | None = None, num_samples: int = 8) -> DataReport:
    """Every image and mask of the labelled ranges (train, val, test; the first ``limit`` of each).
    The unlabelled images are not read: only baselines use them, and their loader names a bad file."""
    root = require_root("celebamask_hq", root, (IMAGE_DIR, MASK_DIR))
    report = DataReport("celebamask_hq", str(root), list(CLASS_NAMES), class_pixels=[0] * len(CLASS_NAMES))
    missing = [root / d for d in (IMAGE_DIR, MASK_DIR) if not (root / d).is_dir()]
    if missing:  # every image (or every mask) would be a problem of its own: one line for the folder
        report.problems.extend(f"{d}: folder not found (part of the release layout)" for d in missing)
        return report
    ids = [i for split in ("train", "val", "test")
           for i in split_ids(split, None if limit is None else min(limit, SPLITS[split][1]))]
    for k in range(0, len(ids), 32):  # in chunks: each result holds a full-size image until counted
        for image, mask, problems in _in_threads(lambda i: inspect_sample(root, i), ids[k:k + 32]):
            report.num_checked += 1
            report.problems.extend(problems)
            if mask is None:
                continue
            counts = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
            report.class_pixels = [a + int(b) for a, b in zip(report.class_pixels, counts)]
            if image is not None and not problems and len(report.samples) < num_samples:
                report.samples.append((_picture_image(image, mask.shape), mask))
    return report


def _picture_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The image at its mask's size (area), uint8, for the check picture."""
    x = image_tensor(image, shape[0])[0].permute(1, 2, 0)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
