"""GANORCON (Saha et al., CVPR 2022, Sec. 3): contrastive representations instead of a GAN's.

    steps 1..P           Step I    MoCo v2 on unlabelled real images: InfoNCE of a query encoder against a
                                   momentum key encoder's positive and a queue of negatives (Eq. 2)
    steps P+1..P+J       Step II   hypercolumns of the frozen encoder (conv2_x..conv5_x, upsampled and
                                   concatenated) -> projector ("mlp" or "conv") on the few labelled images
    steps P+J+1..T       Step III  distill encoder+projector into the configured segmentor on unlabelled
                                   real images it labels (Eq. 5); without distillation the projector keeps
                                   training and encoder+projector is the evaluated network

No generator is involved: the unlabelled images are the embedded world's unlimited stream of fresh real
renders (with the real splits' sensor noise), or a real dataset's ``load_unlabelled``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import field
from typing import Annotated, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool, model_validator
from torch import nn

from ..config import Widths, config_section, invalid
from ..data.datasets import real_dataset_module
from ..data.toyworld import REAL_NOISE_STD, render, sample_params
from ..errors import ConfigError
from ..models.segmentors import ResNet, resnet
from ..trainer import Trainer


@config_section
class GANORCONSettings:
    """GANORCON (Saha et al., CVPR 2022), Section 3: MoCo v2 on unlabelled real images, hypercolumns,
    a projector trained on the few labelled images, optional distillation. The budget train.steps is
    split: steps 1..pretrain_steps MoCo, the next projector_steps the projector, the rest distillation
    (distill: true) or more projector training (distill: false)."""

    # MoCo stage; the paper counts 800 epochs, here a share of the 150k default
    pretrain_steps: Annotated[int, Field(ge=0)] = 100_000
    # projector stage when distilling (the paper: 800 MLP / 200 CONV epochs)
    projector_steps: Annotated[int, Field(ge=0)] = 25_000
    distill: StrictBool = True  # Step III; Table 1's best entry is "CONV + distill"
    # f_CON: a ResNet trunk (paper: ResNet-50 at torchvision width 64)
    encoder_depth: Literal[18, 34, 50, 101] = 50
    encoder_width: Annotated[int, Field(ge=1)] = 64
    # MoCo v2 (App. D): SGD lr 0.03, momentum 0.9, wd 1e-4, cosine; T = 0.2; batch 32 (Sec. 4);
    # queue 65536, key momentum 0.999 and a 2-layer MLP head to 128-d are MoCo v2's own defaults.
    moco_lr: Annotated[float, Field(gt=0)] = 0.03
    moco_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    moco_weight_decay: Annotated[float, Field(ge=0)] = 1.0e-4
    moco_batch_size: Annotated[int, Field(ge=2, description="BatchNorm")] = 32
    moco_temperature: Annotated[float, Field(gt=0)] = 0.2
    moco_queue: int = 65_536
    moco_key_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.999
    moco_dim: Annotated[int, Field(ge=1)] = 128
    moco_crop_scale_min: Annotated[float, Field(gt=0, le=1)] = 0.2  # MoCo v2's RandomResizedCrop(scale=(0.2, 1))
    # Step II: the projector on hypercolumns of conv2_x..conv5_x, upsampled bilinearly to the input size
    projector: Literal["mlp", "conv"] = "conv"  # CONV beats MLP in Table 2
    # Adam, cosine; None = the paper's 1e-3 (MLP) or 5e-4 (CONV)
    projector_lr: Annotated[float, Field(gt=0)] | None = None
    mlp_hidden: Widths = field(default_factory=lambda: [1024, 256])  # App. B
    # CONV (App. B Model-A): encoder widths, one max-pool between levels; the decoder mirrors them.
    conv_channels: Widths = field(default_factory=lambda: [1024, 256, 256, 256, 256, 512])
    conv_out: Annotated[int, Field(ge=1)] = 256  # last ConvBNReLU before the per-pixel linear classifier (App. B)
    # the paper sets ResNet's first conv stride 2 -> 1 when extracting hypercolumns
    conv1_stride: Annotated[Literal[1, 2], Field(description="1 = the paper, 2 = ResNet's own")] = 1
    projector_augment: StrictBool = True  # random resized crop, flip, colour jitter (Sec. 4)
    # not given in the paper; milder than MoCo's 0.2 for few labels
    projector_crop_scale_min: Annotated[float, Field(gt=0, le=1)] = 0.5
    # Step III (Sec. 4): batch 8, lr from train.segmentor_optim (paper: 1e-3) on unlabelled real images
    distill_batch_size: Annotated[int, Field(ge=2, description="BatchNorm")] = 8
    # Real datasets: how many unlabelled images load_unlabelled reads (the embedded world streams fresh renders)
    num_unlabelled: Annotated[int, Field(ge=1)] = 10_000

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> GANORCONSettings:
        if self.moco_queue < self.moco_batch_size:
            raise invalid("moco_queue", f"must hold at least one batch of keys (moco_batch_size "
                                        f"{self.moco_batch_size}), got {self.moco_queue}")
        return self


# ------------------------------------------------------------------------------ MoCo v2


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 2 as MoCo computes it: q, k [B, D] (L2-normalised), queue [K, D] of negatives. The positive is
    logit 0 among (q.k, q.queue_1, ..., q.queue_K) / T."""
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCo(nn.Module):
    """Query encoder + MLP head, a momentum copy of both for keys, and the ring queue of past keys."""

    def __init__(self, encoder: ResNet, dim: int, queue_size: int, key_momentum: float, temperature: float):
        super().__init__()
        c = encoder.out_channels
        self.encoder_q = encoder
        self.head_q = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, dim))  # MoCo v2's MLP
        self.encoder_k = _frozen_copy(encoder)
        self.head_k = _frozen_copy(self.head_q)
        self.key_momentum, self.temperature = key_momentum, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def embed(self, encoder: ResNet, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(head(encoder(x).mean((2, 3))), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (parameters only, as the reference code)."""
        m = self.key_momentum
        for q_mod, k_mod in ((self.encoder_q, self.encoder_k), (self.head_q, self.head_k)):
            for pq, pk in zip(q_mod.parameters(), k_mod.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest keys, wrapping around the ring."""
        n, size = len(keys), len(self.queue)
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.fill_((ptr + n) % size)

    def loss(self, x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
        q = self.embed(self.encoder_q, self.head_q, x_q)
        with torch.no_grad():
            self.momentum_update()
            k = self.embed(self.encoder_k, self.head_k, x_k)
        loss = info_nce(q, k, self.queue.clone(), self.temperature)
        self.enqueue(k)
        return loss


def _frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


# ------------------------------------------------------------------------------ augmentations (plain torch)


def _uniform(n: int, lo: float, hi: float, rng: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=rng)


def random_crop_flip_theta(n: int, scale_min: float, rng: torch.Generator) -> torch.Tensor:
    """Affine matrices [n, 2, 3] for F.affine_grid: a random resized crop (area fraction in [scale_min, 1],
    aspect ratio in [3/4, 4/3], as torchvision's) and a horizontal flip with probability 1/2. Sides are
    clamped to the image instead of torchvision's ten retries."""
    area = _uniform(n, scale_min, 1.0, rng)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), rng)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=rng) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=rng) - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def color_jitter(x: torch.Tensor, rng: torch.Generator, strength: float = 0.4, hue: float = 0.1) -> torch.Tensor:
    """Brightness, contrast, saturation (factors in [1-s, 1+s]) and hue (a rotation of the chroma plane of
    YIQ by up to +-hue turns, close to torchvision's HSV shift) on images in [0, 1]; fixed order."""
    n, dev = len(x), x.device

    def factor() -> torch.Tensor:
        return _uniform(n, 1 - strength, 1 + strength, rng).view(n, 1, 1, 1).to(dev)

    x = (x * factor()).clamp(0, 1)
    mean = _gray(x).mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * factor() + mean).clamp(0, 1)
    g = _gray(x)
    x = ((x - g) * factor() + g).clamp(0, 1)
    angle = (_uniform(n, -hue, hue, rng) * 2 * math.pi).to(dev)
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
    c = torch.einsum("ij,bjhw->bihw", yiq, x)
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    i, q = c[:, 1] * cos - c[:, 2] * sin, c[:, 1] * sin + c[:, 2] * cos
    c = torch.stack([c[:, 0], i, q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(yiq), c).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur; sigma [n] in pixels; kernel about 10% of the side (MoCo v2's 23 px
    at 224)."""
    n, c, h, w = x.shape
    k = max(3, int(0.1 * h) // 2 * 2 + 1)
    t = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    kern = torch.exp(-t[None] ** 2 / (2 * sigma.to(x).clamp(min=1e-3)[:, None] ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="replicate"), kern[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="replicate"), kern[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _where(p: float, n: int, rng: torch.Generator, dev: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=rng) < p).view(n, 1, 1, 1).to(dev)


def moco_v2_augment(images: torch.Tensor, rng: torch.Generator, scale_min: float = 0.2) -> torch.Tensor:
    """MoCo v2's "aug_plus" on images in [-1, 1]: random resized crop + flip, colour jitter (0.4, 0.4, 0.4,
    0.1) with p 0.8, grayscale with p 0.2, Gaussian blur (sigma in [0.1, 2] at 224 px, scaled to the image
    size) with p 0.5."""
    n, dev = len(images), images.device
    x = warp((images + 1) / 2, random_crop_flip_theta(n, scale_min, rng))
    x = torch.where(_where(0.8, n, rng, dev), color_jitter(x, rng), x)
    x = torch.where(_where(0.2, n, rng, dev), _gray(x), x)
    sigma = _uniform(n, 0.1, 2.0, rng) * images.shape[-1] / 224
    x = torch.where(_where(0.5, n, rng, dev), gaussian_blur(x, sigma), x)
    return x.clamp(0, 1) * 2 - 1


def segmentation_augment(images: torch.Tensor, masks: torch.Tensor, rng: torch.Generator,
                         scale_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The projector's augmentations (Sec. 4): the same crop + flip on image and mask, colour jitter."""
    theta = random_crop_flip_theta(len(images), scale_min, rng)
    x = color_jitter(warp((images + 1) / 2, theta), rng) * 2 - 1
    y = warp(masks[:, None].float(), theta, mode="nearest")[:, 0].round().long()
    return x, y


