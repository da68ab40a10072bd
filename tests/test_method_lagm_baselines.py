"""LAGM's Appendix C baselines: pseudo_label, inversion and K-step MAML."""

import json
from pathlib import Path

import pytest
import torch
from conftest import lagm_cli
from torch import nn

from lagm_ray.callbacks import Callback
from lagm_ray.errors import ConfigError
from lagm_ray.methods import build_trainer
from lagm_ray.methods.lagm_baselines import (
    InversionTrainer,
    MAMLTrainer,
    PseudoLabelTrainer,
    maml_meta_loss,
    project,
    reconstruction_mse,
    w_statistics,
)
from lagm_ray.trainer import LocalCheckpoints

# Adam at 1e-2 so a few steps visibly lower each loss on the tiny setting
FAST = {"train.annotator_optim.name": "adam", "train.annotator_optim.lr": 1e-2,
        "train.segmentor_optim.name": "adam", "train.segmentor_optim.lr": 1e-2}
TINY_PROJECTION = {"inversion.projection_steps": 30, "inversion.w_avg_samples": 256}


def weights(module):
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def decreased(values, n=3):
    return sum(values[-n:]) / n < sum(values[:n]) / n


def test_pseudo_label_stages_and_losses(tiny_config):
    tr = build_trainer(tiny_config(**{"train.method": "pseudo_label", "train.steps": 18, **FAST}))
    assert isinstance(tr, PseudoLabelTrainer) and tr.stage_ends == (6, 12)
    s0, a0 = weights(tr.segmentor), weights(tr.annotator)
    teacher = [tr.train_step()["loss/teacher"] for _ in range(6)]
    assert same(a0, weights(tr.annotator)) and same(s0, weights(tr.segmentor))
    t1 = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    annot = [tr.train_step()["loss/annotator"] for _ in range(6)]
    assert same(s0, weights(tr.segmentor))  # the evaluated segmentor only learns in stage (iii)
    # labelling with the generated batches' BN statistics leaves the teacher's running statistics alone
    assert all(torch.equal(v, tr.teacher.state_dict()[k]) for k, v in t1.items())
    a1 = weights(tr.annotator)
    seg = [tr.train_step()["loss/segmentor"] for _ in range(6)]
    assert same(a1, weights(tr.annotator))  # frozen in stage (iii)
    assert decreased(teacher) and decreased(annot) and decreased(seg)


def test_stage_fractions_are_checked(tiny_config):
    with pytest.raises(ConfigError, match="must sum to less than 1"):
        tiny_config(**{"pseudo_label.teacher_fraction": 0.6, "pseudo_label.annotator_fraction": 0.5})
    with pytest.raises(ConfigError, match="leave a stage of train.steps=2 without steps"):
        tiny_config(**{"train.method": "pseudo_label", "train.steps": 2})
    tiny_config(**{"train.steps": 2})  # other methods do not care about pseudo_label's stages
    with pytest.raises(ConfigError, match="maml.unroll_steps"):
        tiny_config(**{"maml.unroll_steps": 0})


# ------------------------------------------------------------------------------------------ inversion


