"""Segmentation networks S trained by gradient matching: DeepLabV3 (ResNet backbone) and U-Net.

Written in plain torch (no torchvision), with parameter names identical to
torchvision's ``deeplabv3_resnet{50,101}`` / ``resnet*`` and to milesial's Pytorch-UNet, so
their checkpoints load unchanged. A ``width`` option scales every channel count (64 is the
published width; toy runs use e.g. 16) without changing any parameter name.

Gradient matching picks parameters by named blocks (paper Table 2 and Table C.8). Each model
class defines its blocks in its ``BLOCKS`` mapping: block name -> regexes that must fully match a
parameter name (as the reference code's ``re.fullmatch`` over ``named_parameters()``).
Parameters of normalisation layers are never matched (see ``select_matched_parameters``).

Input convention: images in [-1, 1]. DeepLabV3 maps them to ImageNet mean/std inside forward
(constants, kept out of the state dict); U-Net uses them as they are.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import assert_shape

__all__ = [
    "SEGMENTOR_KINDS",
    "UnknownBlockError",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet",
    "DeepLabV3",
    "DeepLabHead",
    "ASPP",
    "FCNHead",
    "UNet",
    "build_segmentor",
    "block_names",
    "blocks_of_kind",
    "select_matched_parameters",
    "load_torchvision_weights",
]

SEGMENTOR_KINDS = ("deeplabv3_resnet18", "deeplabv3_resnet34", "deeplabv3_resnet50", "deeplabv3_resnet101", "unet")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Normalisation layers whose parameters are never gradient-matched (found by type, not name).
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class UnknownBlockError(ValueError):
    """A block name that the model does not define."""


# ==================================================================================== ResNet


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock; unlike torchvision, dilation > 1 is allowed (both 3x3 convs)."""

    expansion = 1

    def __init__(self,
        inplanes: int,                      # Number of input channels.
        planes: int,                        # Channels of the inner convs; output channels: planes * 1 (expansion).
        stride: int = 1,                    # Stride of the 3x3 conv1 (downsample must match it).
        downsample: nn.Module | None = None,  # Input -> residual of the output's shape, None = identity.
        dilation: int = 1,                  # Dilation (and padding) of the 3x3 convs.
    ):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self,
        inplanes: int,                      # Number of input channels.
        planes: int,                        # Channels of the inner convs; output channels: planes * 4 (expansion).
        stride: int = 1,                    # Stride of the 3x3 conv2 (downsample must match it).
        downsample: nn.Module | None = None,  # Input -> residual of the output's shape, None = identity.
        dilation: int = 1,                  # Dilation (and padding) of the 3x3 conv.
    ):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_SPECS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """torchvision's ResNet (groups=1), with a channel ``width`` (torchvision: 64).

    ``num_classes=None`` builds the trunk only (no avgpool/fc), as DeepLabV3's backbone.
    ``replace_stride_with_dilation`` works as in torchvision (layer2, layer3, layer4).
    """

    def __init__(self,
        block: type[nn.Module],             # Residual block: BasicBlock (ResNet-18/34) or Bottleneck (50/101).
        layers: Sequence[int],              # Number of blocks in layer1..layer4.
        num_classes: int | None = 1000,     # Outputs of the classifier (fc), None = trunk only (no avgpool/fc).
        width: int = 64,                    # Channels of conv1; layer k has width * 2**(k-1) planes (torchvision: 64).
        replace_stride_with_dilation: Sequence[bool] | None = None,  # For layer2..layer4: dilate instead of
                                            # striding? None = (False, False, False).
        zero_init_residual: bool = False,   # Initialise each block's last BN weight to 0 (block starts as identity)?
    ):
        super().__init__()
        if width < 1:
            raise ValueError(f"ResNet width must be >= 1, got {width}")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation must be None or 3 booleans, "
                             f"got {replace_stride_with_dilation}")
        self.inplanes = width
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 4 * width, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 8 * width, layers[3], 2, replace_stride_with_dilation[2])
        self.out_channels = 8 * width * block.expansion
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.out_channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 for images x [N, 3, H, W]."""
        assert_shape(x, ["N", self.conv1.in_channels, "H", "W"], "ResNet", "x")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        if not hasattr(self, "fc"):
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, num_classes: int | None = 1000, width: int = 64, **kwargs) -> ResNet:
    """ResNet-18/34/50/101 (torchvision's ``resnet{depth}`` at width 64)."""
    if depth not in RESNET_SPECS:
        raise ValueError(f"unsupported ResNet depth {depth}; valid: {sorted(RESNET_SPECS)}")
    block, layers = RESNET_SPECS[depth]
    return ResNet(block, layers, num_classes=num_classes, width=width, **kwargs)


# ================================================================================= DeepLabV3


class ASPPPooling(nn.Sequential):
    def __init__(self,
        in_channels: int,                   # Number of input channels.
        out_channels: int,                  # Number of output channels (the pooled vector, broadcast to H x W).
    ):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _aspp_conv(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ASPP(nn.Module):
    def __init__(self,
        in_channels: int,                   # Number of input channels.
        atrous_rates: Sequence[int],        # Dilation of each 3x3 branch (DeepLabV3: 12, 24, 36).
        out_channels: int = 256,            # Channels of every branch and of the projection.
    ):
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())
        ]
        branches += [_aspp_conv(in_channels, out_channels, r) for r in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    def __init__(self,
        in_channels: int,                   # Channels of the backbone features (layer4's output).
        num_classes: int,                   # Number of classes (output logit channels).
        channels: int = 256,                # Channels of the ASPP and of the 3x3 conv after it.
    ):
        super().__init__(
            ASPP(in_channels, [12, 24, 36], channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )


class FCNHead(nn.Sequential):
    """torchvision's FCNHead, used as DeepLabV3's auxiliary classifier on layer3."""

    def __init__(self,
        in_channels: int,                   # Channels of the input features (layer3's output); inner: 1/4 of it.
        num_classes: int,                   # Number of classes (output logit channels).
    ):
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class DeepLabV3(nn.Module):
    """torchvision's ``deeplabv3_resnet{depth}`` (state dict identical at width 64, aspp 256).

    Backbone output stride 8 (layer3 and layer4 dilated). ``forward`` takes images in [-1, 1]
    and returns the main logits upsampled to the input size as a plain tensor;
    ``forward_with_aux`` also returns the auxiliary logits (``aux_loss=True`` only).
    """

    BLOCKS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Res1": (r"backbone\.(conv1|bn1)\..*",),
        "Res2": (r"backbone\.layer1\..*",),
        "Res3": (r"backbone\.layer2\..*",),
        "Res4": (r"backbone\.layer3\..*",),
        "Res5": (r"backbone\.layer4\..*",),
        "Head": (r"classifier\..*", r"aux_classifier\..*"),
        "All": (r".*",),
    }

    def __init__(self,
        depth: int,                         # Backbone ResNet depth: 18, 34, 50 or 101.
        num_classes: int,                   # Number of classes (output logit channels).
        width: int = 64,                    # Backbone base width (torchvision: 64); every channel count scales.
        aspp_channels: int | None = None,   # Channels of the ASPP and head, None = 4 * width (256 at width 64).
        aux_loss: bool = False,             # Build the FCN auxiliary classifier on layer3 (forward_with_aux)?
        normalize_input: bool = True,       # Map [-1, 1] images to ImageNet mean/std inside forward?
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.depth, self.width, self.num_classes = depth, width, num_classes
        self.aspp_channels = 4 * width if aspp_channels is None else aspp_channels  # 256 at width 64
        self.normalize_input = normalize_input
        self.backbone = resnet(depth, num_classes=None, width=width, replace_stride_with_dilation=(False, True, True))
        c4 = self.backbone.out_channels
        self.classifier = DeepLabHead(c4, num_classes, self.aspp_channels)
        self.aux_classifier = FCNHead(c4 // 2, num_classes) if aux_loss else None
        # [-1, 1] -> ImageNet statistics: x * scale + shift. Non-persistent: not in the state dict.
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("_in_scale", 0.5 / std, persistent=False)
        self.register_buffer("_in_shift", (0.5 - mean) / std, persistent=False)

    def _logits(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images x [N, 3, H, W] -> logits [N, num_classes, H, W] (and the auxiliary ones, or None)."""
        assert_shape(x, ["N", self.backbone.conv1.in_channels, "H", "W"], "DeepLabV3", "x")
        size = x.shape[-2:]
        if self.normalize_input:
            x = x * self._in_scale + self._in_shift
        feats = self.backbone.features(x)
        out = F.interpolate(self.classifier(feats[3]), size=size, mode="bilinear", align_corners=False)
        aux = None
        if with_aux and self.aux_classifier is not None:
            aux = F.interpolate(self.aux_classifier(feats[2]), size=size, mode="bilinear", align_corners=False)
        return out, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x, with_aux=False)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._logits(x, with_aux=True)


# ===================================================================================== U-Net


class DoubleConv(nn.Module):
    """(conv 3x3 => BN => ReLU) * 2"""

    def __init__(self,
        in_channels: int,                   # Number of input channels.
        out_channels: int,                  # Number of output channels.
        mid_channels: int | None = None,    # Channels between the two convs, None = out_channels.
    ):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self,
        in_channels: int,                   # Number of input channels (halved spatially by a 2x2 max-pool).
        out_channels: int,                  # Number of output channels.
    ):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample x1, pad it to x2's size (odd sizes), concatenate [x2, x1], double conv."""

    def __init__(self,
        in_channels: int,                   # Channels of the concatenation [x2, upsampled x1].
        out_channels: int,                  # Number of output channels.
        bilinear: bool = True,              # Upsample x1 bilinearly (True) or by a 2x2 transposed conv (False)?
    ):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        dy = x2.size(2) - x1.size(2)
        dx = x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self,
        in_channels: int,                   # Number of input channels.
        out_channels: int,                  # Number of classes (output logit channels).
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """milesial's Pytorch-UNet (current layout) with base ``width`` (milesial: 64).

    ``bilinear=True`` (the LAGM reference's choice) upsamples with nn.Upsample and halves the
    bottleneck; ``bilinear=False`` uses ConvTranspose2d. Input in [-1, 1] is used as is.
    """

    BLOCKS: ClassVar[dict[str, tuple[str, ...]]] = {
        "Input": (r"inc\..*",),
        "Down": (r"down[1-4]\..*",),
        "Up": (r"up[1-4]\..*",),
        "Output": (r"outc\..*",),
        # the reference code's 'u1' / 'u2': layers at 1/1 and 1/2 scale, plus the output conv
        "U1": (r"outc\..*", r"down1\..*", r"up4\..*"),
        "U2": (r"outc\..*", r"down2\..*", r"up3\..*"),
        "All": (r".*",),
    }

    def __init__(self,
        num_classes: int,                   # Number of classes (output logit channels).
        width: int = 64,                    # Base channel count (milesial: 64); level k has width * 2**k.
        bilinear: bool = True,              # Bilinear upsampling, halving the bottleneck (True), or transposed
                                            # convs (False)?
        in_channels: int = 3,               # Number of input image channels.
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width < 1:
            raise ValueError(f"U-Net width must be >= 1, got {width}")
        self.width, self.num_classes, self.bilinear = width, num_classes, bilinear
        w = width
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(in_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 16 * w // factor)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear)
        self.up4 = Up(2 * w, w, bilinear)
        self.outc = OutConv(w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images x [N, in_channels, H, W], H and W >= 16 (four 2x2 max-pools) -> logits [N, num_classes, H, W]."""
        assert_shape(x, ["N", self.inc.double_conv[0].in_channels, "H", "W"], "UNet", "x")
        if x.shape[-2] < 16 or x.shape[-1] < 16:
            raise ValueError(f"UNet: x must be at least 16 x 16 pixels (four 2x2 max-pools), got {list(x.shape)}")
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


# ================================================================================ public API


def blocks_of_kind(kind: str) -> list[str]:
    """The block names gradient matching can select on a segmentor kind, without building it."""
    if kind not in SEGMENTOR_KINDS:
        raise ValueError(f"unknown segmentor kind {kind!r}; valid kinds: {', '.join(SEGMENTOR_KINDS)}")
    return list((UNet if kind == "unet" else DeepLabV3).BLOCKS)


def build_segmentor(kind: str, num_classes: int, width: int | None = None, **kwargs) -> nn.Module:
    """One of SEGMENTOR_KINDS. ``width`` None = the published width (64).

    kwargs: DeepLabV3 -> ``aspp_channels`` (default 4*width, i.e. 256), ``aux_loss``,
    ``normalize_input``; U-Net -> ``bilinear`` (default True), ``in_channels``.
    """
    if kind not in SEGMENTOR_KINDS:
        raise ValueError(f"unknown segmentor kind {kind!r}; valid kinds: {', '.join(SEGMENTOR_KINDS)}")
    if width is None:
        width = 64
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"segmentor width must be a positive int, got {width!r}")
    if kind == "unet":
        return UNet(num_classes, width=width, **kwargs)
    depth = int(kind.removeprefix("deeplabv3_resnet"))
    return DeepLabV3(depth, num_classes, width=width, **kwargs)


def _unwrap(model: nn.Module) -> nn.Module:
    """The segmentor inside a DistributedDataParallel / DataParallel wrapper."""
    while not hasattr(type(model), "BLOCKS") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _blocks_of(model: nn.Module) -> dict[str, tuple[str, ...]]:
    blocks = getattr(type(_unwrap(model)), "BLOCKS", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} defines no gradient-matching blocks (no BLOCKS mapping)")
    return blocks


def block_names(model: nn.Module) -> tuple[str, ...]:
    """The block names valid for this model, including "All"."""
    return tuple(_blocks_of(model))


def select_matched_parameters(model: nn.Module, blocks: Sequence[str] | str, *,
                              include_norm: bool = False) -> list[tuple[str, nn.Parameter]]:
    """Union of the named blocks' parameters, in ``model.named_parameters()`` order.

    Parameters of normalisation layers (BatchNorm/InstanceNorm/GroupNorm/LayerNorm, by module
    type) are excluded unless ``include_norm`` (the reference code keeps them in the list, where
    its distance gives them 0). Names are those of the unwrapped model (no ``module.`` prefix).
    """
    model = _unwrap(model)
    spec = _blocks_of(model)
    if isinstance(blocks, str):
        blocks = [blocks]
    blocks = list(blocks)
    if not blocks:
        raise ValueError("no blocks given to match; valid blocks: " + ", ".join(spec))
    bad = [b for b in blocks if b not in spec]
    if bad:
        raise UnknownBlockError(f"unknown block{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} for "
                                f"{type(model).__name__}; valid blocks: {', '.join(spec)}")
    pattern = re.compile("|".join(f"(?:{rx})" for b in blocks for rx in spec[b]))
    norm_ids: set[int] = set()
    if not include_norm:
        for m in model.modules():
            if isinstance(m, NORM_TYPES):
                norm_ids.update(id(p) for p in m.parameters(recurse=False))
    chosen = [(n, p) for n, p in model.named_parameters() if pattern.fullmatch(n) and id(p) not in norm_ids]
    if not chosen:
        raise ValueError(f"blocks {blocks} select no (non-normalisation) parameters of {type(model).__name__}")
    return chosen


def _list_keys(keys: Sequence[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"segmentor weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, unsafe globals, ...
        raise ValueError(f"segmentor weights {path}: cannot be read as a torch state dict "
                         f"(corrupt, truncated or not a weights file): {type(e).__name__}: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"segmentor weights {path}: expected a (non-empty) state dict, or one under 'model' "
                         f"or 'state_dict', got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"segmentor weights {path}: entries that are not tensors: {_list_keys(map(str, bad))}")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from a DDP-wrapped model
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_torchvision_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load torchvision-format weights from ``path`` into ``model`` (in place).

    Accepts a plain state dict or one under "model" / "state_dict". For a DeepLabV3 model a bare
    ResNet (ImageNet) state dict is loaded into ``model.backbone`` (its ``fc.*`` dropped; the head
    keeps its initialisation). ``strict``: any missing or unexpected key or shape mismatch raises
    ValueError naming the file and the keys; otherwise those keys are skipped with a warning.
    Missing ``num_batches_tracked`` entries (old torchvision checkpoints) are always tolerated.
    """
    path = Path(path)
    sd = _read_state_dict(path)
    model = _unwrap(model)
    target: nn.Module = model
    what = type(model).__name__
    if isinstance(model, DeepLabV3) and "conv1.weight" in sd and not any(k.startswith("backbone.") for k in sd):
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        target, what = model.backbone, f"{what}.backbone (bare ResNet weights)"

    own = target.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}")
        if mismatched:
            shapes = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})" for k in sorted(mismatched)]
            parts.append(f"shape mismatches ({len(mismatched)}): {', '.join(shapes[:20])}"
                         + (f", ... ({len(shapes) - 20} more)" if len(shapes) > 20 else ""))
        msg = f"segmentor weights {path} do not fit {what}: " + "; ".join(parts)
        if strict:
            raise ValueError(msg)
        warnings.warn(msg + " -- those keys were skipped (strict=False)", stacklevel=2)
    sd = {k: v for k, v in sd.items() if k in own and k not in mismatched}
    result = target.load_state_dict(sd, strict=False)
    # keys skipped under strict=False (missing from the file, or of the wrong shape) keep their init
    left = [k for k in result.missing_keys
            if not k.endswith("num_batches_tracked") and k not in missing and k not in mismatched]
    if left or result.unexpected_keys:  # cannot happen after the checks above; guard anyway
        raise ValueError(f"segmentor weights {path}: load_state_dict reported missing {left} "
                         f"unexpected {result.unexpected_keys}")
