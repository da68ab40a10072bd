"""Shape checks at the entry of the networks' forward: a wrong input raises ValueError naming the network
and the argument (and the expected and actual shapes); a right input passes. Tiny widths: fast."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lagm_ray.models.annotator import FPNAnnotator
from lagm_ray.models.generator import Generator
from lagm_ray.models.segmentors import build_segmentor, resnet
from lagm_ray.models.shapes import assert_shape

Z, W = 8, 16


@pytest.fixture(scope="module")
def G() -> Generator:
    torch.manual_seed(0)
    return Generator(z_dim=Z, c_dim=0, w_dim=W, img_resolution=8, mapping_kwargs=dict(num_layers=1),
                     channel_base=64, channel_max=8).eval()


@pytest.fixture(scope="module")
def G_cond() -> Generator:
    torch.manual_seed(0)
    return Generator(z_dim=Z, c_dim=3, w_dim=W, img_resolution=8, mapping_kwargs=dict(num_layers=1),
                     channel_base=64, channel_max=8).eval()


def raises(net: str, arg: str, got: str | None = None):
    """ValueError whose message starts with "<net>: <arg> " (and shows the actual shape ``got``)."""
    pattern = rf"^{re.escape(net)}: {re.escape(arg)} must be "
    if got is not None:
        pattern += rf".*got {re.escape(got)}$"
    return pytest.raises(ValueError, match=pattern)


# ------------------------------------------------------------------------------------- helper


def test_assert_shape_message_names_network_argument_expected_and_actual():
    x = torch.zeros(4, 32, 16, 16)
    with pytest.raises(ValueError) as e:
        assert_shape(x, ["N", 64, 16, 16], "FPNAnnotator", "features[2]")
    assert str(e.value) == "FPNAnnotator: features[2] must be [N, 64, 16, 16], got [4, 32, 16, 16]"
    with pytest.raises(ValueError, match=r"^Net: x must be a tensor \[N, 3\], got list$"):
        assert_shape([1, 2, 3], ["N", 3], "Net", "x")
    assert_shape(x, ["N", 32, "H", "W"], "Net", "x")  # str entries accept any size


# ---------------------------------------------------------------------------------- generator


def test_generator_accepts_right_inputs(G, G_cond):
    z = torch.randn(2, Z)
    assert G(z, None, noise_mode="const").shape == (2, 3, 8, 8)
    assert G(z, torch.zeros(2, 0), noise_mode="const").shape == (2, 3, 8, 8)  # NVlabs' c for c_dim = 0
    assert G_cond(z, torch.randn(2, 3), noise_mode="const").shape == (2, 3, 8, 8)
    assert G.mapping(z, None).shape == (2, G.num_ws, W)
    assert G.synthesis(torch.randn(2, G.num_ws, W), noise_mode="const").shape == (2, 3, 8, 8)


def test_generator_rejects_wrong_latents(G, G_cond):
    with raises("Generator", "z", "[2, 9]"):
        G(torch.randn(2, Z + 1))
    with raises("Generator", "z", "[8]"):
        G(torch.randn(Z))  # one latent without its batch dimension
    with raises("Generator", "z", "NoneType"):
        G(None)
    with raises("Generator", "c", "[2, 2]"):
        G(torch.randn(2, Z), torch.randn(2, 2))  # a label for an unconditional generator
    with raises("Generator", "c", "NoneType"):
        G_cond(torch.randn(2, Z), None)
    with raises("Generator", "c", "[3, 3]"):
        G_cond(torch.randn(2, Z), torch.randn(3, 3))  # batch disagrees with z's


def test_mapping_and_synthesis_reject_wrong_inputs(G):
    with raises("MappingNetwork", "z", "[2, 8, 1]"):
        G.mapping(torch.randn(2, Z, 1), None)
    with raises("SynthesisNetwork", "ws", f"[2, {G.num_ws - 1}, {W}]"):
        G.synthesis(torch.randn(2, G.num_ws - 1, W))
    with raises("SynthesisNetwork", "ws", f"[2, {W}]"):
        G.synthesis(torch.randn(2, W))  # w, not ws
    with raises("SynthesisNetwork", "ws", f"[2, {G.num_ws}, {W + 1}]"):
        G.synthesis.run_blocks(torch.randn(2, G.num_ws, W + 1))


# ---------------------------------------------------------------------------------- annotator


@pytest.fixture(scope="module")
def A() -> FPNAnnotator:
    torch.manual_seed(0)
    return FPNAnnotator([8, 6, 4], num_classes=3, width=4).eval()


def fpn_features(n: int = 2, channels=(8, 6, 4), sizes=(4, 8, 16)) -> list[torch.Tensor]:
    return [torch.randn(n, c, s, s) for c, s in zip(channels, sizes)]


def test_annotator_accepts_right_features(A):
    assert A(fpn_features()).shape == (2, 3, 16, 16)
    assert A(tuple(fpn_features(sizes=(4, 4, 8)))).shape == (2, 3, 8, 8)  # equal sizes are fine


def test_annotator_rejects_wrong_features(A):
    f = fpn_features()
    with raises("FPNAnnotator", "features", "2"):
        A(f[:2])  # wrong number of feature maps
    with raises("FPNAnnotator", "features", "a tensor [2, 8, 4, 4]"):
        A(f[0])
    with raises("FPNAnnotator", "features[2]", "[2, 5, 16, 16]"):
        A([f[0], f[1], torch.randn(2, 5, 16, 16)])  # wrong channels
    with raises("FPNAnnotator", "features[0]", "[8, 4, 4]"):
        A([f[0][0], f[1], f[2]])  # wrong rank
    with raises("FPNAnnotator", "features[1]", "[3, 6, 8, 8]"):
        A([f[0], torch.randn(3, 6, 8, 8), f[2]])  # batch disagrees with features[0]'s
    with raises("FPNAnnotator", "features[2]", "[4, 4] after [8, 8]"):
        A([f[0], f[1], torch.randn(2, 4, 4, 4)])  # fine to coarse
    with raises("FPNAnnotator", "features[1]", "NoneType"):
        A([f[0], None, f[2]])


# --------------------------------------------------------------------------------- segmentors


@pytest.fixture(scope="module")
def segmentors() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"UNet": build_segmentor("unet", 3, width=2).eval(),
            "DeepLabV3": build_segmentor("deeplabv3_resnet18", 3, width=2, aspp_channels=4, aux_loss=True).eval(),
            "ResNet": resnet(18, num_classes=None, width=2).eval()}


def test_segmentors_accept_right_images(segmentors):
    x = torch.randn(2, 3, 16, 17)
    assert segmentors["UNet"](x).shape == (2, 3, 16, 17)
    assert build_segmentor("unet", 3, width=2, in_channels=1).eval()(x[:, :1]).shape == (2, 3, 16, 17)
    assert segmentors["DeepLabV3"](x).shape == (2, 3, 16, 17)
    assert segmentors["DeepLabV3"].forward_with_aux(x)[1].shape == (2, 3, 16, 17)
    assert segmentors["ResNet"](x).shape[:2] == (2, 16)
    assert resnet(18, num_classes=5, width=2).eval()(x).shape == (2, 5)


@pytest.mark.parametrize("net", ["UNet", "DeepLabV3", "ResNet"])
def test_segmentors_reject_wrong_images(segmentors, net):
    model = segmentors[net]
    with raises(net, "x", "[2, 1, 16, 16]"):
        model(torch.randn(2, 1, 16, 16))  # wrong channels
    with raises(net, "x", "[3, 16, 16]"):
        model(torch.randn(3, 16, 16))  # one image without its batch dimension
    with raises(net, "x", "[2, 3, 16, 16, 1]"):
        model(torch.randn(2, 3, 16, 16, 1))
    if net == "DeepLabV3":
        with raises(net, "x", "[2, 4, 16, 16]"):
            model.forward_with_aux(torch.randn(2, 4, 16, 16))
    if net == "ResNet":
        with raises(net, "x", "[2, 4, 16, 16]"):
            model.features(torch.randn(2, 4, 16, 16))


def test_unet_rejects_images_smaller_than_its_four_poolings(segmentors):
    with pytest.raises(ValueError, match=r"^UNet: x must be at least 16 x 16 .*got \[2, 3, 16, 15\]$"):
        segmentors["UNet"](torch.randn(2, 3, 16, 15))


# ------------------------------------------- the checks under functional_call and double backward


def test_checks_pass_under_functional_call_and_double_backward(G, segmentors):
    """As gradient matching and MAML use the networks: parameters swapped in by functional_call, a graph
    through the gradient (create_graph) and a second backward to the annotator."""
    S = segmentors["UNet"]
    A = FPNAnnotator(G.feature_channels(), num_classes=3, width=4).eval()
    names = [n for n, _ in S.named_parameters()]
    theta = [p.detach().clone().requires_grad_(True) for _, p in S.named_parameters()]
    with torch.no_grad():
        images, features = G(torch.randn(2, Z), None, noise_mode="const", return_features=True)
    targets = functional_call(A, dict(A.named_parameters()), (features,)).softmax(1)
    logits = functional_call(S, dict(zip(names, theta)), (F.interpolate(images, size=16),))
    loss = -(F.interpolate(targets, size=16) * logits.log_softmax(1)).sum(1).mean()
    grads = torch.autograd.grad(loss, theta, create_graph=True)
    sum(g.square().sum() for g in grads).backward()
    assert all(p.grad is not None for p in A.parameters() if p.requires_grad)
    with raises("UNet", "x", "[2, 1, 8, 8]"):
        functional_call(S, dict(zip(names, theta)), (torch.randn(2, 1, 8, 8),))
