"""The labeller: generated images labelled by an annotator its caller built (a run's is rebuilt by
:mod:`lagm_ray.annotator_runs`), with each image's confidence and entropy, and filtering on them."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.datasets import resize_labels
from ..storage import sha256_file
from ..synthetic import (
    SyntheticSource,
    feature_index,
    feature_select,
    resolve_generator_path,
)
from .spec import AnnotatorInfo, DatasetError, GenerationSpec


@dataclass
class Samples:
    """Generated, labelled images (on the CPU); labels and true masks at the image resolution."""

    seeds: torch.Tensor  # [N] int64
    images: torch.Tensor  # [N, 3, R, R] in [-1, 1]
    labels: torch.Tensor  # [N, R, R] int64
    confidence: torch.Tensor  # [N] float32
    entropy: torch.Tensor  # [N] float32
    true_masks: torch.Tensor | None  # [N, R, R] int64, embedded world only

    def columns(self) -> list[torch.Tensor | None]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def select(self, keep: torch.Tensor) -> "Samples":
        return Samples(*(None if t is None else t[keep] for t in self.columns()))

    @staticmethod
    def cat(parts: Sequence["Samples"]) -> "Samples":
        cols = list(zip(*(p.columns() for p in parts)))
        return Samples(*(None if c[0] is None else torch.cat(c) for c in cols))


def check_same_file(what: str, file: str | os.PathLike, sha256: str) -> None:
    """The file an actor (or a resumed run) loads must be the one the generation was planned with."""
    if sha256_file(file) != sha256:
        raise DatasetError(f"{file}: this {what} differs from the one the generation was planned with "
                           f"(sha256 {sha256[:12]}...): is it the same file on every node?")


def labelling_source(info: AnnotatorInfo, cfg, device: torch.device | str = "cpu"
                     ) -> tuple[SyntheticSource, list[int]]:
    """The annotator run's generator (``cfg``: the run's parsed config), at the resolution its annotator was
    trained at (synthesis may stop below the generator's), and the indices of the feature blocks it reads."""
    g = cfg.generator
    # embedded:<category> resolves to this node's package assets; any other path is taken as given
    # (shared storage on a cluster). Either way the file must be the one the driver described.
    spec = g.checkpoint if g.checkpoint.startswith("embedded:") else info.generator_path
    check_same_file("generator", resolve_generator_path(spec), info.generator_sha256)
    source = SyntheticSource.from_spec(spec, device, truncation_psi=info.truncation_psi,
                                       truncation_cutoff=g.truncation_cutoff, noise_mode=g.noise_mode,
                                       resolution=info.resolution)
    return source, feature_index(source.block_resolutions, cfg.annotator.feature_resolutions)


class Labeller:
    """The generator and the annotator, loaded once (one per Ray actor): seeds -> :class:`Samples`.
    ``source`` and ``feature_index`` from :func:`labelling_source`; ``annotator`` built and loaded by the
    caller (:func:`lagm_ray.annotator_runs.load_labeller` rebuilds a run's)."""

    def __init__(self, info: AnnotatorInfo, source: SyntheticSource, feature_index: Sequence[int],
                 annotator: nn.Module):
        self.info = info
        self.source = source
        self.device = source.device
        self.feature_index = list(feature_index)
        self.annotator = annotator.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, seeds: Sequence[int]) -> Samples:
        z = self.source.seeded_latents(seeds)
        # noise_mode "random" draws from the global RNG: seed it from the batch so rows stay reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[0]))
            batch = self.source.sample(len(seeds), z=z)
            logits = self.annotator(feature_select(batch.features, self.feature_index)).float()
        confidence, entropy = uncertainty(logits)
        res = self.source.resolution
        return Samples(seeds=torch.as_tensor(list(seeds), dtype=torch.int64), images=batch.images.cpu(),
                       labels=resize_labels(logits.argmax(1), res).cpu(), confidence=confidence,
                       entropy=entropy, true_masks=None if batch.true_masks is None else batch.true_masks.cpu())


def uncertainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: mean over pixels of the max softmax probability, and of the entropy (nats).

    In float64 numpy rather than torch: torch splits reductions across its intra-op threads, so the
    summation order (and the last bits of a float32 mean) would depend on how many CPUs a worker has."""
    lg = logits.detach().cpu().double().numpy()
    lg = lg - lg.max(axis=1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    B = lg.shape[0]
    confidence = p.max(axis=1).reshape(B, -1).mean(axis=1)
    entropy = -(p * logp).sum(axis=1).reshape(B, -1).mean(axis=1)
    return torch.from_numpy(confidence.astype(np.float32)), torch.from_numpy(entropy.astype(np.float32))


def generate_samples(labeller: Labeller, spec: GenerationSpec, shards: Sequence[int] | None = None) -> Samples:
    """The rows of ``shards`` (default all) in memory, as tensors, filtered as the spec says: what the shard
    files hold before PNG encoding. For tests and small in-memory sets."""
    parts = []
    for index in range(spec.num_shards) if shards is None else shards:
        for seeds in spec.chunks(index):
            s = labeller(seeds)
            parts.append(s.select(spec.keep(s.confidence, s.entropy)))
    return Samples.cat(parts)
