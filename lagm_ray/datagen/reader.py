"""Reading a dataset back: its directory verified against the manifest, its rows as tensors, a picture of a few."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from ..data.datasets import resize_labels
from ..storage import sha256_file
from ..synthetic import to_size
from ..viz import colorize, labelled_grid, to_uint8_image
from .label import Samples
from .manifest import check_counts, manifest_path, read_manifest
from .shards import (
    decode_images,
    decode_masks,
    decode_png,
    footer_mismatch,
    read_shard,
    shard_metadata,
    uint8_to_images,
)
from .spec import DatasetError, identity_diff


@dataclass
class ShardDataset:
    """A verified dataset directory: its manifest and shard files, in seed order."""

    directory: Path
    manifest: dict[str, Any]
    files: list[Path]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.directory)

    @property
    def has_true_masks(self) -> bool:
        return any(f["name"] == "true_mask" for f in self.manifest["schema"])


def check_classes(manifest_path: Path, class_names: Sequence[str], expected: Sequence[str] | int | None,
                  what: str = "the segmentor") -> None:
    if expected is None:
        return
    n = expected if isinstance(expected, int) else len(expected)
    if n != len(class_names) or (not isinstance(expected, int) and list(expected) != list(class_names)):
        shown = f"{n} classes" if isinstance(expected, int) else f"{n} classes {list(expected)}"
        raise DatasetError(f"{manifest_path}: the dataset has {len(class_names)} classes {list(class_names)}, "
                           f"but {what} expects {shown}")


def open_dataset(directory: str | os.PathLike, class_names: Sequence[str] | int | None = None,
                 checksums: bool = True) -> ShardDataset:
    """Check a dataset directory against its manifest before anything trains on it: complete, its counts
    consistent (one entry per shard of its identity, totals the entries' sums), every shard present with its
    recorded size and sha256 (``checksums``), each entry's rows, seeds and filtered count and the identity
    in its shard's footer, and, when given, the class names (or count) a segmentor expects. Errors name the
    offending file."""
    directory = Path(directory)
    mpath = manifest_path(directory)
    if not mpath.is_file():
        raise DatasetError(f"{mpath}: no dataset manifest (is {directory} a `lagm generate` output directory?)")
    manifest = read_manifest(mpath)
    if manifest.get("status") != "complete":
        raise DatasetError(f"{mpath}: generation did not finish; run the same `lagm generate` command again to "
                           "complete it")
    check_counts(mpath, manifest)
    check_classes(mpath, manifest["class_names"], class_names)
    files = []
    for s in manifest["shards"]:
        path = directory / s["file"]
        if not path.is_file():
            raise DatasetError(f"{path}: shard listed in {mpath} is missing")
        size = path.stat().st_size
        if size != s["bytes"]:
            raise DatasetError(f"{path}: {size} bytes, but {mpath} records {s['bytes']} (truncated or replaced?)")
        if checksums and sha256_file(path) != s["sha256"]:
            raise DatasetError(f"{path}: sha256 differs from {mpath}: the shard is corrupt (delete it and re-run "
                               "the same `lagm generate` command to regenerate it)")
        mismatch = footer_mismatch(path, s, mpath)
        if mismatch:
            raise DatasetError(f"{path}: {mismatch}")
        smeta = shard_metadata(pq.read_schema(path), path)
        if smeta.get("identity") != manifest["identity"]:
            raise DatasetError(f"{path}: generated with different settings than {mpath} records "
                               f"({identity_diff(smeta.get('identity') or {}, manifest['identity'])})")
        files.append(path)
    return ShardDataset(directory, manifest, files)


def check_labels(labels: torch.Tensor, num_classes: int, where: Any) -> None:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DatasetError(f"{where}: label value {int(labels.max())} is not a class id of the dataset's "
                           f"{num_classes} classes")


def load_tensors(dataset: ShardDataset | str | os.PathLike, size: int | None = None,
                 class_names: Sequence[str] | int | None = None, mask: str = "label"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ([N, 3, size, size] in [-1, 1]) and masks ([N, size, size] int64; ``mask`` = "label" for
    the annotator's, "true_mask" for the embedded world's truth) in seed order, shard by shard."""
    ds = dataset if isinstance(dataset, ShardDataset) else open_dataset(dataset, class_names)
    images, masks = [], []
    for path in ds.files:
        t = read_shard(path, ["image", mask])
        if t.num_rows == 0:
            continue
        images.append(decode_images(t.column("image").to_pylist(), size))
        m = decode_masks(t.column(mask).to_pylist(), size)
        check_labels(m, ds.num_classes, path)
        masks.append(m)
    if not images:
        raise DatasetError(f"{ds.manifest_path}: the dataset holds no rows (all filtered?)")
    return torch.cat(images), torch.cat(masks)


def training_pair(samples: Samples, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """In-memory samples as a segmentor sees them once stored: 8-bit images (as PNG keeps them) at ``size``,
    labels at ``size``. Equal, bit for bit, to :func:`load_tensors` on the shards of the same seeds."""
    images = uint8_to_images(np.stack([to_uint8_image(im) for im in samples.images]))
    if size is not None:
        return to_size(images, size), resize_labels(samples.labels, size)
    return images, samples.labels


def sample_grid(dataset: ShardDataset | str | os.PathLike, n: int = 8):
    """Picture of the first ``n`` rows: image, annotator label, true mask (embedded world), for MLflow."""
    ds = dataset if isinstance(dataset, ShardDataset) else open_dataset(dataset, checksums=False)
    C = ds.num_classes
    cols: dict[str, list] = {"image": [], "annotator label": []}
    if ds.has_true_masks:
        cols["true mask"] = []
    for path in ds.files:
        t = read_shard(path, ["image", "label"] + (["true_mask"] if ds.has_true_masks else []))
        for row in t.slice(0, n - len(cols["image"])).to_pylist():
            cols["image"].append(decode_png(row["image"]))
            cols["annotator label"].append(colorize(decode_png(row["label"]), C))
            if ds.has_true_masks:
                cols["true mask"].append(colorize(decode_png(row["true_mask"]), C))
        if len(cols["image"]) >= n:
            break
    res = cols["image"][0].shape[0] if cols["image"] else 64
    return labelled_grid(cols, ds.class_names, scale=max(1, 128 // res))
