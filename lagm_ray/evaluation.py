"""Evaluation as the paper does it: confusion matrices -> mIoU / FG-mIoU, plus what only the
embedded world allows (the annotator against the true masks of generated images), and pictures."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data.datasets import resize_labels
from .metrics import ConfusionMeter
from .synthetic import SyntheticSource, feature_select, to_size
from .viz import colorize, labelled_grid, to_uint8_image


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Argmax labels, in eval mode (BN running statistics), restoring the previous mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def segmentor_confusion(segmentor: nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    meter = ConfusionMeter(num_classes)
    meter.update(predict(segmentor, images), masks)
    return meter.matrix


@torch.no_grad()
def annotator_labels(annotator: nn.Module, features: Sequence[torch.Tensor]) -> torch.Tensor:
    was_training = annotator.training
    annotator.eval()
    labels = annotator(features).argmax(1)
    annotator.train(was_training)
    return labels


def annotator_confusion(annotator: nn.Module, source: SyntheticSource, n: int, seed: int, num_classes: int,
                        batch_size: int = 16, feature_index: Sequence[int] | None = None) -> torch.Tensor:
    """Annotator labels of generated images against their true masks (embedded world only).
    Uses its own seeded generator, so it never disturbs the training RNG."""
    rng = torch.Generator().manual_seed(seed)
    meter = ConfusionMeter(num_classes)
    for i in range(0, n, batch_size):
        batch = source.sample(min(batch_size, n - i), generator=rng)
        labels = annotator_labels(annotator, feature_select(batch.features, feature_index)).cpu()
        truth = batch.true_masks.cpu()
        # an annotator fed by coarser blocks only labels at a lower resolution: score at the mask's
        meter.update(resize_labels(labels, truth.shape[-2:]), truth)
    return meter.matrix


def picture_grid(annotator: nn.Module | None, segmentor: nn.Module, source: SyntheticSource | None,
                 test_images: torch.Tensor, test_masks: torch.Tensor, class_names: Sequence[str],
                 seg_size: int, n: int = 4, seed: int = 1234, feature_index: Sequence[int] | None = None):
    """Rows of generated samples (image, annotator labels, segmentor prediction, true mask) then
    rows of test images (image, -, segmentor prediction, true mask)."""
    C = len(class_names)
    cols: dict[str, list[np.ndarray]] = {"image": [], "annotator": [], "segmentor": [], "true mask": []}
    blank = np.full((seg_size, seg_size, 3), 255, np.uint8)

    def add(image, annot, pred, truth):
        cols["image"].append(to_uint8_image(image))
        cols["annotator"].append(colorize(annot, C) if annot is not None else blank)
        cols["segmentor"].append(colorize(pred, C))
        cols["true mask"].append(colorize(truth, C) if truth is not None else blank)

    if annotator is not None and source is not None:
        batch = source.sample(n, seed=seed)
        images = to_size(batch.images, seg_size).cpu()
        annot = resize_labels(annotator_labels(annotator, feature_select(batch.features, feature_index)), seg_size).cpu()
        truth = None if batch.true_masks is None else resize_labels(batch.true_masks, seg_size).cpu()
        preds = predict(segmentor, images)
        for i in range(n):
            add(images[i], annot[i], preds[i], None if truth is None else truth[i])
    preds = predict(segmentor, test_images[:n])
    for i in range(min(n, len(test_images))):
        add(test_images[i], None, preds[i], test_masks[i])
    return labelled_grid(cols, class_names, scale=max(1, 128 // seg_size))
