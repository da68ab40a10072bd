"""RepurposeGAN (Tritrong et al., CVPR 2021), Section 3: ``train.method: repurposegan``.

    few-shot segmenter   a CNN or an MLP over per-pixel generator activations (the blocks of
                         repurposegan.layer_groups upsampled to the finest one's resolution and concatenated),
                         trained with cross-entropy on data.num_labelled annotated generated images  steps 1..L
    auto-shot segmenter  self.segmentor distilled from repurposegan.set_size generated images labelled by the
                         few-shot segmenter (its logits, Sec. 3.3), with random flips, scales, rotations and
                         shifts applied identically to image and target (Sec. 4.3)                 steps L+1..T

The few-shot segmenter is ``self.annotator`` (features -> logits). It reads the blocks its layer groups name
and ignores annotator.feature_resolutions. Its test-time use on real images needs GAN inversion (Sec. 3.1);
as in the paper's own comparison, the network evaluated on real images is the auto-shot segmenter.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Annotated, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field, StrictBool, model_validator
from torch import nn

from ..config import Widths, config_section, invalid
from ..data.datasets import resize_labels
from ..errors import ConfigError
from .generated_set import LabelThenDistill
from .pixel_features import ANNOTATED_SEED, annotated_generated, label_in_chunks

# Table 7's groups of StyleGAN layers, by the resolution of their activations.
LAYER_GROUPS = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, 1 << 30)}


def _distinct(groups: list[str]) -> list[str]:
    if len(set(groups)) != len(groups):
        raise ValueError(f"must name distinct groups among {', '.join(LAYER_GROUPS)}")
    return groups


LayerGroups = Annotated[list[Literal["coarse", "middle", "fine"]], Field(min_length=1), AfterValidator(_distinct)]


def _scale_range(r: list[float]) -> list[float]:
    if not (len(r) == 2 and 0 < r[0] <= r[1]):
        raise ValueError("must be [low, high] with 0 < low <= high")
    return r


@config_section
class RepurposeGANSettings:
    """RepurposeGAN (Tritrong et al., CVPR 2021), Section 3; sizes from Sec. 4."""

    model: Literal["cnn", "mlp"] = "cnn"  # the few-shot segmenter (Sec. 4.2); Table 2 and Fig. 5 use the CNN
    # Generator blocks by resolution (Table 7): coarse 4-8 px, middle 16-32 px, fine 64 px and up.
    # Sec. 4.1 uses every layer but the image's; here "fine" includes the last block (64 px on the toy world).
    layer_groups: LayerGroups = field(default_factory=lambda: ["coarse", "middle", "fine"])
    cnn_embed: Annotated[int, Field(ge=1)] = 128  # 1x1 conv reducing the pixel features (Sec. 4.2: 5,056 -> 128)
    cnn_channels: Widths = field(default_factory=lambda: [64, 64, 64, 64, 64, 64, 32])  # then the classes
    cnn_dilations: Widths = field(default_factory=lambda: [2, 4, 8, 1, 2, 4, 8, 1])  # one per 3x3 conv
    mlp_hidden: Widths = field(default_factory=lambda: [2000, 200])  # Sec. 4.2
    lr: Annotated[float, Field(gt=0)] = 1.0e-3  # Adam (Sec. 4.2)
    weight_decay: Annotated[float, Field(ge=0)] = 1.0e-3  # Sec. 4.2
    # lr x 0.1 every 50 epochs over the annotated images (Sec. 4.2)
    lr_decay_epochs: Annotated[int, Field(ge=1)] = 50
    # annotated images per step; 0 = all (one step = one epoch)
    fewshot_batch_size: Annotated[int, Field(ge=0, description="0 = all annotated images")] = 0
    # Steps 1..labeller_steps of train.steps train the few-shot segmenter (Sec. 4.2: 1,000 epochs), the
    # rest the auto-shot segmenter.
    labeller_steps: Annotated[int, Field(ge=1)] = 1_000
    set_size: Annotated[int, Field(ge=1)] = 5_000  # generated images for the auto-shot segmenter (Sec. 4.1)
    target: Literal["soft", "hard"] = "soft"  # Sec. 3.3 keeps the few-shot logits, not the argmax
    # Geometric augmentation of the generated set, the same warp for image and target (Sec. 4.3).
    augment: StrictBool = True
    flip_prob: Annotated[float, Field(ge=0, le=1)] = 0.5  # random horizontal flips
    # random scales
    scale_range: Annotated[list[float], AfterValidator(_scale_range)] = field(default_factory=lambda: [0.5, 2.0])
    rotate_degrees: Annotated[float, Field(ge=0, le=180)] = 10.0  # random rotations in [-10, 10] degrees
    translate: Annotated[float, Field(ge=0, le=1)] = 0.5  # random shifts up to 50% of the image size
    # pixels embedded at once: memory ~ chunk_pixels * feature channels
    chunk_pixels: Annotated[int, Field(ge=1)] = 16_384
    generate_batch_size: Annotated[int, Field(ge=1)] = 16  # generator batch while building the set

    @model_validator(mode="after")
    def _one_dilation_per_conv(self) -> RepurposeGANSettings:
        if len(self.cnn_dilations) != len(self.cnn_channels) + 1:
            raise invalid("cnn_dilations", f"needs one dilation per conv: len(cnn_channels) + 1 = "
                                           f"{len(self.cnn_channels) + 1}, got {len(self.cnn_dilations)}")
        return self


def layer_group(resolution: int) -> str:
    return next(g for g, (lo, hi) in LAYER_GROUPS.items() if lo <= resolution <= hi)


def group_feature_index(block_resolutions: Sequence[int], groups: Sequence[str]) -> list[int]:
    """Indices of the generator blocks whose resolution falls in one of ``groups``."""
    index = [i for i, r in enumerate(block_resolutions) if layer_group(r) in groups]
    if not index:
        raise ConfigError(f"repurposegan.layer_groups: {list(groups)} select none of the generator's blocks "
                          f"{list(block_resolutions)} (coarse = 4-8 px, middle = 16-32 px, fine = 64 px and up)")
    return index


class FewShotSegmenter(nn.Module):
    """Sec. 4.2. ``cnn``: a per-pixel linear embedding (the 1x1 conv, applied in pixel chunks), then 3x3
    dilated convs with leaky ReLU and a 3x3 conv to the classes. ``mlp``: per-pixel Linear + ReLU layers.
    forward(features coarse->fine) -> logits [B, C, size, size]."""

    def __init__(self, in_dim: int, num_classes: int, size: int, chunk_pixels: int, model: str, cnn_embed: int,
                 cnn_channels: Sequence[int], cnn_dilations: Sequence[int], mlp_hidden: Sequence[int]):
        super().__init__()
        self.model, self.size, self.chunk_pixels = model, size, chunk_pixels
        if model == "cnn":
            self.pixel = nn.Linear(in_dim, cnn_embed)
            layers: list[nn.Module] = []
            prev = cnn_embed
            for ch, d in zip(cnn_channels, cnn_dilations):
                layers += [nn.Conv2d(prev, ch, 3, padding=d, dilation=d), nn.LeakyReLU(0.2)]
                prev = ch
            d = cnn_dilations[-1]
            self.spatial = nn.Sequential(*layers, nn.Conv2d(prev, num_classes, 3, padding=d, dilation=d))
            self.pixel_out = cnn_embed
        else:
            layers = []
            prev = in_dim
            for h in mlp_hidden:
                layers += [nn.Linear(prev, h), nn.ReLU()]
                prev = h
            self.pixel = nn.Sequential(*layers, nn.Linear(prev, num_classes))
            self.spatial = nn.Identity()
            self.pixel_out = num_classes

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.spatial(label_in_chunks(self.pixel, features, self.size, self.pixel_out, self.chunk_pixels))


def random_affine(n: int, generator: torch.Generator, flip_prob: float, scale_range: Sequence[float],
                  rotate_degrees: float, translate: float) -> torch.Tensor:
    """[n, 2, 3] affine_grid thetas (output -> input coordinates in [-1, 1]): a horizontal flip, a zoom by
    s in scale_range (s > 1 enlarges), a rotation and a shift of up to ``translate`` of the image size."""
    u = torch.rand(n, 5, generator=generator)
    flip = torch.where(u[:, 0] < flip_prob, -1.0, 1.0)
    s = scale_range[0] + (scale_range[1] - scale_range[0]) * u[:, 1]
    a = math.radians(rotate_degrees) * (2 * u[:, 2] - 1)
    t = 2 * translate * (2 * u[:, 3:5] - 1)  # the image spans 2 in normalised coordinates
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    A = torch.stack([torch.stack([cos * flip, -sin], -1), torch.stack([sin * flip, cos], -1)], -2)
    return torch.cat([A, -(A @ t[:, :, None])], dim=2)


def warp(images: torch.Tensor, targets: torch.Tensor, theta: torch.Tensor, soft: bool
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same warp for images, targets (logits bilinear, labels nearest) and a validity mask: pixels that
    came from outside the generated image carry no target."""
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = F.grid_sample(torch.ones_like(images[:, :1]), grid, mode="nearest", align_corners=False)[:, 0] > 0.5
    if soft:
        targets = F.grid_sample(targets, grid, mode="bilinear", padding_mode="border", align_corners=False)
    else:
        targets = F.grid_sample(targets[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
    return images, targets, valid


class RepurposeGANTrainer(LabelThenDistill):
    section, Settings = "repurposegan", RepurposeGANSettings  # LabelThenDistill.check: labeller_steps

    def build(self) -> None:
        r, cfg = self.cfg.repurposegan, self.cfg
        blocks = self.source.block_resolutions
        self.feature_index = group_feature_index(blocks, r.layer_groups)
        self.label_size = blocks[self.feature_index[-1]]
        in_dim = sum(self.source.feature_channels()[i] for i in self.feature_index)
        self.annotator = FewShotSegmenter(in_dim, self.num_classes, self.label_size, r.chunk_pixels, r.model,
                                          r.cnn_embed, r.cnn_channels, r.cnn_dilations, r.mlp_hidden).to(self.device)
        self.opt_a = torch.optim.Adam(self.annotator.parameters(), lr=r.lr, weight_decay=r.weight_decay)
        annotated = annotated_generated(self.source, cfg.data.num_labelled, ANNOTATED_SEED + cfg.run.seed,
                                        "repurposegan")
        self.annotated_features = [annotated.features[i] for i in self.feature_index]
        self.annotated_masks = resize_labels(annotated.masks, self.label_size).to(self.device)

    def labeller_step(self) -> dict[str, float]:
        """A batch of annotated images; the lr drops x0.1 every lr_decay_epochs epochs (a function of the
        step alone, so a resumed run follows the same schedule)."""
        r, A = self.cfg.repurposegan, self.annotator
        k = len(self.annotated_masks)
        b = k if r.fewshot_batch_size == 0 else min(r.fewshot_batch_size, k)
        epoch = (self.step - 1) // math.ceil(k / b)
        for group in self.opt_a.param_groups:
            group["lr"] = r.lr * 0.1 ** (epoch // r.lr_decay_epochs)
        idx = torch.arange(k) if b == k else torch.randperm(k, generator=self.rng)[:b]
        idx = idx.to(self.device)
        A.train()
        loss = F.cross_entropy(A([f[idx] for f in self.annotated_features]), self.annotated_masks[idx])
        self.minimise(loss, self.opt_a, A.parameters())
        return {"loss/fewshot": loss.item(), "lr/fewshot": self.opt_a.param_groups[0]["lr"]}

    def label_generated(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, None]:
        logits = self.annotator(features)
        if self.cfg.repurposegan.target == "hard":
            return resize_labels(logits.argmax(1), self.seg_size).to(torch.uint8), None
        if logits.shape[-1] != self.seg_size:
            mode = "area" if logits.shape[-1] > self.seg_size else "bilinear"
            logits = F.interpolate(logits, size=(self.seg_size, self.seg_size), mode=mode)
        return logits.to(torch.float16), None

    def segmentor_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        r = self.cfg.repurposegan
        soft = r.target == "soft"
        targets = targets.float() if soft else targets.long()
        if r.augment:
            theta = random_affine(len(images), self.rng, r.flip_prob, r.scale_range, r.rotate_degrees, r.translate)
            images, targets, valid = warp(images, targets, theta, soft)
        else:
            valid = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        logits = self.segmentor(images)
        if not soft:
            return F.cross_entropy(logits, targets.masked_fill(~valid, 255), ignore_index=255)
        per_pixel = -(F.softmax(targets, dim=1) * F.log_softmax(logits, dim=1)).sum(1)
        return (per_pixel * valid).sum() / valid.sum().clamp_min(1)
