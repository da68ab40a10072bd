"""DatasetGAN's Car-20, Cat-16 and Face-34 in their released layout, with their cross-validation protocol.

Layout (the ``annotation`` folder of DatasetGAN's data release; ``root`` may also be its parent)::

    root/training_data/{car,cat,face}_processed/image_{i}.jpg + image_mask{i}.npy   annotated GAN images
    root/testing_data/{car_20,cat_16,face_34}_class/<images> + <masks>.npy          real test images

Training pairs are read by index as DatasetGAN's ``train_interpreter.py`` does (``image_%d.jpg``,
``image_mask%0d.npy``, i = 0..); the release holds 16 cars, 30 cats, 16 faces (LAGM Section 4.1), and
``data.num_labelled`` takes the first N. As both DatasetGAN and LAGM do, a label covering fewer than
30 pixels of a training mask is an annotation artefact and becomes background. The test folder is read
as DatasetGAN's ``test_deeplab_cross_validation.py`` reads it: every image file and every ``.npy`` file,
each list sorted by path and paired by position (the masks of a 3-D array are its first channel).
Image and mask are resized separately (as both codes do), so only their aspect ratios must agree.

Protocol (DatasetGAN Section 5 "we split testing images into five folds. We set each fold as validation
and choose checkpoints accordingly. We report mean IOU and standard deviation"; LAGM Section 4.1 follows
it for Table 1 and reruns the same ``cross_validate`` in its ``test_seg.py``): with n test images and
K = 5 folds, fold f is images ``[f*(n//K), (f+1)*(n//K))`` in sorted order and is the validation set;
every other image (including the n mod K left over) is the test set. The checkpoint with the best
validation mIoU is scored on the test set; mIoU is over all classes including background, and a class
absent from both prediction and truth counts as IoU 0 (their ``I / (U + 1e-8)``; ``eval.absent_class=zero``).
The reported number is the mean and population standard deviation (``np.std``) of the K test mIoUs.
Here ``data.cv_fold`` picks the fold and ``data.cv_folds`` K, so a sweep over ``cv_fold = 0..K-1``
followed by :func:`aggregate_folds` gives Table 1's "mean ± std".

Class names are DatasetGAN's ``utils/data_util.py`` lists (``face_class``, spelling kept, and
``car_20_class``). Neither DatasetGAN nor LAGM names the 16 cat classes (LAGM uses '00'..'15'); they are
``background`` and ``part_01``..``part_15`` here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .datasets import LabelledSplits
from .files import DataReport, check_labels, check_pairs, read_image, to_tensors

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_LABEL_PIXELS = 30  # DatasetGAN: "clean up artifacts in the annotation, must do"

CAR20_CLASSES = ["background", "back_bumper", "bumper", "car_body", "car_lights", "door", "fender", "grilles",
                 "handles", "hoods", "licensePlate", "mirror", "roof", "running_boards", "tailLight", "tire",
                 "trunk_lids", "wheelhub", "window", "windshield"]
FACE34_CLASSES = ["background", "head", "head***cheek", "head***chin", "head***ear", "head***ear***helix",
                  "head***ear***lobule", "head***eye***botton lid", "head***eye***eyelashes", "head***eye***iris",
                  "head***eye***pupil", "head***eye***sclera", "head***eye***tear duct", "head***eye***top lid",
                  "head***eyebrow", "head***forehead", "head***frown", "head***hair", "head***hair***sideburns",
                  "head***jaw", "head***moustache", "head***mouth***inferior lip", "head***mouth***oral comisure",
                  "head***mouth***superior lip", "head***mouth***teeth", "head***neck", "head***nose",
                  "head***nose***ala of nose", "head***nose***bridge", "head***nose***nose tip",
                  "head***nose***nostril", "head***philtrum", "head***temple", "head***wrinkles"]
CAT16_CLASSES = ["background"] + [f"part_{i:02d}" for i in range(1, 16)]


# ---------------------------------------------------------------------------------------------
# Cross-validation (pure functions)


def cv_split(n: int, folds: int, fold: int) -> tuple[list[int], list[int]]:
    """(validation indices, test indices) of fold ``fold`` of ``n`` sorted test items, DatasetGAN's way."""
    if folds < 2:
        raise ConfigError(f"data.cv_folds: must be >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise ConfigError(f"data.cv_fold: must be in 0..{folds - 1} (data.cv_folds={folds}), got {fold}")
    size = n // folds
    if size < 1:
        raise ConfigError(f"data.cv_folds: {folds} folds of {n} test images leave a fold empty")
    val = list(range(size * fold, size * (fold + 1)))
    return val, [i for i in range(n) if i not in set(val)]


def aggregate_folds(per_fold: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-fold test metrics -> ``{name}_mean`` and ``{name}_std`` (population std, as ``np.std``) for
    every metric every fold reports. Feed it the K runs of a ``data.cv_fold`` sweep."""
    if not per_fold:
        raise ValueError("no folds to aggregate")
    names = [k for k in per_fold[0] if all(k in m for m in per_fold)]
    out: dict[str, float] = {}
    for k in names:
        values = np.asarray([float(m[k]) for m in per_fold], dtype=np.float64)
        out[f"{k}_mean"] = float(values.mean())
        out[f"{k}_std"] = float(values.std())
    return out


# ---------------------------------------------------------------------------------------------
# Reading


def clean_small_labels(mask: np.ndarray) -> np.ndarray:
    """Labels 1..49 covering fewer than 30 pixels become background (DatasetGAN / LAGM, training masks)."""
    mask = mask.copy()
    values, counts = np.unique(mask, return_counts=True)
    for v, c in zip(values, counts):
        if 1 <= v < 50 and c < MIN_LABEL_PIXELS:
            mask[mask == v] = 0
    return mask


def read_npy_mask(path: Path, num_classes: int) -> np.ndarray:
    """A label map saved with np.save -> [H, W] uint8; values outside 0..num_classes-1 raise."""
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: corrupt or unreadable .npy mask ({type(e).__name__}: {e})") from e
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3:
        a = a[:, :, 0]  # DatasetGAN's test loader: first channel
    if a.ndim != 2 or a.size == 0:
        raise DataError(f"{path}: mask has shape {a.shape}; expected a 2-D label map")
    if not np.issubdtype(a.dtype, np.number) or (np.issubdtype(a.dtype, np.floating) and not np.all(a == np.round(a))):
        raise DataError(f"{path}: mask of dtype {a.dtype} is not integer labels")
    check_labels(a.astype(np.int64), range(num_classes), path)
    return a.astype(np.uint8)


def check_aspect(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    (ih, iw), (mh, mw) = image.shape[:2], mask.shape
    if abs(iw / ih - mw / mh) > 0.01 * (iw / ih):
        raise DataError(f"{mask_path}: mask is {mw}x{mh} but its image {image_path} is {iw}x{ih} "
                        "(aspect ratios differ)")


@dataclass(frozen=True)
class DatasetGANSet:
    """One of DatasetGAN's annotated categories; provides the real-dataset interface."""

    name: str
    train_folder: str
    test_folder: str
    CLASS_NAMES: list[str]

    def annotation_root(self, root: str | Path) -> Path:
        root = Path(root)
        return root / "annotation" if (root / "annotation" / "training_data").is_dir() else root

    def train_pairs(self, root: str | Path) -> list[tuple[Path, Path]]:
        """(image_{i}.jpg, image_mask{i}.npy) for i = 0, 1, ... while the image exists."""
        folder = self.annotation_root(root) / "training_data" / self.train_folder
        if not folder.is_dir():
            raise DataError(f"{folder}: training folder not found")
        pairs, i = [], 0
        while (folder / f"image_{i}.jpg").is_file():
            pairs.append((folder / f"image_{i}.jpg", folder / f"image_mask{i}.npy"))
            i += 1
        if not pairs:
            raise DataError(f"{folder}: no image_0.jpg (training images are image_<i>.jpg + image_mask<i>.npy)")
        return pairs

    def test_pairs(self, root: str | Path) -> list[tuple[Path, Path]]:
        folder = self.annotation_root(root) / "testing_data" / self.test_folder
        if not folder.is_dir():
            raise DataError(f"{folder}: test folder not found")
        files = sorted(str(p) for p in folder.iterdir() if p.is_file())
        images = [Path(p) for p in files if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        masks = [Path(p) for p in files if p.endswith(".npy")]
        if len(images) != len(masks) or not images:
            raise DataError(f"{folder}: {len(images)} images and {len(masks)} .npy masks; pairs are matched by "
                            "sorted position, so the counts must agree and be non-zero")
        return list(zip(images, masks))

    def read_pair(self, image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(image_path)
        mask = read_npy_mask(mask_path, len(self.CLASS_NAMES))
        check_aspect(image, mask, image_path, mask_path)
        return image, mask

    def load_pairs(self, pairs: Sequence[tuple[Path, Path]], size: int,
                   clean: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = [], []
        for ip, mp in pairs:
            image, mask = self.read_pair(ip, mp)
            if clean:
                mask = clean_small_labels(mask)
            x, y = to_tensors([image], [mask], size)
            images.append(x)
            masks.append(y)
        return torch.cat(images), torch.cat(masks)

    # -- interface -------------------------------------------------------------------------------

    def load_splits(self, data: DataConfig, size: int) -> LabelledSplits:
        root = Path(data.root or "")
        train = self.train_pairs(root)
        if data.num_labelled > len(train):
            raise ConfigError(f"data.num_labelled: {data.num_labelled} labelled images requested, but {self.name} "
                              f"under {root} holds {len(train)}")
        test = self.test_pairs(root)
        val_idx, test_idx = cv_split(len(test), data.cv_folds, data.cv_fold)
        tr = self.load_pairs(train[: data.num_labelled], size, clean=True)
        # Test masks are scored as released: DatasetGAN's and LAGM's cross-validation do not clean them.
        va = self.load_pairs([test[i] for i in val_idx], size, clean=False)
        te = self.load_pairs([test[i] for i in test_idx], size, clean=False)
        return LabelledSplits(list(self.CLASS_NAMES), *tr, *va, *te)

    def check(self, root: str | Path, limit: int | None = None) -> DataReport:
        return check_pairs(self.name, root, self.CLASS_NAMES, (self.train_pairs, self.test_pairs), self.read_pair,
                           limit, layout=("annotation", "training_data", "testing_data"))


CAR20 = DatasetGANSet("datasetgan_car20", "car_processed", "car_20_class", CAR20_CLASSES)
CAT16 = DatasetGANSet("datasetgan_cat16", "cat_processed", "cat_16_class", CAT16_CLASSES)
FACE34 = DatasetGANSet("datasetgan_face34", "face_processed", "face_34_class", FACE34_CLASSES)
