"""RepurposeGAN (train.method=repurposegan) and its layer-group sweep."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import lagm_cli

from lagm_ray.errors import ConfigError
from lagm_ray.methods import build_trainer
from lagm_ray.methods.repurposegan import (
    RepurposeGANTrainer,
    group_feature_index,
    random_affine,
    warp,
)
from lagm_ray.sweep_spec import load_sweep
from lagm_ray.trainer import LocalCheckpoints

ROOT = Path(__file__).resolve().parent.parent
# 2 few-shot steps then 4 auto-shot steps on 8 generated images; narrow networks
SMALL = {"train.method": "repurposegan", "repurposegan.labeller_steps": 2, "repurposegan.set_size": 8,
         "repurposegan.cnn_embed": 16, "repurposegan.cnn_channels": [8, 8], "repurposegan.cnn_dilations": [2, 4, 1],
         "repurposegan.mlp_hidden": [32, 16], "repurposegan.chunk_pixels": 700}


def test_layer_groups_select_blocks_by_resolution():
    blocks = [4, 8, 16, 32, 64, 128]
    assert group_feature_index(blocks, ["coarse"]) == [0, 1]
    assert group_feature_index(blocks, ["middle"]) == [2, 3]
    assert group_feature_index(blocks, ["fine"]) == [4, 5]
    assert group_feature_index(blocks, ["coarse", "fine"]) == [0, 1, 4, 5]
    with pytest.raises(ConfigError, match="repurposegan.layer_groups"):
        group_feature_index([4, 8, 16, 32], ["fine"])


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_fewshot_then_autoshot_losses_decrease(tiny_config, model):
    cfg = tiny_config(**{**SMALL, "repurposegan.model": model, "repurposegan.labeller_steps": 15,
                         "repurposegan.lr": 1e-2, "repurposegan.augment": False, "train.steps": 25,
                         "train.segmentor_optim.name": "adam", "train.segmentor_optim.lr": 1e-2})
    tr = build_trainer(cfg)
    assert isinstance(tr, RepurposeGANTrainer) and tr.feature_index == [0, 1, 2, 3] and tr.label_size == 32
    logs = [tr.train_step() for _ in range(25)]
    fewshot = [m["loss/fewshot"] for m in logs[:15]]
    auto = [m["loss/segmentor"] for m in logs[15:]]
    assert sum(fewshot[-3:]) < sum(fewshot[:3])
    assert sum(auto[-3:]) < sum(auto[:3])
    # the few-shot logits are kept (Sec. 3.3), at the segmentor's resolution
    assert tr.generated.targets.dtype == torch.float16 and tr.generated.targets.shape == (8, 8, 16, 16)
    ev, _ = tr.evaluate(pictures=False)
    assert 0 <= ev["annotator/fg_miou_vs_truth"] <= 1


def test_layer_groups_change_the_input(tiny_config):
    tr = build_trainer(tiny_config(**{**SMALL, "repurposegan.layer_groups": ["coarse"]}))
    assert tr.feature_index == [0, 1] and tr.label_size == 8
    assert tr.annotator([f[:1] for f in tr.annotated_features]).shape == (1, 8, 8, 8)


def test_augmentation_moves_image_and_target_together():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (4, 16, 16), generator=g)
    onehot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    theta = random_affine(4, g, flip_prob=0.5, scale_range=[0.5, 2.0], rotate_degrees=10, translate=0.5)
    images, soft, valid = warp(onehot.clone(), onehot.clone(), theta, soft=True)
    inside = F.grid_sample(torch.ones(4, 1, 16, 16), F.affine_grid(theta, [4, 1, 16, 16], align_corners=False),
                           align_corners=False)[:, 0] > 1 - 1e-6
    assert inside.any() and (~valid).any()
    assert torch.allclose(images.permute(0, 2, 3, 1)[inside], soft.permute(0, 2, 3, 1)[inside], atol=1e-6)
    # a pure flip moves labels exactly as the image
    flip = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]]).expand(4, 2, 3)
    images, hard, valid = warp(onehot.clone(), labels, flip, soft=False)
    assert valid.all() and torch.equal(hard, labels.flip(-1)) and torch.allclose(images, onehot.flip(-1), atol=1e-6)


def test_hard_targets_and_missing_masks(tiny_config):
    tr = build_trainer(tiny_config(**{**SMALL, "repurposegan.target": "hard"}))
    tr.fit(pictures=False)
    assert tr.generated.targets.dtype == torch.uint8 and tr.generated.targets.shape == (8, 16, 16)
    with pytest.raises(ConfigError, match="needs annotated generated images"):
        build_trainer(tiny_config(**{**SMALL, "generator.truncation_psi": 0.7}))
    with pytest.raises(ConfigError, match="cnn_dilations"):
        tiny_config(**{**SMALL, "repurposegan.cnn_dilations": [1, 2]})


def test_resume_equals_uninterrupted(tiny_config, tmp_path):
    """Augmentation on; checkpoint at step 3, after the set was built; the resumed run rebuilds it."""
    full = build_trainer(tiny_config(**SMALL))
    full.fit(pictures=False)
    half = build_trainer(tiny_config(**SMALL, **{"train.steps": 3}))
    half.fit([LocalCheckpoints(tmp_path / "ck")], pictures=False)
    resumed = build_trainer(tiny_config(**SMALL))
    resumed.load(tmp_path / "ck" / "last.pt")
    resumed.fit(pictures=False)
    for a, b in ((full.segmentor, resumed.segmentor), (full.annotator, resumed.annotator)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert full.history == resumed.history


def test_layer_sweep_loads_and_every_trial_is_valid():
    path = ROOT / "search_spaces" / "repurposegan_layers.yaml"
    full, quick = load_sweep(path), load_sweep(path, quick=True)
    assert full.base.train.method == "repurposegan" and quick.base.train.steps < full.base.train.steps
    values = full.space["repurposegan.layer_groups"].values
    assert len(values) == 6
    groups = {tuple(full.trial_config({"repurposegan.layer_groups": v}).repurposegan.layer_groups) for v in values}
    assert ("middle",) in groups and ("coarse", "middle", "fine") in groups
    with pytest.raises(ConfigError, match="repurposegan.layer_groups"):
        full.trial_config({"repurposegan.layer_groups": "coarse,huge"})


@pytest.mark.slow
def test_cli_trains_repurposegan(tiny_config, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(tiny_config(**SMALL).to_yaml())
    out = lagm_cli(["train", "--config", str(cfg_file), "--no-track",
                    "--set", "repurposegan.model=mlp"])
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "runs" / "tiny" / "result.json").read_text())
    assert 0 <= result["test/fg_miou"] <= 1 and "annotator/fg_miou_vs_truth" in result
