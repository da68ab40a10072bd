"""Confusion matrix and IoU metrics against a small hand-counted example."""

import math

import pytest
import torch

from lagm_ray.metrics import (
    ConfusionMeter,
    confusion_matrix,
    fg_miou,
    iou_per_class,
    miou,
    pixel_accuracy,
    summarize,
)

# 3x4 masks, 3 classes, one ignored pixel (bottom left).
TARGET = torch.tensor([[0, 0, 1, 1],
                       [0, 2, 2, 1],
                       [255, 2, 2, 0]])
PRED = torch.tensor([[0, 1, 1, 1],
                     [0, 2, 1, 1],
                     [0, 2, 0, 0]])
# (true, pred) pairs, ignoring the 255 pixel:
#   true 0: (0,0) x3, (0,1) x1          -> row 0 = [3, 1, 0]
#   true 1: (1,1) x3                    -> row 1 = [0, 3, 0]
#   true 2: (2,2) x2, (2,1) x1, (2,0) x1 -> row 2 = [1, 1, 2]
CM = [[3, 1, 0],
      [0, 3, 0],
      [1, 1, 2]]
# IoU = tp / (row + col - tp):  class 0: 3/(4+4-3) = 0.6,  class 1: 3/(3+5-3) = 0.6,  class 2: 2/(4+2-2) = 0.5
IOU = [0.6, 0.6, 0.5]


def test_confusion_matrix_hand_counted():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.long
    assert cm.tolist() == CM
    assert cm.sum().item() == 11  # 12 pixels minus the ignored one


def test_iou_miou_fg_miou_pixel_acc():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert iou_per_class(cm).tolist() == pytest.approx(IOU)
    assert miou(cm) == pytest.approx(1.7 / 3)
    assert fg_miou(cm) == pytest.approx(0.55)  # classes 1 and 2 only
    assert pixel_accuracy(cm) == pytest.approx(8 / 11)  # diagonal 3+3+2


def test_absent_class_zero_vs_ignore():
    cm = confusion_matrix(PRED, TARGET, 4)  # class 3 appears in neither mask
    zero, ign = iou_per_class(cm, "zero"), iou_per_class(cm, "ignore")
    assert zero[3].item() == 0.0 and math.isnan(ign[3].item())
    assert miou(cm, "zero") == pytest.approx(1.7 / 4)
    assert fg_miou(cm, "zero") == pytest.approx(1.1 / 3)
    assert miou(cm, "ignore") == pytest.approx(1.7 / 3)
    assert fg_miou(cm, "ignore") == pytest.approx(0.55)
    with pytest.raises(ValueError, match="absent"):
        miou(cm, "skip")


def test_class_only_predicted_is_zero_in_both_modes():
    # Predicting a class that is never true is a false positive, not an absent class.
    cm = confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 0]), 4)
    assert iou_per_class(cm, "ignore")[3].item() == 0.0


def test_ignore_index_skipped():
    target = torch.full((2, 2), 255)
    target[0, 0] = 1
    cm = confusion_matrix(torch.tensor([[1, 0], [2, 2]]), target, 3)
    assert cm.sum().item() == 1 and cm[1, 1].item() == 1
    # A custom ignore index.
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -1]), 2, ignore_index=-1)
    assert cm.tolist() == [[1, 0], [0, 0]]


def test_unknown_label_and_shape_errors():
    with pytest.raises(ValueError, match=r"target has labels \[3\]"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="pred has labels"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 3)


def test_meter_accumulates_and_resets():
    meter = ConfusionMeter(3)
    meter.update(PRED, TARGET)
    meter.update(PRED[None], TARGET[None])  # batch dimension is fine
    assert meter.matrix.tolist() == [[2 * v for v in row] for row in CM]
    meter.matrix.zero_()  # a copy: callers cannot corrupt the meter
    assert meter.matrix.sum().item() == 22
    meter.reset()
    assert meter.matrix.sum().item() == 0


def test_summarize_keys():
    cm = confusion_matrix(PRED, TARGET, 4)
    s = summarize(cm, ["bg", "head", "body", "tail"], absent="ignore", prefix="test/")
    assert set(s) == {"test/miou", "test/fg_miou", "test/pixel_acc", "test/iou/bg", "test/iou/head",
                      "test/iou/body", "test/iou/tail"}
    assert s["test/iou/body"] == pytest.approx(0.5) and math.isnan(s["test/iou/tail"])
    assert all(isinstance(v, float) for v in s.values())
    with pytest.raises(ValueError):
        summarize(cm, ["bg"])
