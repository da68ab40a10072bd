"""Ray Data around :mod:`lagm_ray.datagen`: generate a shard directory on an actor pool, read one back.

Generation is ``from_items([{"shard": i} ...]) -> map_batches(ShardWriter, batch_size=1)`` on a fixed pool
of actors. Each actor loads the generator and the annotator once, then per item generates one shard and
writes it itself (atomically, to ``out``, which must be storage every node sees: a local disk on one
machine, NFS on a cluster). Only a summary row per shard flows back, so the driver never holds images
and its memory stays flat however large the dataset; it streams those rows (``iter_batches``) to report
progress and records them for the manifest. A killed run leaves at most temp files, which the next run
removes before writing the shards still missing.

Reading is ``read_parquet`` over the manifest's (verified) shard list, PNG decoding in ``map_batches``,
and ``iter_torch_batches`` into the downstream segmentor's training.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np
import ray
import torch

from .. import datagen as dg
from .. import downstream
from ..annotator_runs import describe_annotator, load_labeller
from ..storage import code_version
from .session import start_ray


class ShardWriter:
    """A Ray Data actor: generator + annotator loaded once; each batch of shard indices -> shard files."""

    def __init__(self, info: dg.AnnotatorInfo, spec: dg.GenerationSpec, out: str, num_threads: int,
                 use_gpu: bool):
        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.labeller = load_labeller(info, device)
        self.spec, self.out = spec, out
        self.extra = {"code_version": code_version(), "device": self.labeller.device.type}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = [dg.produce_shard(self.labeller, self.spec, int(i), self.out, self.extra) for i in batch["shard"]]
        return {"entry": np.array([_encode(e) for e in entries], dtype=object)}


def _encode(entry: dict[str, Any]) -> str:
    return json.dumps(entry)  # one string column: None means (empty shard stats) survive the trip unchanged


def generate_dataset(annotator: str | os.PathLike | dg.AnnotatorInfo, out: str | os.PathLike, spec: dg.GenerationSpec, *,
                     concurrency: int | None = None, cpus_per_actor: float = 1.0, use_gpu: bool | None = None,
                     on_shard: Callable[[dg.Plan, dict[str, Any]], None] | None = None,
                     warn: Callable[[str], None] | None = None, verbose: bool = False) -> dict[str, Any]:
    """Generate ``spec`` into ``out`` on the Ray cluster (``$RAY_ADDRESS``, else a local one); returns the
    manifest. ``concurrency`` actors (default: one per GPU when ``use_gpu``, else one per ``cpus_per_actor``
    CPUs of the cluster); ``use_gpu`` None means: when the cluster has GPUs. Each actor runs torch with
    ``int(cpus_per_actor)`` threads (at least 1), which the rows' bytes depend on (docs/synthetic-datasets.md)."""
    dg.check_workers(concurrency, cpus_per_actor)  # before any file, Ray or network is touched
    info = annotator if isinstance(annotator, dg.AnnotatorInfo) else describe_annotator(annotator, spec.truncation_psi)
    with dg.plan(out, info, spec, warn=warn) as p:
        run: dict[str, Any] = {"executor": "ray"}
        if p.missing:
            start_ray(verbose)
            resources = ray.cluster_resources()
            if use_gpu is None:
                use_gpu = resources.get("GPU", 0) > 0
            if concurrency is None:
                slots = resources.get("GPU", 0) if use_gpu else resources.get("CPU", 1) // cpus_per_actor
                concurrency = int(max(1, slots))
            concurrency = max(1, min(concurrency, len(p.missing)))
            run.update({"concurrency": concurrency, "cpus_per_actor": cpus_per_actor, "use_gpu": use_gpu})
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the caller shows one progress bar for the whole run
            ds = ray.data.from_items([{"shard": i} for i in p.missing], override_num_blocks=len(p.missing))
            ds = ds.map_batches(
                ShardWriter, batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
                num_cpus=cpus_per_actor, num_gpus=1 if use_gpu else 0, batch_format="numpy",
                fn_constructor_kwargs={"info": info, "spec": p.spec, "out": str(p.out),
                                       "num_threads": int(cpus_per_actor), "use_gpu": bool(use_gpu)})
            # Rows stream in as shards finish (each a few hundred bytes). Not iter_rows(): its one-batch
            # prefetch holds every row back until the next one arrives, so progress would lag a shard.
            for batch in ds.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"):
                for text in batch["entry"]:
                    entry = json.loads(text)
                    p.record(entry)
                    if on_shard:
                        on_shard(p, entry)
        return p.finish(run)


# ------------------------------------------------------------------------------------------ reading


def _decode(batch: dict[str, np.ndarray], size: int | None, mask: str, num_classes: int) -> dict[str, np.ndarray]:
    images = dg.decode_images(list(batch["image"]), size)
    masks = dg.decode_masks(list(batch[mask]), size)
    if masks.numel() and int(masks.max()) >= num_classes:
        bad = int(masks.flatten(1).amax(1).argmax())
        dg.check_labels(masks, num_classes, batch["path"][bad])  # raises, naming the shard file
    return {"seed": batch["seed"], "image": images.numpy(), "mask": masks.numpy()}


def read_dataset(directory: str | os.PathLike, size: int | None = None, mask: str = "label",
                 class_names=None, checksums: bool = True):
    """A Ray Dataset of decoded rows {seed, image [3, s, s] float32 in [-1, 1], mask [s, s] int64}, after the
    directory is verified against its manifest on the driver (errors name the file)."""
    ds = dg.open_dataset(directory, class_names, checksums=checksums)
    start_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # The files are already listed and verified by the manifest. Ray Data's V2 parquet datasource would
    # start a pool of footer-reading actors on every read (measured: 11 s for 3 small shards on 2 busy
    # cores, against 0.2 s for the V1 path's one read task per file), so this read takes the V1 path.
    v2 = getattr(ctx, "use_datasource_v2", None)
    if v2 is not None:
        ctx.use_datasource_v2 = False
    try:
        rows = ray.data.read_parquet([str(f) for f in ds.files], include_paths=True)
    finally:
        if v2 is not None:
            ctx.use_datasource_v2 = v2
    return (rows.select_columns(["seed", "image", mask, "path"])
            .map_batches(_decode, batch_format="numpy",
                         fn_kwargs={"size": size, "mask": mask, "num_classes": ds.num_classes}))


def load_tensors(dataset: dg.ShardDataset | str | os.PathLike, size: int | None = None, mask: str = "label",
                 batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``iter_torch_batches`` of :func:`read_dataset` into tensors in seed order: the same tensors as
    :func:`lagm_ray.datagen.load_tensors` (a drop-in ``reader`` for ``downstream_from_shards``)."""
    directory = dataset.directory if isinstance(dataset, dg.ShardDataset) else dataset
    seeds, images, masks = [], [], []
    for b in read_dataset(directory, size, mask).iter_torch_batches(batch_size=batch_size, device="cpu"):
        seeds.append(b["seed"])
        images.append(b["image"])
        masks.append(b["mask"])
    if not seeds:
        raise dg.DatasetError(f"{dg.manifest_path(directory)}: the dataset holds no rows (all filtered?)")
    order = torch.cat(seeds).argsort()  # blocks arrive in completion order; seed order is the dataset's
    return torch.cat(images)[order], torch.cat(masks)[order]


def downstream_from_shards(directory: str | os.PathLike, config) -> dict[str, float]:
    """Table 1's downstream protocol on a shard directory, read through Ray Data."""
    return downstream.downstream_from_shards(directory, config, reader=lambda ds, size: load_tensors(ds, size))