# ------------------------------------------------------------------------------ hypercolumns and projectors


def hypercolumns(encoder: ResNet, x: torch.Tensor, conv1_stride: int) -> torch.Tensor:
    """Outputs of layer1..layer4 (conv2_x..conv5_x) upsampled bilinearly to the input size and
    concatenated; the first conv runs at ``conv1_stride`` (the paper: 1) to keep spatial detail."""
    h = F.conv2d(x, encoder.conv1.weight, stride=conv1_stride, padding=3)
    h = encoder.maxpool(encoder.relu(encoder.bn1(h)))
    feats = []
    for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        h = layer(h)
        feats.append(F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(feats, 1)


def hypercolumn_channels(encoder: ResNet) -> int:
    return sum(_layer_out(layer) for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4))


def _layer_out(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class MLPProjector(nn.Module):
    """Per-pixel MLP (App. B: hidden 1024 then 256), as 1x1 convolutions with BN and ReLU."""

    def __init__(self, in_channels: int, num_classes: int, hidden: Sequence[int]):
        super().__init__()
        widths = [in_channels, *hidden]
        self.body = nn.Sequential(*[_conv_bn_relu(a, b, 1) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nn.Conv2d(widths[-1], num_classes, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(h))


class ConvProjector(nn.Module):
    """CONV (App. B, Model-A): ConvBNReLU levels of ``channels`` with a 2x max-pool between them, then back up:
    upsample, concatenate the level's encoder output, ConvBNReLU (to that level's width, ``out`` at the top),
    and a per-pixel linear classifier. App. B's table is partly garbled; the decoder widths mirror the encoder."""

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int], out: int):
        super().__init__()
        channels = list(channels)
        self.down = nn.ModuleList(_conv_bn_relu(a, b) for a, b in zip([in_channels, *channels[:-1]], channels))
        # level l takes its encoder output (channels[l]) and the level below's output (channels[l + 1])
        ups = [_conv_bn_relu(channels[level] + channels[level + 1], out if level == 0 else channels[level])
               for level in range(len(channels) - 2, -1, -1)]
        self.up = nn.ModuleList(ups)
        self.out = nn.Conv2d(out if len(channels) > 1 else channels[0], num_classes, 1)
        self.levels = len(channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, conv in enumerate(self.down):
            h = conv(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for conv, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = conv(torch.cat([skip, h], 1))
        return self.out(h)


class HypercolumnSegmentor(nn.Module):
    """Encoder + projector as one segmentor: images in [-1, 1] -> logits at the input size. The encoder is
    frozen (Step II): it always runs in eval mode and without gradients. Evaluation-sized batches are cut
    into ``chunk`` images so hypercolumns stay small."""

    def __init__(self, encoder: ResNet, projector: nn.Module, conv1_stride: int, chunk: int = 8):
        super().__init__()
        self.encoder, self.projector = encoder, projector
        self.conv1_stride, self.chunk = conv1_stride, chunk

    def features(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            h = hypercolumns(self.encoder, x, self.conv1_stride)
        self.encoder.train(was_training)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            return self.projector(self.features(x))
        return torch.cat([self.projector(self.features(c)) for c in x.split(self.chunk)])


# ------------------------------------------------------------------------------ the method


def cosine_lr(base: float, t: int, total: int) -> float:
    """Cosine decay from ``base`` at t = 0 towards 0 at t = total (set every step: nothing to checkpoint)."""
    return base * 0.5 * (1 + math.cos(math.pi * min(t, total) / max(total, 1)))


class GANORCONTrainer(Trainer):
    """``train.method: ganorcon``. ``self.segmentor`` is encoder+projector without distillation, else the
    configured segmentor (the student), so the common evaluation scores the network the paper would use."""

    section, Settings = "ganorcon", GANORCONSettings

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        g = cfg.ganorcon
        if g.pretrain_steps + (g.projector_steps if g.distill else 0) >= cfg.train.steps:
            raise ConfigError("ganorcon.pretrain_steps + (projector_steps when distilling) must leave steps for "
                              f"the last stage of train.steps={cfg.train.steps}")

    @classmethod
    def uses_generator(cls, cfg) -> bool:
        return False

    def build(self) -> None:
        g, dev = self.cfg.ganorcon, self.device
        if g.projector == "conv" and self.seg_size < 2 ** (len(g.conv_channels) - 1):
            raise ConfigError(f"ganorcon.conv_channels: {len(g.conv_channels)} levels halve a {self.seg_size} px "
                              f"image {len(g.conv_channels) - 1} times; use at most "
                              f"{int(math.log2(self.seg_size)) + 1} levels")
        self.unlabelled_pool = self._load_unlabelled()
        encoder = resnet(g.encoder_depth, num_classes=None, width=g.encoder_width)
        self.moco = MoCo(encoder, g.moco_dim, g.moco_queue, g.moco_key_momentum, g.moco_temperature).to(dev)
        self.moco_params = [*self.moco.encoder_q.parameters(), *self.moco.head_q.parameters()]
        self.opt_moco = torch.optim.SGD(self.moco_params, lr=g.moco_lr, momentum=g.moco_momentum,
                                        weight_decay=g.moco_weight_decay)
        c = hypercolumn_channels(encoder)
        n = self.num_classes
        projector = (MLPProjector(c, n, g.mlp_hidden) if g.projector == "mlp"
                     else ConvProjector(c, n, g.conv_channels, g.conv_out))
        self.teacher = HypercolumnSegmentor(self.moco.encoder_q, projector.to(dev), g.conv1_stride)
        self.projector_lr = g.projector_lr or (1e-3 if g.projector == "mlp" else 5e-4)
        self.opt_proj = torch.optim.Adam(projector.parameters(), lr=self.projector_lr)
        if not g.distill:  # the evaluated network is encoder+projector; opt_s is what trains it
            self.segmentor, self.opt_s = self.teacher, self.opt_proj

    def _load_unlabelled(self) -> torch.Tensor | None:
        """None on the embedded world (fresh renders are drawn every step), else the real dataset's images."""
        d = self.cfg.data
        if d.dataset == "embedded":
            return None
        try:
            load = getattr(real_dataset_module(d.dataset), "load_unlabelled", None)
        except ImportError as e:
            raise ConfigError(f"data.dataset {d.dataset!r}: its loader module cannot be imported ({e})") from e
        if load is None:
            raise ConfigError(f"train.method ganorcon needs unlabelled images, and the {d.dataset!r} dataset "
                              "module has no load_unlabelled(data, size, n)")
        return load(d, self.seg_size, self.cfg.ganorcon.num_unlabelled)

    def unlabelled_batch(self, n: int) -> torch.Tensor:
        """n unlabelled real images at the segmentor's size, drawn from the training stream ``self.rng``."""
        if self.unlabelled_pool is not None:
            idx = torch.randint(len(self.unlabelled_pool), (n,), generator=self.rng)
            return self.unlabelled_pool[idx].to(self.device)

        images, _ = render(self.cfg.data.category, sample_params(self.cfg.data.category, n, self.rng), self.seg_size)
        noise = torch.randn(images.shape, generator=self.rng)  # the real splits' sensor noise
        return (images + REAL_NOISE_STD * noise).clamp(-1, 1).to(self.device)

    def stage(self, step: int) -> str:
        g = self.cfg.ganorcon
        if step <= g.pretrain_steps:
            return "pretrain"
        if not g.distill or step <= g.pretrain_steps + g.projector_steps:
            return "projector"
        return "distill"

    def method_step(self) -> dict[str, float]:
        stage = self.stage(self.step)
        if stage == "pretrain":
            return self.moco_step()
        if stage == "projector":
            return self.projector_step()
        return self.distill_step()

    def moco_step(self) -> dict[str, float]:
        g = self.cfg.ganorcon
        x = self.unlabelled_batch(g.moco_batch_size)
        x_q = moco_v2_augment(x, self.rng, g.moco_crop_scale_min)
        x_k = moco_v2_augment(x, self.rng, g.moco_crop_scale_min)
        lr = cosine_lr(g.moco_lr, self.step - 1, g.pretrain_steps)
        for group in self.opt_moco.param_groups:
            group["lr"] = lr
        self.moco.train()
        loss = self.moco.loss(x_q, x_k)
        self.minimise(loss, self.opt_moco, self.moco_params)
        return {"loss/moco": loss.item(), "lr/moco": lr}

    def projector_step(self) -> dict[str, float]:
        g = self.cfg.ganorcon
        images, masks = self.labelled_batch()
        if g.projector_augment:
            images, masks = segmentation_augment(images, masks, self.rng, g.projector_crop_scale_min)
        length = g.projector_steps if g.distill else self.total_steps - g.pretrain_steps
        lr = cosine_lr(self.projector_lr, self.step - g.pretrain_steps - 1, length)
        for group in self.opt_proj.param_groups:
            group["lr"] = lr
        self.teacher.train()
        loss = F.cross_entropy(self.teacher(images), masks, ignore_index=255)
        self.minimise(loss, self.opt_proj, self.teacher.projector.parameters())
        return {"loss/projector": loss.item(), "lr/projector": lr}

    def distill_step(self) -> dict[str, float]:
        """Eq. 5: cross-entropy of the student against encoder+projector's labels of unlabelled real images."""
        x = self.unlabelled_batch(self.cfg.ganorcon.distill_batch_size)
        self.teacher.eval()
        with torch.no_grad():
            labels = self.teacher(x).argmax(1)
        S = self.segmentor
        S.train()
        loss = F.cross_entropy(S(x), labels)
        self.minimise(loss, self.opt_s, S.parameters())
        return {"loss/distill": loss.item()}

    def method_state(self) -> dict[str, Any]:
        state = {"moco": self.moco.state_dict(), "opt_moco": self.opt_moco.state_dict()}
        if self.cfg.ganorcon.distill:  # otherwise the teacher and its optimiser are segmentor and opt_s
            state.update(teacher=self.teacher.state_dict(), opt_proj=self.opt_proj.state_dict())
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.moco.load_state_dict(state["moco"])
        self.opt_moco.load_state_dict(state["opt_moco"])
        if self.cfg.ganorcon.distill:
            self.teacher.load_state_dict(state["teacher"])
            self.opt_proj.load_state_dict(state["opt_proj"])
