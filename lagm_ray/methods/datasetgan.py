"""DatasetGAN (Zhang et al., CVPR 2021), Section 3: ``train.method: datasetgan``.

    style interpreter   N three-layer MLPs (in -> 128 -> 32 -> C, ReLU + BatchNorm) on per-pixel generator
                        features (every selected block upsampled to the finest one's resolution, concatenated),
                        each trained with cross-entropy on its own stratified sample of pixels of the
                        data.num_labelled annotated generated images                       steps 1..L
    labelled data       datasetgan.set_size generated images labelled by the ensemble's majority vote;
                        the filter_ratio with the largest summed Jensen-Shannon divergence dropped   step L+1
    segmentor           trained on that set                                               steps L+1..T

``self.annotator`` is the ensemble as a features -> logits module: its output is the log of the members'
mean probabilities (log-probs), so the annotator-vs-truth metric and the downstream protocol score the
mean-probability argmax; the set itself uses the majority vote (they differ only on split votes).
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import Widths, config_section
from ..data.datasets import resize_labels
from ..errors import ConfigError
from .generated_set import LabelThenDistill
from .pixel_features import (
    ANNOTATED_SEED,
    annotated_generated,
    features_at,
    label_in_chunks,
    stratified_pixels,
)


@config_section
class DatasetGANSettings:
    """DatasetGAN (Zhang et al., CVPR 2021), Section 3. The style interpreter reads the blocks that
    annotator.feature_resolutions names (every block when empty, as the paper) at the finest one's resolution."""

    num_classifiers: Annotated[int, Field(ge=1)] = 10  # N, the ensemble size (Sec. 3.2: "N = 10 in our paper")
    hidden: Widths = field(default_factory=lambda: [128, 32])  # release pixel_classifier, < 32 classes
    lr: Annotated[float, Field(gt=0)] = 1.0e-3  # release: Adam, lr 0.001
    # pixels per member per step (release batch_size)
    pixel_batch_size: Annotated[int, Field(ge=2, description="BatchNorm")] = 64
    # Pixels sampled per annotated image for each member's pool, every labelled region included
    # (Sec. 3.2); each member gets its own sample ("to amortize the effect of random sampling").
    pixels_per_image: Annotated[int, Field(ge=1)] = 2048
    # Steps 1..labeller_steps of train.steps train the ensemble, the rest the segmentor. The release
    # trains each member for a few epochs of every annotated pixel with early stopping; 10k batches of
    # 64 is ~30 passes over a 10-image pool of 2048 pixels each.
    labeller_steps: Annotated[int, Field(ge=1)] = 10_000
    set_size: Annotated[int, Field(ge=1)] = 10_000  # generated images labelled by the ensemble (Sec. 3.3, Table 3)
    # the most uncertain (summed JS divergence) images dropped (Sec. 3.3, Table 4)
    filter_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.10
    # pixels labelled at once: memory ~ chunk_pixels * feature channels
    chunk_pixels: Annotated[int, Field(ge=1)] = 16_384
    generate_batch_size: Annotated[int, Field(ge=1)] = 16  # generator batch while building the set


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension, 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def js_divergence(probs: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of an ensemble's class distributions, per pixel: probs [N, ..., C] ->
    [...] = H(mean_n p_n) - mean_n H(p_n) (the generalised JSD with equal weights, as in [2, 30] of the paper)."""
    return entropy(probs.mean(0)) - entropy(probs).mean(0)


def image_uncertainty(js: torch.Tensor) -> torch.Tensor:
    """Per-image uncertainty: the per-pixel JS divergence [B, H, W] summed over pixels (Sec. 3.3)."""
    return js.sum(dim=(-2, -1))


def majority_vote(probs: torch.Tensor) -> torch.Tensor:
    """probs [N, ..., C] -> the class most members pick; ties go to the larger mean probability (the
    vote counts are integers and mean probabilities lie in [0, 1], so adding them only breaks ties)."""
    C = probs.shape[-1]
    votes = F.one_hot(probs.argmax(-1), C).sum(0).to(probs.dtype)
    return (votes + probs.mean(0)).argmax(-1)


class PixelClassifier(nn.Sequential):
    """One member: Linear, ReLU, BatchNorm1d per hidden width, then Linear to the classes (release code)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], num_classes: int):
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU(), nn.BatchNorm1d(h)]
            in_dim = h
        super().__init__(*layers, nn.Linear(in_dim, num_classes))
        for m in self.modules():  # the release's init_weights('normal', 0.02)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)


