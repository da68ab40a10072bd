"""LayerMatch: Eqs. 2-4 by hand, Eq. 3's resynthesis, both modes' losses decreasing, the pre-trained encoder
being where fine-tuning starts, resume, the CLI."""

import json
from pathlib import Path

import pytest
import torch
from conftest import KeepCheckpointAt, lagm_cli

from lagm_ray.errors import ConfigError
from lagm_ray.methods import build_trainer
from lagm_ray.methods.layermatch import (
    SemanticProjectionDecoder,
    encoder_modules,
    layermatch_losses,
    pick_encoder_map,
    resynthesize,
)
from lagm_ray.synthetic import SyntheticSource

DECODER = {"train.method": "layermatch", "layermatch.mode": "decoder", "layermatch.decoder_steps": 3,
           "layermatch.decoder_width": 8, "train.annotator_optim.name": "adam", "train.segmentor_optim.name": "adam"}
PRETRAIN = {"train.method": "layermatch", "layermatch.mode": "pretrain", "layermatch.pretrain_steps": 3,
            "layermatch.pretrain_batch_size": 2, "train.segmentor_optim.name": "adam"}


def test_losses_by_hand():
    # two matched layers of one sample each; Eq. 2 = (||.||^2 + ||.||^2) / 2, Eq. 4 = ||I_rec - I_gen||^2
    t1, p1 = torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[0.0, 4.0]]]])  # 1 + 4 = 5
    t2, p2 = torch.tensor([[[[3.0]], [[0.0]]]]), torch.tensor([[[[0.0]], [[1.0]]]])  # 9 + 1 = 10
    img, rec = torch.tensor([[[[0.5, -0.5]]]]), torch.tensor([[[[0.0, 0.5]]]])  # 0.25 + 1 = 1.25
    match, r = layermatch_losses([t1, t2], [p1, p2], img, rec)
    assert match.item() == pytest.approx(7.5) and r.item() == pytest.approx(1.25)
    match, r = layermatch_losses([t1, t2], [p1, p2], img, rec, reduction="mean")  # per-element means
    assert match.item() == pytest.approx((2.5 + 5.0) / 2) and r.item() == pytest.approx(0.625)
    # a batch: the squared norms are per sample, then averaged
    _, r = layermatch_losses([t1], [p1], torch.zeros(2, 1, 1, 2), torch.tensor([[[[1.0, 1.0]]], [[[0.0, 3.0]]]]))
    assert r.item() == pytest.approx((2 + 9) / 2)


def test_resynthesis_with_the_true_activation_is_the_generated_image(tiny_generator_path):
    src = SyntheticSource.from_spec(tiny_generator_path)
    G = src.G
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ws = G.mapping(z, None)
        feats, images = G.synthesis.run_blocks(ws, noise_mode="const")
        for m in range(len(feats)):  # Eq. 3 with phi_hat_m = phi_m gives I_gen back, for every m
            rec = resynthesize(G.synthesis, ws, m, feats[m], images[m - 1] if m else None, "const")
            assert torch.allclose(rec, images[-1], atol=1e-5)
        # a different phi_m changes the image, through block m's toRGB and the blocks after it
        rec = resynthesize(G.synthesis, ws, 1, feats[1] + 1.0, images[0], "const")
        assert not torch.allclose(rec, images[-1], atol=1e-3)


def test_encoder_map_rule():
    assert [pick_encoder_map([32, 16, 8, 4, 2], r) for r in (4, 8, 16, 32, 64)] == [3, 2, 1, 0, 0]
    assert [pick_encoder_map([8, 4, 4, 4], r) for r in (4, 8, 16)] == [3, 0, 0]  # DeepLab: deepest among equals


def test_decoder_mode_losses_decrease_and_decoder_is_the_annotator(tiny_config):
    tr = build_trainer(tiny_config(**{**DECODER, "train.steps": 16, "layermatch.decoder_steps": 10}))
    assert isinstance(tr.annotator, SemanticProjectionDecoder) and len(tr.annotated_masks) == 4
    logs = [tr.train_step() for _ in range(16)]
    dec = [m["loss/decoder"] for m in logs[:10]]
    seg = [m["loss/segmentor"] for m in logs[10:]]
    assert sum(dec[-3:]) < 0.8 * sum(dec[:3])
    assert sum(seg[-2:]) < sum(seg[:2])
    metrics, _ = tr.evaluate(pictures=False)
    assert "annotator/fg_miou_vs_truth" in metrics


