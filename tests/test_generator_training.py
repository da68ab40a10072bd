"""Distilling the renderer into the toy StyleGAN2: the loss by hand, and a short real training."""

import torch
from conftest import lagm_cli

from lagm_ray.generator_training import distill_loss, part_weights
from lagm_ray.synthetic import load_generator


def test_distill_loss_by_hand():
    real = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # [1, 1, 2, 2]; pooled to 1x1 it is 0.25
    full = torch.zeros(1, 1, 2, 2)  # L1 (1 + 0 + 0 + 0) / 4 = 0.25
    half = torch.ones(1, 1, 1, 1)  # L1 |1 - 0.25| = 0.75
    assert torch.isclose(distill_loss([half, full], real), torch.tensor((0.75 + 0.25) / 2))


def test_part_weights_by_hand():
    masks = torch.tensor([[[0, 0], [0, 1]]])  # shares 3/4 and 1/4
    # exponent 1: weights 4/3 and 4, divided by their mean 2: each part weighs 2 in total
    assert torch.allclose(part_weights(masks, 3, 1.0), torch.tensor([[[[2 / 3, 2 / 3], [2 / 3, 2.0]]]]))
    assert torch.equal(part_weights(masks, 3, 0.0), torch.ones(1, 1, 2, 2))  # 0: plain L1
    # the weighted loss by hand: only the part-1 pixel is wrong (by 1), with weight 2
    real, fake = torch.zeros(1, 1, 2, 2), torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])
    w = part_weights(masks, 3, 1.0)
    assert torch.isclose(distill_loss([fake], real, w), torch.tensor(2.0 / 4))
    # at half resolution the weight is pooled like the image: mean weight 1, pooled error 1/4
    assert torch.isclose(distill_loss([torch.ones(1, 1, 1, 1)], real, w), torch.tensor(1.0))


def test_train_generator_cli_writes_a_safe_checkpoint(tmp_path):
    out = tmp_path / "g.pt"
    res = lagm_cli(["train-generator", "--resolution", "16", "--steps", "3", "--batch-size", "2",
                    "--lr", "0.01", "--part-weighting", "0.5", "--out", str(out), "--no-track"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "held-out L1" in res.stdout
    G, meta = load_generator(out)  # torch.load(weights_only=True) inside
    assert meta["train_config"]["steps"] == 3 and meta["resolution"] == 16
    assert meta["train_config"]["lr"] == 0.01 and meta["train_config"]["batch_size"] == 2
    assert meta["train_config"]["part_weighting"] == 0.5
    assert G(torch.randn(1, G.z_dim), None).shape == (1, 3, 16, 16)
