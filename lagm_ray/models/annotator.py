"""The annotator A_w: an FPN that decodes generator features into part logits (Appendix B, Fig. B.1).

As in the reference code: one 1x1 lateral conv per synthesis-block output (coarse to fine), a
top-down path that upsamples bilinearly and adds, no smoothing convs; then a head of two
(3x3 conv without bias, BN, ReLU) and a 3x3 conv to class logits at the finest feature
resolution, which for a StyleGAN2 is the image resolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import assert_shape


class FPNAnnotator(nn.Module):
    def __init__(self,
        feature_channels: Sequence[int],    # Channels of each input feature map, coarse to fine (one lateral conv
                                            # each): Generator.feature_channels(), or the blocks fed.
        num_classes: int,                   # Number of part classes (output logit channels).
        width: int = 128,                   # Channels of the lateral convs, the top-down path and the head.
    ):
        super().__init__()
        self.feature_channels = list(feature_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in self.feature_channels)
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 3, padding=1),
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: block outputs coarse to fine (as the generator returns them), features[i] of shape
        [N, feature_channels[i], H_i, W_i] with H_i, W_i not decreasing -> logits [N, num_classes, H_L, W_L]."""
        net, channels = "FPNAnnotator", self.feature_channels
        if isinstance(features, torch.Tensor) or len(features) != len(channels):
            got = f"a tensor {list(features.shape)}" if isinstance(features, torch.Tensor) else len(features)
            raise ValueError(f"{net}: features must be a list of {len(channels)} feature maps [N, C, H, W], "
                             f"C = {channels} (coarse to fine), got {got}")
        for i, c in enumerate(channels):  # batch: features[0]'s
            assert_shape(features[i], ["N" if i == 0 else features[0].shape[0], c, "H", "W"], net, f"features[{i}]")
        for i in range(1, len(channels)):
            if any(a < b for a, b in zip(features[i].shape[-2:], features[i - 1].shape[-2:])):
                raise ValueError(f"{net}: features[{i}] must be at least as large as features[{i - 1}] (coarse to "
                                 f"fine), got {list(features[i].shape[-2:])} after {list(features[i - 1].shape[-2:])}")
        x = self.lateral[0](features[0].float())
        for lateral, feat in zip(self.lateral[1:], features[1:]):
            x = F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            x = x + lateral(feat.float())
        return self.head(x)


class PackedAnnotator(nn.Module):
    """An :class:`FPNAnnotator` that takes its feature maps as one tensor, as MLflow's pytorch flavor
    (one input array) and a serving endpoint pass them: every map upsampled (nearest) to the finest
    size and concatenated on channels (:meth:`pack`). The forward splits them and samples each back
    down (nearest, exact for the power-of-two block sizes), so the logits equal the annotator's."""

    def __init__(self, annotator: FPNAnnotator, sizes: Sequence[Sequence[int]]):
        super().__init__()
        self.annotator = annotator
        self.sizes = [tuple(int(v) for v in s) for s in sizes]  # each feature map's [H, W], coarse to fine

    @staticmethod
    def pack(features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[-1].shape[-2:]
        return torch.cat([F.interpolate(f.float(), size=size, mode="nearest") for f in features], dim=1)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(packed, self.annotator.feature_channels, dim=1)
        return self.annotator([c if tuple(c.shape[-2:]) == s else F.interpolate(c, size=s, mode="nearest")
                               for c, s in zip(chunks, self.sizes)])
