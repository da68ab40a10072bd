"""Train the embedded world's toy StyleGAN2 by distilling the renderer.

No pretrained GAN can be downloaded here, so the toy generator learns to imitate the procedural
renderer: the latent z fixes the scene (``params = normal_cdf(z[:, :P])``), and G(z) is trained with
an L1 reconstruction loss on every block's skip image against the render of that scene (see
:func:`distill_loss`). Its block
features therefore encode the scene layout, as a real GAN's do, and every generated image has an
exact true mask. Weights are tracked with an EMA (StyleGAN's G_ema), which is what gets saved.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .data.toyworld import get_category, render
from .models.generator import Generator
from .seeding import seed_everything
from .storage import save_checkpoint
from .synthetic import GENERATOR_FORMAT, latent_to_params


@dataclass
class GeneratorTrainConfig:
    category: str = "faces"
    resolution: int = 64
    steps: int = 4000
    batch_size: int = 8
    # Adam at 3e-2 (peak of the one-cycle schedule; the layers use equalised learning rates): a 32 px
    # probe of 2000 steps reached part-colour agreement 0.62 with it, 0.55 at 1e-2 and 0.26 at 3e-3.
    lr: float = 3e-2
    z_dim: int = 64
    w_dim: int = 128
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 1.0  # NVlabs uses 0.01; distillation needs the mapping to learn the scene
    channel_base: int = 2048
    channel_max: int = 64
    input_mode: str = "w"  # a const 4x4 input learns the latent -> layout regression far too slowly
    ema_decay: float = 0.998
    # Each part's pixels weigh (the part's share of the batch's pixels) ** -part_weighting in the L1.
    # 0 is plain L1, under which eyes and mouths (a few pixels each) are cheap to blur away; 1 makes
    # every part weigh as much as the background in total.
    part_weighting: float = 0.0
    seed: int = 0
    num_threads: int = 0


# How each shipped generator was trained, where it departs from GeneratorTrainConfig's defaults: what
# `lagm train-generator --category C` trains unless told otherwise.
CATEGORY_RECIPES: dict[str, dict] = {
    # On the aligned faces, weighting the L1 by part brought the mouth in: a segmentor trained on a
    # 32 px probe generator's images and their true masks scored mouth IoU 52 with it, 0 without.
    "faces": {"part_weighting": 0.5},
    "car": {},
}


def recipe(category: str, **overrides) -> GeneratorTrainConfig:
    """The shipped generator's training config for ``category``, with ``overrides``."""
    return GeneratorTrainConfig(category=category, **{**CATEGORY_RECIPES.get(category, {}), **overrides})


def build_generator(c: GeneratorTrainConfig) -> tuple[Generator, dict]:
    init_kwargs = dict(z_dim=c.z_dim, c_dim=0, w_dim=c.w_dim, img_resolution=c.resolution, img_channels=3,
                       mapping_kwargs=dict(num_layers=c.mapping_layers, lr_multiplier=c.mapping_lr_multiplier),
                       channel_base=c.channel_base, channel_max=c.channel_max, input_mode=c.input_mode)
    return Generator(**init_kwargs), init_kwargs


def distill_loss(skip_images: list[torch.Tensor], real: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between every block's running skip image and the render pooled to that block's resolution,
    optionally weighted per pixel (``weight``: N x 1 x H x W at full resolution, mean 1; see
    :func:`part_weights`).

    Supervising the coarse skip images (deep supervision, in the spirit of progressive growing) makes
    the scene layout, where the face, eyes and mouth are, the first thing G learns; the full-resolution
    term then adds the detail."""
    loss = real.new_zeros(())
    for img in skip_images:
        full, size = img.shape[-1] == real.shape[-1], img.shape[-2:]
        err = (img - (real if full else F.adaptive_avg_pool2d(real, size))).abs()
        if weight is not None:
            err = err * (weight if full else F.adaptive_avg_pool2d(weight, size))
        loss = loss + err.mean()
    return loss / len(skip_images)


def part_weights(masks: torch.Tensor, num_classes: int, exponent: float) -> torch.Tensor:
    """Per-pixel loss weights (N x 1 x H x W, mean 1): each part's pixels weigh its share of the
    batch's pixels to the power ``-exponent``."""
    share = torch.bincount(masks.flatten(), minlength=num_classes).float() / masks.numel()
    w = share.clamp_min(1.0 / masks.numel()).pow(-exponent)[masks]
    return (w / w.mean()).unsqueeze(1)


@torch.no_grad()
def reconstruction_l1(G: Generator, category: str, n: int = 64, seed: int = 12345) -> float:
    """Mean L1 (images in [-1, 1]) between G(z) and the render of z's scene, on held-out latents."""
    num_params = get_category(category).num_params
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    real, _ = render(category, latent_to_params(z, num_params), G.img_resolution)
    fake = G(z, None, noise_mode="const").clamp(-1, 1)
    return F.l1_loss(fake, real).item()


def train_generator(c: GeneratorTrainConfig, out: str | Path,
                    on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    if c.num_threads:
        torch.set_num_threads(c.num_threads)
    seed_everything(c.seed)
    category = get_category(c.category)
    G, init_kwargs = build_generator(c)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt = torch.optim.Adam(G.parameters(), lr=c.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=c.steps, pct_start=0.05)
    rng = torch.Generator().manual_seed(c.seed)
    start = time.perf_counter()
    G.train()
    for step in range(1, c.steps + 1):
        z = torch.randn(c.batch_size, c.z_dim, generator=rng)
        real, masks = render(c.category, latent_to_params(z, category.num_params), c.resolution)
        weight = part_weights(masks, len(category.class_names), c.part_weighting) if c.part_weighting else None
        ws = G.mapping(z, None)
        _, skip_images = G.synthesis.run_blocks(ws, noise_mode="const")
        loss = distill_loss(skip_images, real, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.lerp_(p, 1.0 - c.ema_decay)
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        if on_step is not None:
            on_step(step, {"loss/distill": loss.item(), "lr": sched.get_last_lr()[0]})
    seconds = time.perf_counter() - start
    metrics = {"heldout_l1": reconstruction_l1(G_ema, c.category), "train_seconds": seconds}
    meta = {"world": "embedded", "category": c.category, "class_names": list(category.class_names),
            "num_params": category.num_params, "resolution": c.resolution, "train_config": asdict(c),
            "metrics": metrics}
    save_checkpoint({"format": GENERATOR_FORMAT, "init_kwargs": init_kwargs,
                     "state_dict": G_ema.state_dict(), "meta": meta}, out)
    return metrics
