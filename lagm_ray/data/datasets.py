"""Labelled splits (the few real labelled images, validation, test) for any dataset name.

The trainer only sees :class:`LabelledSplits`; each dataset name maps to one loader here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import ConfigError
from .toyworld import SPLIT_SIZES, get_category, real_split


@dataclass
class LabelledSplits:
    class_names: list[str]
    train_images: torch.Tensor  # [N, 3, R, R] in [-1, 1]
    train_masks: torch.Tensor  # [N, R, R] int64; 255 = ignore
    val_images: torch.Tensor
    val_masks: torch.Tensor
    test_images: torch.Tensor
    test_masks: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def resize_labels(labels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Label maps [B, H, W] to ``size`` by nearest neighbour (labels must stay labels)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(labels.shape[-2:]) == size:
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def load_labelled_splits(data: DataConfig) -> LabelledSplits:
    """Load at the segmentor's input resolution (``seg_resolution`` or ``resolution``)."""
    size = data.seg_resolution or data.resolution
    if data.dataset == "embedded":
        try:
            category = get_category(data.category)
        except ValueError as e:
            raise ConfigError(f"data.category: {e}") from e
        if data.num_labelled > SPLIT_SIZES["train"]:
            raise ConfigError(f"data.num_labelled: {data.num_labelled} labelled images requested, but the embedded "
                              f"'{data.category}' train split holds {SPLIT_SIZES['train']}")
        for key, split in (("num_val", "val"), ("num_test", "test")):
            if getattr(data, key) > SPLIT_SIZES[split]:
                raise ConfigError(f"data.{key}: {getattr(data, key)} requested, but the embedded {split} split "
                                  f"holds {SPLIT_SIZES[split]}")
        tr = real_split(data.category, "train", size, data.num_labelled)
        va = real_split(data.category, "val", size, data.num_val)
        te = real_split(data.category, "test", size, data.num_test)
        return LabelledSplits(list(category.class_names), *tr, *va, *te)
    module = real_dataset_module(data.dataset)
    if not data.root:
        raise ConfigError(f"data.root: dataset {data.dataset!r} needs its root folder (data.root=/path/to/it)")
    return module.load_splits(data, size)


def dataset_class_names(data: DataConfig) -> list[str]:
    """The part classes a config's dataset labels, background first, without loading any image."""
    if data.dataset == "embedded":
        try:
            return list(get_category(data.category).class_names)
        except ValueError as e:
            raise ConfigError(f"data.category: {e}") from e
    return list(real_dataset_module(data.dataset).CLASS_NAMES)


# Real datasets, one module each, imported only when named. A module provides
#   CLASS_NAMES: list[str]
#   load_splits(data: DataConfig, size: int) -> LabelledSplits     (labelled train / val / test)
#   check(root, limit: int | None = None) -> files.DataReport        (for `lagm data check`)
# and, where the dataset has them, load_unlabelled(data: DataConfig, size: int, n: int) -> Tensor.
# "module:attr" names an object with that interface inside a module that serves several datasets.
REAL_DATASETS = {
    "celebamask_hq": "lagm_ray.data.celebamask",
    "pascal_horse": "lagm_ray.data.pascal_part:HORSE",
    "pascal_aeroplane": "lagm_ray.data.pascal_part:AEROPLANE",
    "datasetgan_car20": "lagm_ray.data.datasetgan_sets:CAR20",
    "datasetgan_cat16": "lagm_ray.data.datasetgan_sets:CAT16",
    "datasetgan_face34": "lagm_ray.data.datasetgan_sets:FACE34",
    "cgpart_car": "lagm_ray.data.cgpart",
}


def canonical_dataset_name(name: str) -> str:
    """``celebamask-hq`` and ``CelebAMask_HQ`` both name ``celebamask_hq``."""
    return name.strip().lower().replace("-", "_")


def real_dataset_module(name: str):
    key = canonical_dataset_name(name)
    if key not in REAL_DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset {name!r}; available: embedded, {', '.join(REAL_DATASETS)}")
    module_name, _, attr = REAL_DATASETS[key].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module
