"""How faithfully a toy generator imitates the embedded world, without any segmentor.

``part_colour_agreement``: for each generated image, take the render's mean colour of every part of
the true mask; a generated pixel agrees when its colour is nearer to the mean colour of its own part
than to that of any other part present in the image. A perfect imitation scores what the render itself
scores (texture and lighting keep that below 1); a generator that only learned blurred colours scores
far lower, because small parts (eyes, mouth, nose) take the colour of their surroundings.

``l1_by_part``: the mean L1 between generated image and render over the pixels of each part, which
shows *which* parts a generator blurs away (the pixel-averaged agreement is dominated by background,
skin and hair).
"""

from __future__ import annotations

import torch

from .data.toyworld import render
from .synthetic import SyntheticSource, latent_to_params


def _agreement(images: torch.Tensor, ref_images: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image fraction of pixels of ``images`` nearest to their own part's mean colour in ``ref_images``."""
    out = []
    for img, ref, m in zip(images, ref_images, masks):
        present = [c for c in range(num_classes) if (m == c).any()]
        means = torch.stack([ref[:, m == c].mean(1) for c in present])  # [P, 3]
        d = ((img.reshape(3, -1).T[:, None, :] - means[None]) ** 2).sum(-1)  # [HW, P]
        nearest = torch.tensor(present)[d.argmin(1)]
        out.append((nearest == m.reshape(-1)).float().mean())
    return torch.stack(out)


def generated_and_rendered(source: SyntheticSource, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``n`` generated images, the renders of their latents' scenes and the true masks, on the CPU."""
    batch = source.sample(n, seed=seed)
    renders, masks = render(source.category, latent_to_params(batch.z.cpu(), source.meta["num_params"]),
                            source.resolution)
    return batch.images.cpu(), renders, masks


@torch.no_grad()
def part_colour_agreement(source: SyntheticSource, n: int = 32, seed: int = 4321) -> dict[str, float]:
    """Agreement of generated images and (as the ceiling) of the renders themselves, plus L1 to the render."""
    gen, renders, masks = generated_and_rendered(source, n, seed)
    C = len(source.class_names)
    return {"agreement_generated": _agreement(gen, renders, masks, C).mean().item(),
            "agreement_render": _agreement(renders, renders, masks, C).mean().item(),
            "l1_to_render": (gen - renders).abs().mean().item()}


@torch.no_grad()
def l1_by_part(source: SyntheticSource, n: int = 64, seed: int = 4321) -> dict[str, float]:
    """Mean L1 (images in [-1, 1], averaged over RGB) between G(z) and the render of z's scene, over the
    pixels of each part of the true mask; parts absent from all ``n`` samples are left out."""
    gen, renders, masks = generated_and_rendered(source, n, seed)
    err = (gen - renders).abs().mean(1)
    return {name: err[masks == c].mean().item() for c, name in enumerate(source.class_names) if (masks == c).any()}