def test_projection_lowers_reconstruction_and_is_deterministic(tiny_config):
    tr = build_trainer(tiny_config(**{"train.method": "inversion"}))
    G, targets = tr.source.G, tr.splits.train_images[:2]

    def run(seed):
        rng = torch.Generator().manual_seed(seed)
        w_avg, w_std = w_statistics(G, 256, rng)
        ws, history = project(G, targets, steps=20, lr=0.1, space="w", noise_factor=0.05, w_avg=w_avg,
                              w_std=w_std, generator=rng)
        return ws, history, w_avg

    ws, history, w_avg = run(0)
    assert ws.shape == (2, G.num_ws, G.w_dim) and torch.equal(ws[:, 0], ws[:, -1])  # w space: one w per image
    start = reconstruction_mse(G, w_avg.reshape(1, 1, -1).expand(2, G.num_ws, -1), targets)
    assert reconstruction_mse(G, ws, targets) < 0.5 * start
    again, history2, _ = run(0)
    assert torch.equal(ws, again) and history == history2
    assert not torch.equal(ws, run(1)[0])
    # one image projected alone gets the latent it gets in a batch
    rng = torch.Generator().manual_seed(0)
    w_avg, w_std = w_statistics(G, 256, rng)
    alone, _ = project(G, targets[:1], steps=5, lr=0.1, space="w+", noise_factor=0.0, w_avg=w_avg, w_std=w_std,
                       generator=rng)
    batch, _ = project(G, targets, steps=5, lr=0.1, space="w+", noise_factor=0.0, w_avg=w_avg, w_std=w_std,
                       generator=rng)
    torch.testing.assert_close(alone[0], batch[0], rtol=1e-4, atol=1e-5)


def test_inversion_trains_and_resumes_without_reprojecting(tiny_config, tmp_path):
    cfg = tiny_config(**{"train.method": "inversion", "train.steps": 10, **TINY_PROJECTION, **FAST})
    full, resumed, log = resume_pair(cfg, tmp_path)
    assert isinstance(full, InversionTrainer) and full.annotator_end == 5
    assert log[0]["projection/mse"] < log[0]["projection/mse_start"]
    assert not any(k.startswith("projection/") for m in log[1:] for k in m)  # projected once
    assert decreased([m["loss/annotator"] for m in log[:5]], 2)
    assert all("loss/segmentor" in m for m in log[5:])
    assert torch.equal(full.ws, resumed.ws)
    assert same(weights(full.segmentor), weights(resumed.segmentor))
    assert same(weights(full.annotator), weights(resumed.annotator))


class Recorder(Callback):
    def __init__(self):
        self.log: list[dict] = []

    def on_log(self, step, metrics):
        self.log.append(dict(metrics))


class Killed(Exception):
    pass


class KillAfterCheckpoint(LocalCheckpoints):
    """Writes last.pt as usual, then dies at ``step``: a run killed right after a checkpoint."""

    def __init__(self, directory, step: int):
        super().__init__(directory)
        self.kill_step = step

    def on_checkpoint(self, step, trainer):
        super().on_checkpoint(step, trainer)
        if step == self.kill_step:
            raise Killed


def resume_pair(cfg, tmp_path, kill_step: int = 3):
    """Fits an uninterrupted trainer and one killed at kill_step then resumed from its checkpoint, checks
    they logged and evaluated the same; returns both and the uninterrupted run's per-step metrics."""
    full, rec = build_trainer(cfg), Recorder()
    full.fit([rec], pictures=False)
    with pytest.raises(Killed):
        build_trainer(cfg).fit([KillAfterCheckpoint(tmp_path / "ck", kill_step)], pictures=False)
    resumed, rec2 = build_trainer(cfg), Recorder()
    resumed.load(tmp_path / "ck" / "last.pt")
    assert resumed.step == kill_step
    resumed.fit([rec2], pictures=False)
    assert full.history == resumed.history
    strip = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in rec.log]
    assert strip[kill_step:] == [{k: v for k, v in m.items() if not k.startswith("time/")} for m in rec2.log]
    return full, resumed, rec.log


# ------------------------------------------------------------------------------------------ maml


class TinySegmentor(nn.Module):
    """conv -> BN -> tanh -> conv: smooth, so finite differences see no kinks; BN checks the buffer handling."""

    def __init__(self, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, classes, 1))

    def forward(self, x):
        return self.net(x)


