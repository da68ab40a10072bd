"""Segmentation metrics from a confusion matrix (rows = true class, columns = predicted class).

Pure torch: no Ray or MLflow here, so it is usable in any worker or test.
"""

from __future__ import annotations

from typing import Sequence

import torch

ABSENT_MODES = ("zero", "ignore")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """[C, C] int64 counts; pixels whose target is ``ignore_index`` are skipped."""
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    C = num_classes
    t = target.reshape(-1).long().cpu()
    p = pred.reshape(-1).long().cpu()
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    # A bad label would silently land in another cell of the flattened bincount.
    bad_t = t[(t < 0) | (t >= C)]
    if bad_t.numel():
        raise ValueError(f"target has labels {sorted(set(bad_t.tolist()))[:10]} outside [0, {C}) "
                         f"(num_classes={C}, ignore_index={ignore_index})")
    bad_p = p[(p < 0) | (p >= C)]
    if bad_p.numel():
        raise ValueError(f"pred has labels {sorted(set(bad_p.tolist()))[:10]} outside [0, {C})")
    return torch.bincount(C * t + p, minlength=C * C).reshape(C, C)


class ConfusionMeter:
    """Accumulates confusion matrices over batches (on CPU, int64 so large datasets do not overflow)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    @property
    def matrix(self) -> torch.Tensor:
        return self._cm.clone()


def _check_absent(absent: str) -> None:
    if absent not in ABSENT_MODES:
        raise ValueError(f"absent must be one of {ABSENT_MODES}, got {absent!r}")


def iou_per_class(cm: torch.Tensor, absent: str = "zero") -> torch.Tensor:
    """tp / (tp + fp + fn) per class. A class absent from both target and prediction gets 0
    ("zero", as the LAGM reference code) or NaN ("ignore", dropped from the means)."""
    _check_absent(absent)
    cm = torch.as_tensor(cm).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1) - tp
    fill = 0.0 if absent == "zero" else float("nan")
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, fill))


def _nanmean(x: torch.Tensor) -> float:
    return float(x.nanmean()) if x.numel() else float("nan")


def miou(cm: torch.Tensor, absent: str = "zero") -> float:
    return _nanmean(iou_per_class(cm, absent))


def fg_miou(cm: torch.Tensor, absent: str = "zero") -> float:
    """Mean IoU over the foreground classes 1.. (class 0 is background)."""
    return _nanmean(iou_per_class(cm, absent)[1:])


def pixel_accuracy(cm: torch.Tensor) -> float:
    cm = torch.as_tensor(cm).double()
    total = cm.sum()
    return float(cm.diag().sum() / total) if total > 0 else float("nan")


HEADLINE_METRICS = ("miou", "fg_miou", "pixel_acc")  # what summarize() gives besides iou/<class>


def summarize(cm: torch.Tensor, class_names: Sequence[str], absent: str = "zero",
              prefix: str = "") -> dict[str, float]:
    ious = iou_per_class(cm, absent)
    if len(class_names) != len(ious):
        raise ValueError(f"{len(class_names)} class names for a {len(ious)}-class confusion matrix")
    out = {f"{prefix}miou": miou(cm, absent), f"{prefix}fg_miou": fg_miou(cm, absent),
           f"{prefix}pixel_acc": pixel_accuracy(cm)}
    out.update({f"{prefix}iou/{name}": float(v) for name, v in zip(class_names, ious)})
    return out


def drop_per_class(metrics: dict[str, float]) -> dict[str, float]:
    """The headline metrics only: without the per-class ``.../iou/<class>`` entries of :func:`summarize`."""
    return {k: v for k, v in metrics.items() if "/iou/" not in k}