def test_pretrain_mode_losses_decrease(tiny_config):
    tr = build_trainer(tiny_config(**{**PRETRAIN, "train.steps": 16, "layermatch.pretrain_steps": 12,
                                      "layermatch.pretrain_lr": 3e-3}))
    z = torch.randn(4, tr.source.G.z_dim, generator=torch.Generator().manual_seed(7))

    def held_out():  # Eq. 1 on fixed latents, every block m in turn (BN on batch statistics, as in training)
        import copy

        saved = copy.deepcopy(tr.segmentor.state_dict()), copy.deepcopy(tr.heads.state_dict())
        with torch.no_grad():
            loss = sum(sum(tr.layermatch_loss(z, m)).item() for m in tr.match_index)
        tr.segmentor.load_state_dict(saved[0])  # leave the running statistics as training left them
        tr.heads.load_state_dict(saved[1])
        return loss

    before = held_out()
    logs = [tr.train_step() for _ in range(12)]
    assert all("loss/layermatch" in m for m in logs) and held_out() < 0.9 * before
    seg = [tr.train_step()["loss/segmentor"] for _ in range(4)]
    assert sum(seg[-2:]) < sum(seg[:2])


@pytest.mark.parametrize("kind", ["unet", "deeplabv3_resnet18"])
def test_fine_tuning_starts_from_the_pretrained_encoder(tiny_config, kind):
    tr = build_trainer(tiny_config(**{**PRETRAIN, "segmentor.kind": kind, "segmentor.width": 4}))
    enc = [p for m in encoder_modules(tr.segmentor) for p in m.parameters()]
    enc_ids = {id(p) for p in enc}
    rest = [p for p in tr.segmentor.parameters() if id(p) not in enc_ids]
    enc0 = [p.detach().clone() for p in enc]
    rest0 = [p.detach().clone() for p in rest]
    for _ in range(3):
        assert "loss/layermatch" in tr.train_step()
    pretrained = [p.detach().clone() for p in enc]
    assert all(not torch.equal(a, b) for a, b in zip(enc0, pretrained) if a.ndim > 1)  # every conv pre-trained
    assert all(torch.equal(a, b) for a, b in zip(rest0, rest))  # the decoder/head untouched
    seen = {}
    step = tr.segmentor_step_supervised

    def spy():
        seen["start"] = [p.detach().clone() for p in enc]
        return step()

    tr.segmentor_step_supervised = spy
    assert "loss/segmentor" in tr.train_step()
    assert all(torch.equal(a, b) for a, b in zip(seen["start"], pretrained))
    assert not all(torch.equal(a, b) for a, b in zip(pretrained, enc))  # and fine-tuning moves it



@pytest.mark.parametrize("mode", ["decoder", "pretrain"])
def test_resume_equals_uninterrupted(tiny_config, tmp_path, mode):
    cfg = {**(DECODER if mode == "decoder" else PRETRAIN), "train.checkpoint_interval": 1}
    full = build_trainer(tiny_config(**cfg))
    full.fit([KeepCheckpointAt(2, tmp_path)])  # killed inside the first stage
    resumed = build_trainer(tiny_config(**cfg))
    resumed.load(tmp_path / "killed.pt")
    resumed.fit()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert same(full.segmentor, resumed.segmentor)
    assert same(full.annotator, resumed.annotator) if mode == "decoder" else same(full.heads, resumed.heads)
    assert full.history == resumed.history


def test_config_errors(tiny_config):
    with pytest.raises(ConfigError, match="layermatch.pretrain_steps"):
        tiny_config(**{**PRETRAIN, "layermatch.pretrain_steps": 6})
    with pytest.raises(ConfigError, match="needs annotated generated images"):
        build_trainer(tiny_config(**{**DECODER, "generator.truncation_psi": 0.7}))
    with pytest.raises(ConfigError, match="feature_resolutions"):
        build_trainer(tiny_config(**{**PRETRAIN, "layermatch.match_resolutions": [5]}))


@pytest.mark.slow
def test_cli_train(tiny_config, tmp_path):
    cfg = tiny_config(**{**PRETRAIN, "layermatch.decoder_steps": 3})
    (tmp_path / "tiny.yaml").write_text(cfg.to_yaml())
    out = lagm_cli(["train", "--config", str(tmp_path / "tiny.yaml"),
                    "--set", "layermatch.mode=decoder"])
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((Path(cfg.run.output_dir) / "tiny" / "result.json").read_text())
    assert 0 <= result["test/fg_miou"] <= 1 and "annotator/fg_miou_vs_truth" in result