class TinyAnnotator(nn.Module):
    """FPN-like (lateral 1x1 convs, upsample and add, BN, 3x3 conv) but in the features' own dtype:
    FPNAnnotator casts its inputs to float32, too coarse for finite differences."""

    def __init__(self, channels: list[int], classes: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, 3, 1) for c in channels)
        self.head = nn.Sequential(nn.BatchNorm2d(3), nn.Tanh(), nn.Conv2d(3, classes, 3, padding=1))

    def forward(self, features):
        x = self.lateral[0](features[0])
        for lateral, f in zip(self.lateral[1:], features[1:]):
            x = nn.functional.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False) + lateral(f)
        return self.head(x)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_unroll_gradient_matches_finite_differences(steps):
    torch.manual_seed(0)
    C = 3
    S = TinySegmentor(C).double().train()
    A = TinyAnnotator([3, 2], C).double().train()
    features = [torch.randn(2, 3, 4, 4, dtype=torch.double), torch.randn(2, 2, 8, 8, dtype=torch.double)]
    syn = torch.randn(2, 3, 8, 8, dtype=torch.double)
    images = torch.randn(2, 3, 8, 8, dtype=torch.double)
    masks = torch.randint(0, C, (2, 8, 8))
    masks[0, 0, 0] = 255  # ignored pixels stay ignored
    s_state = {k: v.clone() for k, v in S.state_dict().items()}

    def loss() -> torch.Tensor:
        return maml_meta_loss(S, A, syn, features, images, masks, inner_lr=0.5, steps=steps)[0]

    params = list(A.parameters())
    grads = torch.autograd.grad(loss(), params)
    assert all(torch.equal(v, S.state_dict()[k]) for k, v in s_state.items())  # S's weights and BN stats untouched
    assert sum(g.abs().sum() for g in grads) > 0

    def shift(v: list[torch.Tensor], scale: float) -> None:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(scale * d)

    def directional(v: list[torch.Tensor], eps: float = 1e-6) -> float:
        """Central difference of the meta loss along v (the loss itself needs autograd: no no_grad here)."""
        shift(v, eps)
        plus = loss().item()
        shift(v, -2 * eps)
        minus = loss().item()
        shift(v, eps)
        return (plus - minus) / (2 * eps)

    gen = torch.Generator().manual_seed(1)
    directions = [[torch.randn(p.shape, generator=gen, dtype=torch.double) for p in params] for _ in range(3)]
    # plus single coordinates of the lateral (first) and last conv weights
    for i in (0, len(params) - 2):
        one_hot = [torch.zeros_like(p) for p in params]
        one_hot[i].view(-1)[0] = 1.0
        directions.append(one_hot)
    for v in directions:
        analytic = sum((g * d).sum() for g, d in zip(grads, v)).item()
        numeric = directional(v)
        assert abs(analytic - numeric) <= 1e-5 * max(abs(analytic), abs(numeric), 1e-8), (analytic, numeric)


def test_maml_trains_and_resume_equals_uninterrupted(tiny_config, tmp_path):
    # 20 steps: over the first 10 the meta-loss of these tiny networks still wanders (it rose on the
    # aligned faces), by 20 it falls clearly (1.97 to 1.72 averaged over 3 steps)
    cfg = tiny_config(**{"train.method": "maml", "train.steps": 20, **FAST})
    full, resumed, log = resume_pair(cfg, tmp_path)
    assert isinstance(full, MAMLTrainer)
    assert decreased([m["loss/meta"] for m in log])
    assert all("loss/segmentor" in m for m in log)  # train.K = 1: Algorithm 2 steps S every iteration
    assert same(weights(full.segmentor), weights(resumed.segmentor))
    assert same(weights(full.annotator), weights(resumed.annotator))


# ------------------------------------------------------------------------------------------ CLI


@pytest.mark.slow
def test_cli_trains_pseudo_label(tiny_config, tmp_path):
    cfg = tiny_config()
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(cfg.to_yaml())
    out = lagm_cli(["train", "--config", str(cfg_file), "--set",
                    "train.method=pseudo_label"])
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    assert (run_dir / "last.pt").exists() and (run_dir / "best.pt").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert 0 <= result["test/fg_miou"] <= 1 and "annotator/fg_miou_vs_truth" in result
