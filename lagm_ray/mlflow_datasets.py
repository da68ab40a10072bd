"""The data a run used, as MLflow datasets (the run page's "Datasets"): the labelled set of a training
(train, val and test splits, each with its digest) and the generated shards of `lagm generate`."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd

SHARD_COLUMNS = ("file", "index", "rows", "filtered", "bytes", "sha256")
MANIFEST_SHA_TAG = "lagm.manifest_sha256"  # the manifest file's sha256 (it also records the run's timings)


def labelled_set_name(cfg: Any) -> str:
    d = cfg.data
    return f"{d.dataset}-{d.category}-{d.num_labelled}labels-{d.resolution}px"


def log_labelled_set(cfg: Any, splits: Any) -> None:
    """The labelled images and masks of each split, one MLflow dataset each (context train, validation,
    test), digests computed by MLflow from the arrays: two runs on the same labels show the same digest."""
    name = labelled_set_name(cfg)
    for context, images, masks in (("train", splits.train_images, splits.train_masks),
                                   ("validation", splits.val_images, splits.val_masks),
                                   ("test", splits.test_images, splits.test_masks)):
        dataset = mlflow.data.from_numpy(images.cpu().numpy(), targets=masks.cpu().numpy(), name=f"{name}-{context}")
        mlflow.log_input(dataset, context=context)


def shards_digest(manifest: dict[str, Any]) -> str:
    """The generated data's identity: sha256 over every shard's file name and sha256, as MLflow's
    digest (32 hex characters; MLflow keeps at most 36). The same shards give the same digest whatever
    run wrote them; the manifest file's own sha256, which changes with each run's timings, is the
    run's tag lagm.manifest_sha256."""
    h = hashlib.sha256()
    for s in manifest["shards"]:
        h.update(f"{s['file']}\0{s['sha256']}\n".encode())
    return h.hexdigest()[:32]


def log_shards(manifest: dict[str, Any], out: Path, manifest_file: Path) -> None:
    """The shard directory as an MLflow dataset (its shard table, source the directory) in the active run,
    context "generated"."""
    df = pd.DataFrame([{k: s.get(k) for k in SHARD_COLUMNS} for s in manifest["shards"]])
    with warnings.catch_warnings():  # MLflow's hint that integer columns cannot hold missing values: none here
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=str(out.resolve()), name=out.name, digest=shards_digest(manifest))
    mlflow.log_input(dataset, context="generated")
    mlflow.set_tag(MANIFEST_SHA_TAG, hashlib.sha256(manifest_file.read_bytes()).hexdigest())
