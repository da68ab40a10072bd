import math

import pytest
import torch
import torch.nn.functional as F

from lagm_ray.models.generator import (
    Generator,
    conv2d_resample,
    setup_filter,
    upfirdn2d,
    upsample2d,
)


def tiny(res=32, **kw):
    torch.manual_seed(0)
    return Generator(z_dim=16, c_dim=0, w_dim=32, img_resolution=res, mapping_kwargs=dict(num_layers=2),
                     channel_base=256, channel_max=32, **kw)


def test_block_shapes_and_features():
    G = tiny(32)
    assert G.block_resolutions == [4, 8, 16, 32]
    assert G.num_ws == 2 * int(math.log2(32)) - 2
    img, feats = G(torch.randn(3, 16), None, return_features=True, noise_mode="const")
    assert img.shape == (3, 3, 32, 32)
    assert [tuple(f.shape) for f in feats] == [(3, c, r, r) for c, r in zip(G.feature_channels(), [4, 8, 16, 32])]
    assert G.feature_channels() == [32, 32, 16, 8]  # min(channel_base // res, channel_max)


def test_synthesis_can_stop_at_an_inner_block():
    G = tiny(32)
    z = torch.randn(2, 16)
    feats, images = G.synthesis.run_blocks(G.mapping(z, None), noise_mode="const")
    img16, feats16 = G(z, None, return_features=True, noise_mode="const", resolution=16)
    assert torch.equal(img16, images[2]) and img16.shape == (2, 3, 16, 16)  # block 16's running skip image
    assert len(feats16) == 3 and all(torch.equal(a, b) for a, b in zip(feats16, feats))
    with pytest.raises(ValueError, match=r"resolution 12 is not a synthesis block's; blocks: \[4, 8, 16, 32\]"):
        G(z, None, resolution=12)


def test_nvlabs_state_dict_names():
    keys = set(tiny(16).state_dict())
    expected = {
        "mapping.fc0.weight", "mapping.fc0.bias", "mapping.fc1.weight", "mapping.w_avg",
        "synthesis.b4.const", "synthesis.b4.resample_filter",
        "synthesis.b4.conv1.weight", "synthesis.b4.conv1.bias", "synthesis.b4.conv1.noise_strength",
        "synthesis.b4.conv1.noise_const", "synthesis.b4.conv1.resample_filter",
        "synthesis.b4.conv1.affine.weight", "synthesis.b4.conv1.affine.bias",
        "synthesis.b4.torgb.weight", "synthesis.b4.torgb.bias", "synthesis.b4.torgb.affine.weight",
        "synthesis.b8.conv0.weight", "synthesis.b8.conv0.affine.weight", "synthesis.b8.conv0.noise_const",
        "synthesis.b16.conv1.weight", "synthesis.b16.torgb.affine.bias",
    }
    assert expected <= keys
    assert not any(k.startswith("synthesis.b4.conv0") for k in keys)  # the 4x4 block starts from const
    sd = tiny(16).state_dict()
    assert sd["synthesis.b8.resample_filter"].shape == (4, 4)
    assert torch.allclose(sd["synthesis.b8.resample_filter"].sum(), torch.tensor(1.0))
    assert sd["synthesis.b16.conv0.noise_const"].shape == (16, 16)
    # same names load into a fresh model strictly
    tiny(16).load_state_dict(sd, strict=True)


def test_truncation_psi_zero_gives_the_average_image():
    G = tiny(16).eval()
    G.mapping.w_avg.normal_()
    img = G(torch.randn(4, 16), None, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(img, img[:1].expand_as(img), atol=1e-5)
    cut = G(torch.randn(4, 16), None, truncation_psi=0.0, truncation_cutoff=2, noise_mode="const")
    assert not torch.allclose(cut, cut[:1].expand_as(cut), atol=1e-5)  # later ws keep their z


def test_noise_modes():
    G = tiny(16).eval()
    for layer in (G.synthesis.b8.conv0, G.synthesis.b8.conv1):
        layer.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 16)
    c1, c2 = G(z, noise_mode="const"), G(z, noise_mode="const")
    assert torch.equal(c1, c2)
    assert not torch.allclose(G(z, noise_mode="random"), c1)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="loud")


def test_w_avg_tracks_only_in_training():
    G = tiny(16)
    G.eval()
    G(torch.randn(4, 16))
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    G.train()
    G(torch.randn(4, 16))
    assert torch.count_nonzero(G.mapping.w_avg) > 0


def test_upsample2d_keeps_a_constant_and_doubles_size():
    f = setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 2, 6, 6)
    y = upsample2d(x, f)
    assert y.shape == (1, 2, 12, 12)
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.ones_like(y[..., 2:-2, 2:-2]))
    # upfirdn2d with a delta filter and no resampling is the identity
    delta = torch.zeros(3, 3)
    delta[1, 1] = 1
    x = torch.randn(1, 1, 5, 5)
    assert torch.allclose(upfirdn2d(x, delta, padding=(1, 1, 1, 1)), x)


def test_upsampling_conv_equals_upsample_then_conv_on_smooth_input():
    """The transposed-conv fast path equals 'zero-insert, FIR filter, conv' (NVlabs' definition)."""
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 6, 6)
    w = torch.randn(3, 2, 3, 3)
    fast = conv2d_resample(x, w, f, up=2, padding=1, flip_weight=False)
    # reference: upsample by zero insertion + filter (gain 4), then a true convolution (flipped kernel)
    up = upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    ref = F.conv2d(up, w.flip([2, 3]), padding=1)
    assert fast.shape == ref.shape == (1, 3, 12, 12)
    assert torch.allclose(fast[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-4)
