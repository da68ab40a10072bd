"""Gradient matching: the distance on a hand-computed example, its gradient with respect to the
annotator against finite differences, and the Head-only graph staying out of the backbone."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lagm_ray import gm


def test_distance_hand_computed():
    # Linear weight gradients, one row per output node.
    # row 0: (1,0) vs (1,0): cos 1 -> 0.  row 1: (0,1) vs (1,1): cos 1/sqrt2 -> 1 - 0.70711 = 0.29289
    g_syn = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g_real = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    d_row1 = 1 - 1 / math.sqrt(2)
    assert gm.tensor_distance(g_syn, g_real, "mean").item() == pytest.approx(d_row1 / 2, abs=1e-6)
    assert gm.tensor_distance(g_syn, g_real, "sum").item() == pytest.approx(d_row1, abs=1e-6)
    bias_syn, bias_real = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])
    # the 1-D tensor adds 0 but counts in the divisor (reference code): (d/2 + 0) / 2
    d = gm.matching_distance([g_syn, bias_syn], [g_real, bias_real])
    assert d.item() == pytest.approx(d_row1 / 4, abs=1e-6)
    d = gm.matching_distance([g_syn, bias_syn], [g_real, bias_real], count_1d_tensors=False)
    assert d.item() == pytest.approx(d_row1 / 2, abs=1e-6)


def test_conv_weights_are_matched_per_output_channel():
    # (out=2, in=1, 1, 2): channel 0 identical, channel 1 opposite -> (0 + 2) / 2
    a = torch.tensor([[[[1.0, 2.0]]], [[[1.0, 1.0]]]])
    b = torch.tensor([[[[2.0, 4.0]]], [[[-1.0, -1.0]]]])
    assert gm.tensor_distance(a, b).item() == pytest.approx(1.0, abs=1e-6)


def test_soft_cross_entropy_matches_hard_for_one_hot():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    one_hot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert gm.soft_cross_entropy(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)


class TinySeg(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
        self.classifier = nn.Conv2d(4, c, 1)

    def forward(self, x):
        return self.classifier(self.backbone(x))


def test_matching_gradient_against_finite_differences():
    torch.manual_seed(0)
    dt = torch.float64
    S = TinySeg().to(dt)
    annot = nn.Conv2d(5, 3, 1).to(dt)  # a tiny "annotator" over 5-channel features
    feats = torch.randn(2, 5, 4, 4, dtype=dt)
    syn_x = torch.randn(2, 3, 4, 4, dtype=dt)
    real_x = torch.randn(2, 3, 4, 4, dtype=dt)
    real_y = torch.randint(0, 3, (2, 4, 4))
    params = list(S.parameters())  # match everything, weights and biases

    def loss_of_annotator():
        g_real = gm.real_gradient(S, params, real_x, real_y)
        g_syn, _ = gm.synthetic_gradient(S, params, syn_x, annot(feats))
        return gm.matching_distance(g_syn, g_real)

    loss = loss_of_annotator()
    analytic = torch.autograd.grad(loss, [annot.weight])[0]
    numeric = torch.zeros_like(annot.weight)
    eps = 1e-6
    flat = annot.weight.data.view(-1)  # .data: perturb in place without autograd noticing
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        up = loss_of_annotator().item()
        flat[i] = old - eps
        down = loss_of_annotator().item()
        flat[i] = old
        numeric.view(-1)[i] = (up - down) / (2 * eps)
    assert analytic.abs().max() > 1e-6  # the check is not vacuous
    torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-7)


def _leaf_params_reached(t: torch.Tensor) -> set[int]:
    """ids of the leaf tensors whose AccumulateGrad nodes the graph of ``t`` reaches."""
    seen, found, stack = set(), set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            found.add(id(fn.variable))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return found


def test_head_only_builds_no_graph_in_the_backbone():
    S = TinySeg()
    annot = nn.Conv2d(5, 3, 1)
    head = list(S.classifier.parameters())
    backbone_out = {}
    S.backbone.register_forward_hook(lambda m, i, o: backbone_out.__setitem__("requires_grad", o.requires_grad))
    with gm.only_these_require_grad(S, head):
        g_real = gm.real_gradient(S, head, torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)))
        assert backbone_out["requires_grad"] is False
        g_syn, _ = gm.synthetic_gradient(S, head, torch.randn(2, 3, 4, 4), annot(torch.randn(2, 5, 4, 4)))
        assert backbone_out["requires_grad"] is False
        loss = gm.matching_distance(g_syn, g_real)
    reached = _leaf_params_reached(loss)
    assert {id(p) for p in annot.parameters()} <= reached
    assert not ({id(p) for p in S.backbone.parameters()} & reached)
    # requires_grad flags are restored afterwards
    assert all(p.requires_grad for p in S.parameters())


def test_class_weights_hand_counted():
    """3 of 4 labelled pixels are class 0, 1 is class 1, class 2 never appears, one pixel is ignored.
    power 1: w = 1/freq = (4/3, 4) and 1 for the absent class; scaled so a labelled pixel weighs 1 on average."""
    masks = torch.tensor([[[0, 0], [0, 1]], [[255, 255], [255, 255]]])
    w = gm.class_weights(masks, 3, power=1.0)
    expected = torch.tensor([4 / 3, 4.0, 1.0]) / 2.0  # (w * freq).sum() = 0.75 * 4/3 + 0.25 * 4 = 2
    assert torch.allclose(w, expected)
    assert torch.allclose(gm.class_weights(masks, 3, power=0.5), torch.tensor([(4 / 3) ** 0.5, 2.0, 1.0])
                          / (0.75 * (4 / 3) ** 0.5 + 0.25 * 2.0))
    assert gm.class_weights(masks, 3, power=0.0) is None  # plain cross-entropy


def test_class_weighted_losses_hand_computed():
    """Soft CE weighs each class's target mass by w_c; the labelled side is torch's weighted CE."""
    logits = torch.zeros(1, 2, 1, 2)  # uniform prediction: -log softmax = log 2 everywhere
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # pixel 0 is class 0, pixel 1 class 1
    w = torch.tensor([3.0, 1.0])
    assert math.isclose(gm.soft_cross_entropy(logits, probs, w).item(), (3 + 1) / 2 * math.log(2), rel_tol=1e-6)
    # the hard target of the same labels, through synthetic_loss, is torch's weighted mean (divides by sum w)
    annot = torch.log(probs.clamp_min(1e-9))
    hard = gm.synthetic_loss(logits, annot, "hard", w)
    assert math.isclose(hard.item(), math.log(2), rel_tol=1e-6)
    # the labelled-side gradient is the gradient of the weighted CE
    net = nn.Conv2d(3, 2, 1)
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4))
    (g_w,) = gm.real_gradient(net, [net.weight], x, y, w)
    ce = F.cross_entropy(net(x), y, reduction="none")
    wy = w[y]
    (expected,) = torch.autograd.grad((wy * ce).sum() / wy.sum(), [net.weight])
    assert torch.allclose(g_w, expected, atol=1e-6)
    (g_plain,) = gm.real_gradient(net, [net.weight], x, y)
    assert not torch.allclose(g_w, g_plain)
