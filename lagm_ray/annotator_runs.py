"""A trained run as the annotator of `lagm generate`: read the run's checkpoint, rebuild its annotator through the
method registry, load its weights, and generate a dataset with it in this process.

:mod:`lagm_ray.datagen` reads no run checkpoint and imports no trainer or method: it labels with the annotator
it is given. This module (and the Ray actors of :mod:`lagm_ray.distributed.generate`) give it one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .datagen import (
    AnnotatorInfo,
    DatasetError,
    GenerationSpec,
    Labeller,
    Plan,
    ShardDataset,
    check_same_file,
    labelling_source,
    plan,
    produce_shard,
)
from .errors import CheckpointError, ConfigError
from .methods import from_dict, trainer_class
from .storage import code_version, load_checkpoint, sha256_file
from .synthetic import generator_meta, resolve_generator_path
from .trainer import BEST_FORMAT, CHECKPOINT_FORMAT


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory (its ``best.pt``) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        raise FileNotFoundError(f"{path}: a run directory without best.pt (train it to the end first)")
    if not path.is_file():
        raise FileNotFoundError(f"annotator checkpoint not found: {path}")
    return path


def describe_annotator(path: str | os.PathLike, truncation_psi: float | None = None) -> AnnotatorInfo:
    """What a dataset records of the run that labels it, from its checkpoint (no networks are built)."""
    path = resolve_checkpoint(path).resolve()
    state = load_checkpoint(path)
    fmt = state.get("format")
    if fmt not in (BEST_FORMAT, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path}: not a lagm_ray run checkpoint (format {fmt!r}); expected a run's best.pt")
    if state.get("annotator") is None:
        raise CheckpointError(f"{path}: holds no annotator (its train.method learns none)")
    try:
        cfg = from_dict(state["config"], source=f"{path} (stored config)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    g = cfg.generator
    gen_path = resolve_generator_path(g.checkpoint)
    if not gen_path.is_file():
        raise FileNotFoundError(f"{path}: its generator {g.checkpoint} is not found at {gen_path}")
    meta = generator_meta(gen_path)
    class_names = state.get("class_names") or meta.get("class_names")
    if not class_names:
        raise CheckpointError(f"{path}: no class names in the checkpoint or its generator {gen_path}")
    if meta.get("class_names") and list(meta["class_names"]) != list(class_names):
        raise CheckpointError(f"{path}: its classes {list(class_names)} differ from its generator's "
                         f"{meta['class_names']} ({gen_path})")
    psi = float(g.truncation_psi if truncation_psi is None else truncation_psi)
    return AnnotatorInfo(
        path=str(path), sha256=sha256_file(path), step=int(state.get("step", 0)), config=state["config"],
        class_names=tuple(class_names), generator_spec=g.checkpoint, generator_path=str(gen_path.resolve()),
        generator_sha256=sha256_file(gen_path), resolution=int(cfg.data.resolution),
        truncation_psi=psi, true_masks=meta.get("world") == "embedded" and psi == 1.0)


def load_labeller(annotator: str | os.PathLike | AnnotatorInfo, device: torch.device | str = "cpu",
                  truncation_psi: float | None = None) -> Labeller:
    """A run's generator and annotator (from its ``best.pt`` or run directory), as the trainer built them."""
    info = annotator if isinstance(annotator, AnnotatorInfo) else describe_annotator(annotator, truncation_psi)
    cfg = from_dict(info.config)
    source, index = labelling_source(info, cfg, device)
    check_same_file("annotator checkpoint", info.path, info.sha256)
    net: nn.Module | None = trainer_class(cfg.train.method).new_annotator(cfg, source, index, info.num_classes)
    if net is None:
        raise DatasetError(f"{info.path}: `lagm generate` cannot rebuild the annotator of train.method "
                           f"{cfg.train.method!r} (it rebuilds those of the FPN-annotator methods: lagm, "
                           "pseudo_label, inversion, maml)")
    try:
        net.load_state_dict(load_checkpoint(info.path)["annotator"])
    except RuntimeError as e:
        raise CheckpointError(f"{info.path}: its annotator does not fit its own config ({e})") from e
    return Labeller(info, source, index, net)


def generate_local(annotator: str | os.PathLike | AnnotatorInfo, out: str | os.PathLike, spec: GenerationSpec,
                   device: str = "cpu", on_shard: Callable[[Plan, dict[str, Any]], None] | None = None,
                   warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate in this process, without Ray (small sets, debugging, tests); returns the manifest.
    The Ray layer (:func:`lagm_ray.distributed.generate.generate_dataset`) writes the same files."""
    info = annotator if isinstance(annotator, AnnotatorInfo) else describe_annotator(annotator, spec.truncation_psi)
    with plan(out, info, spec, warn=warn) as p:
        if p.missing:
            labeller = load_labeller(info, device)
            extra = {"code_version": code_version(), "device": labeller.device.type}
            for i in p.missing:
                entry = produce_shard(labeller, p.spec, i, p.out, extra)
                p.record(entry)
                if on_shard:
                    on_shard(p, entry)
        return p.finish({"executor": "local", "device": device})


def downstream_config(dataset: ShardDataset, config=None):
    """The config of the downstream protocol: the one given, else the annotator run's (from the manifest)."""
    if config is not None:
        return config
    return from_dict(dataset.manifest["annotator"]["config"],
                     source=f"{dataset.manifest_path} (annotator config)")
