"""Per-pixel generator features, as DatasetGAN (Sec. 3.2) and RepurposeGAN (Sec. 3.1) build them:
every selected synthesis block's output upsampled (bilinear) to one resolution and concatenated, so
pixel (y, x) of image b has the feature vector ``concat_k up(f_k)[b, :, y, x]``.

The full map [B, sum C_k, R, R] is what the papers materialise; it grows with R^2 * sum C_k (5056
channels at 1024 px in DatasetGAN), so here features are gathered only for the pixels asked for
(:func:`features_at`) and whole images are labelled in chunks of pixels (:func:`label_in_chunks`).
Also the few annotated generated images both methods start from, and the uint8 form of their
generated training sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..synthetic import SyntheticSource

ANNOTATED_SEED = 31_337  # the "person annotates a few generated images" stream, apart from training's


def upsample_concat(features: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """The papers' full per-pixel feature map [B, sum C_k, size, size] (bilinear, align_corners=False)."""
    return torch.cat([F.interpolate(f.float(), size=(size, size), mode="bilinear", align_corners=False)
                      if f.shape[-1] != size else f.float() for f in features], dim=1)


def _source_index(dst: torch.Tensor, src_size: int, dst_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F.interpolate's bilinear source coordinate (align_corners=False): the two neighbours and the weight
    of the second, so that gathering reproduces :func:`upsample_concat` exactly."""
    src = ((dst.float() + 0.5) * (src_size / dst_size) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=src_size - 1)
    i1 = (i0 + 1).clamp(max=src_size - 1)
    return i0, i1, src - i0


def features_at(features: Sequence[torch.Tensor], size: int, b: torch.Tensor, y: torch.Tensor,
                x: torch.Tensor) -> torch.Tensor:
    """Rows ``upsample_concat(features, size)[b[i], :, y[i], x[i]]`` as [P, sum C_k], without building the
    full map: each block is read at the four neighbours of every requested pixel."""
    out = []
    for f in features:
        r = f.shape[-1]
        y0, y1, wy = _source_index(y, r, size)
        x0, x1, wx = _source_index(x, r, size)
        wy, wx = wy[:, None], wx[:, None]
        f = f.float()
        top = f[b, :, y0, x0] * (1 - wx) + f[b, :, y0, x1] * wx
        bottom = f[b, :, y1, x0] * (1 - wx) + f[b, :, y1, x1] * wx
        out.append(top * (1 - wy) + bottom * wy)
    return torch.cat(out, dim=1)


def pixel_chunks(batch: int, size: int, chunk_pixels: int, device: torch.device | str) -> Iterator[
        tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(flat slice, b, y, x) over every pixel of ``batch`` images of size x size, ``chunk_pixels`` at a time."""
    total = batch * size * size
    for start in range(0, total, chunk_pixels):
        flat = torch.arange(start, min(start + chunk_pixels, total), device=device)
        yield slice(start, start + len(flat)), flat // (size * size), (flat // size) % size, flat % size


def label_in_chunks(per_pixel: Callable[[torch.Tensor], torch.Tensor], features: Sequence[torch.Tensor], size: int,
                    out_channels: int, chunk_pixels: int) -> torch.Tensor:
    """Apply ``per_pixel`` ([P, D] -> [P, out_channels]) to every pixel of the images, ``chunk_pixels`` pixels
    at a time, so memory stays at chunk_pixels * D whatever the resolution; returns [B, out_channels, size, size]."""
    B = features[0].shape[0]
    device = features[0].device
    out = torch.empty(B * size * size, out_channels, device=device)
    for sl, b, y, x in pixel_chunks(B, size, chunk_pixels, device):
        out[sl] = per_pixel(features_at(features, size, b, y, x))
    return out.view(B, size, size, out_channels).permute(0, 3, 1, 2)


def stratified_pixels(masks: torch.Tensor, per_image: int, generator: torch.Generator,
                      ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, y, x) of ``per_image`` pixels from each mask [B, H, W], covering every labelled region: half the
    budget is split evenly over the classes present in that image (each region gets at least one pixel, at
    most all of its pixels, without replacement), the rest is uniform over the labelled pixels so the class
    frequencies still show. DatasetGAN Sec. 3.2: "we ensure that we sample at least once from each labeled
    region"."""
    B, H, W = masks.shape
    bs, idx = [], []
    for i in range(B):
        flat = masks[i].reshape(-1).cpu()
        labelled = (flat != ignore_index).nonzero().squeeze(1)
        classes = flat[labelled].unique()
        quota = max(1, per_image // (2 * len(classes)))
        chosen = []
        for c in classes.tolist():
            region = (flat == c).nonzero().squeeze(1)
            chosen.append(region[torch.randperm(len(region), generator=generator)[:quota]])
        chosen = torch.cat(chosen)
        rest = max(0, per_image - len(chosen))
        chosen = torch.cat([chosen, labelled[torch.randint(len(labelled), (rest,), generator=generator)]])
        bs.append(torch.full_like(chosen, i))
        idx.append(chosen)
    b, flat = torch.cat(bs), torch.cat(idx)
    return b, flat // W, flat % W


@dataclass
class Annotated:
    """The few generated images a person annotates: their generator features (every block), images, masks."""
    features: list[torch.Tensor]
    images: torch.Tensor
    masks: torch.Tensor  # true masks at the generator's resolution


def annotated_generated(source: SyntheticSource, n: int, seed: int, method: str) -> Annotated:
    """``n`` generated images with their true masks standing in for a person's annotations (seeded)."""
    if not source.has_true_masks:
        raise ConfigError(f"train.method {method}: needs annotated generated images, which only the embedded "
                          "world's generators give (their true masks, at generator.truncation_psi = 1); "
                          f"this generator has none")
    batch = source.sample(n, generator=torch.Generator().manual_seed(seed))
    return Annotated(batch.features, batch.images, batch.true_masks)


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 (how a generated set is kept in memory)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def images_from_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1
