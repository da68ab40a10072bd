"""GANORCON: MoCo queue and momentum update, InfoNCE by hand, each stage's loss decreasing, the evaluated
network per setting, resume, the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import KeepCheckpointAt, lagm_cli

from lagm_ray.errors import ConfigError
from lagm_ray.methods import build_trainer
from lagm_ray.methods.ganorcon import (
    GANORCONTrainer,
    HypercolumnSegmentor,
    MoCo,
    info_nce,
    moco_v2_augment,
    segmentation_augment,
)
from lagm_ray.models.segmentors import UNet, resnet

SMALL = {"train.method": "ganorcon", "train.steps": 9, "ganorcon.pretrain_steps": 3, "ganorcon.projector_steps": 3,
         "ganorcon.encoder_depth": 18, "ganorcon.encoder_width": 4, "ganorcon.moco_batch_size": 4,
         "ganorcon.moco_queue": 8, "ganorcon.moco_dim": 8, "ganorcon.conv_channels": [8, 8, 8],
         "ganorcon.conv_out": 8, "ganorcon.mlp_hidden": [16, 8], "ganorcon.distill_batch_size": 4,
         "train.segmentor_optim.name": "adam"}


def tiny_moco(queue=5, dim=3, m=0.9):
    torch.manual_seed(0)
    return MoCo(resnet(18, num_classes=None, width=2), dim, queue, m, 0.2)


def test_queue_is_a_ring_of_the_newest_keys():
    moco = tiny_moco(queue=5)
    keys = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    moco.enqueue(keys[:2])
    assert torch.equal(moco.queue[:2], keys[:2]) and int(moco.queue_ptr) == 2
    moco.enqueue(keys[2:6])  # 4 keys from slot 2: slots 2, 3, 4, then wraps to 0
    assert moco.queue.shape == (5, 3) and int(moco.queue_ptr) == 1
    assert torch.equal(moco.queue, torch.stack([keys[5], keys[1], keys[2], keys[3], keys[4]]))
    moco.enqueue(keys[6:7])
    assert torch.equal(moco.queue[1], keys[6]) and int(moco.queue_ptr) == 2


def test_momentum_update_by_hand():
    moco = tiny_moco(m=0.9)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.fill_(1.0)
        for p in moco.head_q.parameters():
            p.fill_(-2.0)
        for p in moco.encoder_k.parameters():
            p.fill_(3.0)
        for p in moco.head_k.parameters():
            p.fill_(0.5)
    moco.momentum_update()
    assert all(torch.allclose(p, torch.full_like(p, 0.9 * 3.0 + 0.1 * 1.0)) for p in moco.encoder_k.parameters())
    assert all(torch.allclose(p, torch.full_like(p, 0.9 * 0.5 + 0.1 * -2.0)) for p in moco.head_k.parameters())
    assert not any(p.requires_grad for p in moco.encoder_k.parameters())


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    T = 0.5
    # sample 1: positive 0.6, negatives 1, -1, 0; sample 2: positive 1, negatives 0, 0, -1 (all / T)
    l1 = -math.log(math.exp(0.6 / T) / (math.exp(0.6 / T) + math.exp(1 / T) + math.exp(-1 / T) + 1))
    l2 = -math.log(math.exp(1 / T) / (math.exp(1 / T) + 1 + 1 + math.exp(-1 / T)))
    assert info_nce(q, k, queue, T).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_augmentations_keep_range_shape_and_mask_alignment():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    y = moco_v2_augment(x, rng)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)
    # a mask drawn from the image itself stays aligned with it under the shared crop and flip
    img = torch.zeros(2, 3, 16, 16)
    img[:, :, :, :5] = 1.0
    mask = (img[:, 0] > 0).long()
    a, m = segmentation_augment(img, mask, rng, 0.5)
    assert set(m.unique().tolist()) <= {0, 1} and a.shape == img.shape


def test_moco_steps_lower_infonce_on_a_fixed_batch(tiny_config):
    """Gradient steps on the MoCo objective lower it (fixed views and negatives). The per-step loss of the
    stream itself first rises towards log(K + 1) while the queue fills with real keys (MoCo's early plateau),
    so it is no test of learning at this budget."""
    tr = build_trainer(tiny_config(**SMALL))
    rng = torch.Generator().manual_seed(0)
    x = tr.unlabelled_batch(4)
    x_q, x_k = moco_v2_augment(x, rng), moco_v2_augment(x, rng)
    m = tr.moco
    m.train()
    with torch.no_grad():
        k = m.embed(m.encoder_k, m.head_k, x_k)
    negatives = F.normalize(torch.randn(8, 8, generator=rng), dim=1)

    def loss():
        return info_nce(m.embed(m.encoder_q, m.head_q, x_q), k, negatives, 0.2)

    first = loss().item()
    for _ in range(5):
        tr.opt_moco.zero_grad()
        loss().backward()
        tr.opt_moco.step()
    assert loss().item() < first
    # and the trainer's MoCo stage runs, logs its loss and fills the queue
    queue0 = m.queue.clone()
    metrics = tr.train_step()
    assert "loss/moco" in metrics and not torch.equal(queue0, m.queue) and int(m.queue_ptr) == 4


def test_projector_and_distillation_losses_decrease(tiny_config):
    steps = {"ganorcon.pretrain_steps": 2, "ganorcon.projector_steps": 14, "train.steps": 22,
             "ganorcon.projector_augment": False, "ganorcon.projector_lr": 0.01}
    tr = build_trainer(tiny_config(**{**SMALL, **steps, "data.num_labelled": 2}))
    assert isinstance(tr, GANORCONTrainer) and isinstance(tr.segmentor, UNet)  # distillation on: the student
    logs = [tr.train_step() for _ in range(22)]
    proj = [m["loss/projector"] for m in logs[2:16]]
    distill = [m["loss/distill"] for m in logs[16:]]
    assert sum(proj[-3:]) / 3 < 0.8 * sum(proj[:3]) / 3
    assert sum(distill[-2:]) / 2 < sum(distill[:2]) / 2


def test_without_distillation_the_encoder_and_projector_are_evaluated(tiny_config):
    tr = build_trainer(tiny_config(**{**SMALL, "ganorcon.distill": False, "ganorcon.projector": "mlp"}))
    assert isinstance(tr.segmentor, HypercolumnSegmentor) and tr.opt_s is tr.opt_proj
    assert tr.segmentor.encoder is tr.moco.encoder_q
    assert tr.matched  # Trainer.__init__'s block selection ran on the configured U-Net before build()
    enc0 = [p.detach().clone() for p in tr.moco.encoder_q.parameters()]
    for _ in range(3):
        tr.train_step()
    assert not all(torch.equal(a, p) for a, p in zip(enc0, tr.moco.encoder_q.parameters()))  # MoCo trained it
    for _ in range(3):
        tr.train_step()
    # projector stage: the encoder (parameters and BN statistics) is frozen
    bn = [b.clone() for b in tr.moco.encoder_q.buffers()]
    w = [p.detach().clone() for p in tr.moco.encoder_q.parameters()]
    assert tr.stage(tr.step + 1) == "projector" and tr.stage(9) == "projector"
    tr.train_step()
    assert all(torch.equal(a, b) for a, b in zip(bn, tr.moco.encoder_q.buffers()))
    assert all(torch.equal(a, p) for a, p in zip(w, tr.moco.encoder_q.parameters()))
    logits = tr.segmentor(tr.splits.val_images[:3])
    assert logits.shape == (3, tr.num_classes, 16, 16)
    metrics, _ = tr.evaluate(pictures=False)
    assert 0 <= metrics["test/fg_miou"] <= 1



@pytest.mark.parametrize("distill", [True, False])
def test_resume_equals_uninterrupted(tiny_config, tmp_path, distill):
    cfg = {**SMALL, "ganorcon.distill": distill, "train.checkpoint_interval": 2, "train.eval_interval": 4}
    full = build_trainer(tiny_config(**cfg))
    full.fit([KeepCheckpointAt(4, tmp_path)])  # step 4: the projector stage
    resumed = build_trainer(tiny_config(**cfg))
    resumed.load(tmp_path / "killed.pt")
    assert resumed.step == 4
    resumed.fit()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert same(full.segmentor, resumed.segmentor) and same(full.moco, resumed.moco)
    assert same(full.teacher, resumed.teacher)
    assert full.history == resumed.history


def test_config_errors(tiny_config):
    with pytest.raises(ConfigError, match="ganorcon.pretrain_steps"):
        tiny_config(**{**SMALL, "ganorcon.pretrain_steps": 9})
    with pytest.raises(ConfigError, match="ganorcon.moco_queue"):
        tiny_config(**{**SMALL, "ganorcon.moco_queue": 2})
    with pytest.raises(ConfigError, match="ganorcon.conv_channels: 7 levels"):
        build_trainer(tiny_config(**{**SMALL, "ganorcon.conv_channels": [4] * 7}))


@pytest.mark.slow
def test_cli_train(tiny_config, tmp_path):
    cfg = tiny_config(**SMALL)
    (tmp_path / "tiny.yaml").write_text(cfg.to_yaml())
    out = lagm_cli(["train", "--config", str(tmp_path / "tiny.yaml"),
                    "--set", "ganorcon.projector=mlp"])
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((Path(cfg.run.output_dir) / "tiny" / "result.json").read_text())
    assert 0 <= result["test/fg_miou"] <= 1