class StyleInterpreter(nn.Module):
    """The ensemble. forward(features coarse->fine) -> log mean probability [B, C, size, size], computed
    ``chunk_pixels`` pixels at a time."""

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int], members: int, size: int,
                 chunk_pixels: int):
        super().__init__()
        self.members = nn.ModuleList(PixelClassifier(in_dim, hidden, num_classes) for _ in range(members))
        self.num_classes, self.size, self.chunk_pixels = num_classes, size, chunk_pixels

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """[P, D] pixel features -> [N, P, C] each member's class distribution."""
        return torch.stack([F.softmax(m(x), dim=-1) for m in self.members])

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return label_in_chunks(lambda x: self.member_probs(x).mean(0).clamp_min(1e-12).log(), features, self.size,
                               self.num_classes, self.chunk_pixels)

    @torch.no_grad()
    def vote_and_uncertainty(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Majority-vote labels [B, size, size] and per-pixel JS divergence [B, size, size]."""
        def per_pixel(x: torch.Tensor) -> torch.Tensor:
            p = self.member_probs(x)
            return torch.stack([majority_vote(p).float(), js_divergence(p)], dim=1)

        out = label_in_chunks(per_pixel, features, self.size, 2, self.chunk_pixels)
        return out[:, 0].long(), out[:, 1]


class DatasetGANTrainer(LabelThenDistill):
    section, Settings = "datasetgan", DatasetGANSettings

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)  # labeller_steps < train.steps
        g = cfg.datasetgan
        if int(g.set_size * (1 - g.filter_ratio)) < 1:
            raise ConfigError("datasetgan.set_size keeps no image after filtering")

    def build(self) -> None:
        g, cfg = self.cfg.datasetgan, self.cfg
        channels = self.source.feature_channels()
        self.label_size = self.source.block_resolutions[self.feature_index[-1]]  # finest selected block
        self.annotator = StyleInterpreter(sum(channels[i] for i in self.feature_index), self.num_classes, g.hidden,
                                          g.num_classifiers, self.label_size, g.chunk_pixels).to(self.device)
        self.opt_a = torch.optim.Adam(self.annotator.parameters(), lr=g.lr)  # one Adam = N independent ones
        seed = ANNOTATED_SEED + cfg.run.seed
        annotated = annotated_generated(self.source, cfg.data.num_labelled, seed, "datasetgan")
        self.annotated_features = [annotated.features[i] for i in self.feature_index]
        self.annotated_masks = resize_labels(annotated.masks, self.label_size).to(self.device)
        # each member's own pixel sample, re-drawn identically on resume (seeded, not checkpointed)
        self.pools = [tuple(t.to(self.device) for t in stratified_pixels(
            self.annotated_masks, g.pixels_per_image, torch.Generator().manual_seed(seed + 1 + m)))
            for m in range(g.num_classifiers)]

    def labeller_step(self) -> dict[str, float]:
        """One minibatch of pixels for every member, each from its own pool."""
        A, g = self.annotator, self.cfg.datasetgan
        A.train()
        losses = []
        for member, (b, y, x) in zip(A.members, self.pools):
            pick = torch.randint(len(b), (g.pixel_batch_size,), generator=self.rng).to(self.device)
            b_, y_, x_ = b[pick], y[pick], x[pick]
            feats = features_at(self.annotated_features, self.label_size, b_, y_, x_)
            losses.append(F.cross_entropy(member(feats), self.annotated_masks[b_, y_, x_]))
        loss = torch.stack(losses).sum()  # members share no weights: the sum trains each on its own loss
        self.minimise(loss, self.opt_a, A.parameters())
        return {"loss/interpreter": loss.item() / len(losses)}

    def label_generated(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        vote, js = self.annotator.vote_and_uncertainty(features)
        return resize_labels(vote, self.seg_size).to(torch.uint8), image_uncertainty(js)

    def segmentor_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.segmentor(images), targets.long())
