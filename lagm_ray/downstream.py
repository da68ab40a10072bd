"""Table 1's downstream protocol: a fresh segmentor trained on annotator-labelled generated images alone,
scored on the real test split at its best validation epoch.

The labelled set is either made in memory (:meth:`lagm_ray.trainer.Trainer.downstream`, from the annotator
being trained) or read from a `lagm generate` shard directory (`lagm downstream DIR`); both are scored by
:func:`train_and_score`, seeded the same way, so the two agree on the same images."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import resolve_device
from .data.datasets import LabelledSplits, load_labelled_splits, resize_labels
from .data.toyworld import get_category
from .datagen import ShardDataset, check_classes, load_tensors, open_dataset
from .evaluation import annotator_labels, segmentor_confusion
from .metrics import drop_per_class, summarize
from .models.segmentors import build_segmentor, load_torchvision_weights
from .seeding import seed_everything
from .synthetic import SyntheticSource, feature_select, to_size


def synthetic_dataset(annotator: nn.Module, source: SyntheticSource, n: int, seg_size: int, seed: int,
                      feature_index: Sequence[int] | None = None, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """n generated images (at the segmentor's size) with the annotator's hard labels: Table 1's training set."""
    rng = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(0, n, batch_size):
        batch = source.sample(min(batch_size, n - i), generator=rng)
        lab = annotator_labels(annotator, feature_select(batch.features, feature_index))
        images.append(to_size(batch.images, seg_size).cpu())
        labels.append(resize_labels(lab, seg_size).cpu())
    return torch.cat(images), torch.cat(labels)


def train_downstream(segmentor: nn.Module, images: torch.Tensor, labels: torch.Tensor, val: tuple, test: tuple,
                     class_names: Sequence[str], epochs: int, batch_size: int, lr: float, seed: int,
                     absent: str = "zero") -> dict[str, float]:
    """Train a fresh segmentor on a (synthetic) labelled set; test metrics at the best validation epoch."""
    C = len(class_names)
    device = next(segmentor.parameters()).device
    opt = torch.optim.Adam(segmentor.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    best: dict[str, float] = {"val/fg_miou": -1.0}
    for epoch in range(1, epochs + 1):
        segmentor.train()
        order = torch.randperm(len(images), generator=rng)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            loss = F.cross_entropy(segmentor(images[idx].to(device)), labels[idx].to(device), ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_m = summarize(segmentor_confusion(segmentor, *val, C), class_names, absent)
        if val_m["fg_miou"] > best["val/fg_miou"]:
            test_m = summarize(segmentor_confusion(segmentor, *test, C), class_names, absent)
            best = {"epoch": float(epoch), **{f"val/{k}": v for k, v in val_m.items()},
                    **{f"test/{k}": v for k, v in test_m.items()}}
    return best


def train_and_score(cfg, images: torch.Tensor, labels: torch.Tensor, splits: LabelledSplits,
                    new_segmentor: Callable[[], nn.Module]) -> dict[str, float]:
    """The protocol on a given labelled set: a fresh segmentor (seeded by ``run.seed``) trained on ``images``/
    ``labels`` alone with ``cfg.eval``'s downstream settings; ``downstream/``-prefixed metrics of ``splits``."""
    e = cfg.eval
    torch.manual_seed(cfg.run.seed)
    m = train_downstream(new_segmentor(), images, labels, (splits.val_images, splits.val_masks),
                         (splits.test_images, splits.test_masks), splits.class_names, e.downstream_epochs,
                         e.downstream_batch_size, e.downstream_lr, seed=cfg.run.seed, absent=e.absent_class)
    return {f"downstream/{k}": v for k, v in drop_per_class(m).items()}


def fresh_segmentor(cfg, num_classes: int, device: torch.device) -> nn.Module:
    """A segmentor as ``cfg.segmentor`` configures it (as :meth:`Trainer.new_segmentor` builds it), on ``device``."""
    s = cfg.segmentor
    segmentor = build_segmentor(s.kind, num_classes, width=s.width)
    if s.init != "scratch":
        load_torchvision_weights(segmentor, s.init)
    return segmentor.to(device)


def downstream_metrics(cfg, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """:func:`train_and_score` on ``cfg``'s real splits, with the threads, seeds and device a ``Trainer(cfg)``
    sets up before its own downstream run."""
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    seed_everything(cfg.run.seed)
    splits = load_labelled_splits(cfg.data)
    device = resolve_device(cfg.run.device)
    return train_and_score(cfg, images, labels, splits, lambda: fresh_segmentor(cfg, splits.num_classes, device))


def downstream_from_shards(directory: str | os.PathLike, config,
                           reader: Callable[[ShardDataset, int], tuple[torch.Tensor, torch.Tensor]] | None = None
                           ) -> dict[str, float]:
    """The downstream protocol on a shard directory (``reader``: :func:`lagm_ray.datagen.load_tensors` by
    default, or the Ray Data reader of :mod:`lagm_ray.distributed.generate`). ``config``: the run config
    whose real splits score the segmentor (:func:`lagm_ray.annotator_runs.downstream_config` gives the
    annotator run's)."""
    ds = open_dataset(directory)
    cfg = config
    check_classes(ds.manifest_path, ds.class_names, _config_classes(cfg),
                  f"the config (data.category {cfg.data.category!r})")
    size = cfg.data.seg_resolution or cfg.data.resolution
    images, labels = (reader or load_tensors)(ds, size)
    return downstream_metrics(cfg, images, labels)


def _config_classes(cfg) -> list[str] | None:
    if cfg.data.dataset == "embedded":
        return list(get_category(cfg.data.category).class_names)
    return None
