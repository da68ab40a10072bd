"""Gradient matching (LAGM Eq. 11-12): the segmentor's gradient on annotator-labelled synthetic
images should point where its gradient on the few real labelled images points.

Only the matched parameters (chosen by block, BN left out) take part. During the annotator phase
*only they* require grad, so the forward through unmatched lower blocks builds no graph at all and
the double backward stays inside the matched blocks: this is why Head-only matching is cheap.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def tensor_distance(g_syn: torch.Tensor, g_real: torch.Tensor, node_reduction: str = "mean") -> torch.Tensor:
    """1 - cosine between the two gradients, per output node (row), reduced over nodes.

    A conv weight (out, in, kh, kw) becomes (out, in*kh*kw): one row per output channel.
    1-D tensors (biases) have a single "node" per entry and are given distance 0, as in the
    reference code (and DC's ``distance_wb``).
    """
    if g_syn.dim() <= 1:
        return g_syn.new_zeros(())
    a = g_syn.reshape(g_syn.shape[0], -1)
    b = g_real.reshape(g_real.shape[0], -1)
    per_node = 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-6)
    return per_node.mean() if node_reduction == "mean" else per_node.sum()


def matching_distance(
    grads_syn: Sequence[torch.Tensor],
    grads_real: Sequence[torch.Tensor],
    node_reduction: str = "mean",
    count_1d_tensors: bool = True,
) -> torch.Tensor:
    """Layerwise distance averaged over matched tensors.

    ``count_1d_tensors=True`` (reference code) divides by every matched tensor, 1-D ones
    included, although they add 0; False divides only by the tensors that contribute.
    """
    if len(grads_syn) != len(grads_real) or not grads_syn:
        raise ValueError(f"need equally many gradients, got {len(grads_syn)} and {len(grads_real)}")
    total = sum(tensor_distance(s, r, node_reduction) for s, r in zip(grads_syn, grads_real))
    count = len(grads_syn) if count_1d_tensors else sum(1 for g in grads_syn if g.dim() > 1)
    return total / max(count, 1)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_c -w_c p_c log softmax(logits)_c, averaged over pixels: the loss on annotator labels
    (w_c = 1 unless ``class_weights`` are given)."""
    if class_weights is not None:
        target_probs = target_probs * class_weights.view(1, -1, *([1] * (target_probs.dim() - 2)))
    return torch.sum(-target_probs * F.log_softmax(logits, dim=1), dim=1).mean()


def class_weights(masks: torch.Tensor, num_classes: int, power: float) -> torch.Tensor | None:
    """Cross-entropy class weights (pixel frequency in ``masks``)^-power, scaled so that the expected
    weight of a labelled pixel is 1; None for power 0 (plain cross-entropy). A class absent from the
    masks gets weight 1 before scaling: there is nothing to say it is rare."""
    if power == 0:
        return None
    valid = masks[masks < num_classes]
    counts = torch.bincount(valid.flatten(), minlength=num_classes).double()
    freq = counts / counts.sum()
    w = torch.where(counts > 0, freq.clamp_min(1e-12) ** -power, torch.ones_like(freq))
    return (w / (w * freq).sum()).float()


def synthetic_loss(seg_logits: torch.Tensor, annot_logits: torch.Tensor, target: str = "soft",
                   class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Segmentor loss on a synthetic batch against the annotator's labels.

    "soft" (reference code) keeps the annotator in the graph through its softmax; "hard" uses the
    argmax, which carries no gradient to the annotator and so is only for segmentor steps.
    """
    if annot_logits.shape[-2:] != seg_logits.shape[-2:]:
        annot_logits = F.interpolate(annot_logits, size=seg_logits.shape[-2:], mode="bilinear", align_corners=False)
    if target == "hard":
        return F.cross_entropy(seg_logits, annot_logits.argmax(1), weight=class_weights)
    return soft_cross_entropy(seg_logits, F.softmax(annot_logits, dim=1), class_weights)


@contextmanager
def only_these_require_grad(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily freeze every parameter of ``model`` except ``params``."""
    keep = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def real_gradient(segmentor: nn.Module, params: Sequence[nn.Parameter], images: torch.Tensor,
                  masks: torch.Tensor, class_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The target: gradient of the cross-entropy on the labelled batch (plain, or class-weighted the
    same way as the synthetic side), no graph kept."""
    logits = segmentor(images)
    loss = F.cross_entropy(logits, masks, weight=class_weights, ignore_index=255)
    grads = torch.autograd.grad(loss, params)
    return [torch.nan_to_num(g.detach()) for g in grads]


def synthetic_gradient(segmentor: nn.Module, params: Sequence[nn.Parameter], images: torch.Tensor,
                       annot_logits: torch.Tensor, class_weights: torch.Tensor | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradient of the soft CE on the synthetic batch, with its graph (so it reaches the annotator).
    The cosine distance ignores each gradient's scale, so only the relative class weights matter."""
    loss = synthetic_loss(segmentor(images), annot_logits, "soft", class_weights)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return list(grads), loss
