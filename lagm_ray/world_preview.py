"""A picture of the embedded world: renders and their masks, and the toy generator's samples for
the same scenes with their true masks, so one can see how faithfully G imitates the renderer."""

from __future__ import annotations

import torch

from .data.toyworld import get_category, render
from .synthetic import SyntheticSource, embedded_generator_path, latent_to_params
from .viz import colorize, labelled_grid, to_uint8_image


def world_grid(category: str, n: int = 8, resolution: int = 64, generated: bool = True, seed: int = 0,
               generator: str | None = None):
    """``generator``: a toy generator checkpoint of this category (default: the shipped one)."""
    cat = get_category(category)
    C = len(cat.class_names)
    columns: dict[str, list] = {"render": [], "render mask": []}
    z = torch.randn(n, 64, generator=torch.Generator().manual_seed(seed))
    source = None
    spec = generator or (f"embedded:{category}" if embedded_generator_path(category).exists() else None)
    if generated and spec:
        source = SyntheticSource.from_spec(spec)
        z = source.latents(n, torch.Generator().manual_seed(seed))
        resolution = source.resolution
        columns.update({"generated": [], "true mask": []})
    images, masks = render(category, latent_to_params(z, cat.num_params), resolution)
    batch = source.sample(n, z=z) if source is not None else None
    for i in range(n):
        columns["render"].append(to_uint8_image(images[i]))
        columns["render mask"].append(colorize(masks[i], C))
        if batch is not None:
            columns["generated"].append(to_uint8_image(batch.images[i]))
            columns["true mask"].append(colorize(batch.true_masks[i], C))
    return labelled_grid(columns, cat.class_names, scale=max(1, 128 // resolution))
