"""DatasetGAN (train.method=datasetgan) and the shared pixel-feature helpers."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import lagm_cli

from lagm_ray.errors import ConfigError
from lagm_ray.methods import build_trainer
from lagm_ray.methods.datasetgan import (
    DatasetGANTrainer,
    StyleInterpreter,
    image_uncertainty,
    js_divergence,
    majority_vote,
)
from lagm_ray.methods.pixel_features import (
    features_at,
    label_in_chunks,
    stratified_pixels,
    upsample_concat,
)
from lagm_ray.trainer import LocalCheckpoints

# 2 labeller steps then 4 segmentor steps on a set of 12 generated images (3 dropped as most uncertain)
SMALL = {"train.method": "datasetgan", "datasetgan.labeller_steps": 2, "datasetgan.num_classifiers": 3,
         "datasetgan.set_size": 12, "datasetgan.filter_ratio": 0.25, "datasetgan.pixels_per_image": 64,
         "datasetgan.chunk_pixels": 500}


def test_js_divergence_against_hand_computed_values():
    # pixel a: two confident members that disagree, JS = ln 2
    # pixel b: two identical members, JS = 0
    # pixel c: [.7 .2 .1] and [.1 .2 .7]: H([.4 .2 .4]) - H([.7 .2 .1]) = 1.054920 - 0.801819
    # pixel d: [.5 .5 0] and [.5 .5 0]: JS = 0
    probs = torch.tensor([[[1.0, 0, 0], [0.3, 0.3, 0.4], [0.7, 0.2, 0.1], [0.5, 0.5, 0]],
                          [[0, 1.0, 0], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7], [0.5, 0.5, 0]]]).view(2, 1, 2, 2, 3)
    js = js_divergence(probs)
    hand = torch.tensor([[[math.log(2), 0.0], [0.253101, 0.0]]])
    assert torch.allclose(js, hand, atol=1e-5)
    assert torch.allclose(image_uncertainty(js), torch.tensor([math.log(2) + 0.253101]), atol=1e-5)
    # three members [.5 .5], [1 0], [0 1]: H(mean) = ln 2, mean entropy = ln 2 / 3
    three = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    assert js_divergence(three).item() == pytest.approx(2 / 3 * math.log(2), abs=1e-6)


def test_majority_vote_and_ties():
    probs = torch.tensor([[0.6, 0.4, 0.0], [0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])[:, None]  # votes 0, 0, 2
    assert majority_vote(probs).tolist() == [0]
    tie = torch.tensor([[0.51, 0.49], [0.0, 1.0]])[:, None]  # one vote each; mean [.255 .745] -> 1
    assert majority_vote(tie).tolist() == [1]


def test_pixel_sampling_covers_every_labelled_region():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 16, 16, dtype=torch.long)
    masks[0, 0, 0] = 7  # a one-pixel region
    masks[0, 5:9, 5:9] = 2
    masks[1, :, 8:] = 1
    masks[2, 3, 3:5] = 4
    masks[2, 10:, :] = 255  # unlabelled: never sampled
    b, y, x = stratified_pixels(masks, per_image=10, generator=g)
    assert len(b) == 30 and (torch.bincount(b) == 10).all()
    sampled = masks[b, y, x]
    assert (sampled != 255).all()
    for i in range(3):
        present = set(masks[i][masks[i] != 255].unique().tolist())
        assert set(sampled[b == i].tolist()) == present, f"image {i} misses a region"


def test_pixel_features_equal_the_upsampled_map_and_chunking_changes_nothing():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 3, r, r, generator=g) for r in (4, 8, 16)]
    full = upsample_concat(feats, 16)
    b, y, x = torch.randint(2, (50,), generator=g), torch.randint(16, (50,), generator=g), torch.randint(16, (50,), generator=g)
    assert torch.allclose(features_at(feats, 16, b, y, x), full[b, :, y, x], atol=1e-6)
    lin = torch.nn.Linear(9, 5)
    whole = label_in_chunks(lin, feats, 16, 5, chunk_pixels=10_000)
    assert torch.allclose(whole, lin(full.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-5)
    assert torch.allclose(label_in_chunks(lin, feats, 16, 5, chunk_pixels=37), whole, atol=1e-6)


def test_ensemble_is_log_mean_probability_and_vote_uses_it_for_ties():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 4, 4), torch.randn(2, 4, 8, 8)]
    A = StyleInterpreter(8, 3, [16, 8], members=4, size=8, chunk_pixels=20).eval()
    out = A(feats)
    x = upsample_concat(feats, 8).permute(0, 2, 3, 1).reshape(-1, 8)
    probs = torch.stack([F.softmax(m(x), -1) for m in A.members])
    assert torch.allclose(out.permute(0, 2, 3, 1).reshape(-1, 3), probs.mean(0).log(), atol=1e-5)
    vote, js = A.vote_and_uncertainty(feats)
    assert torch.equal(vote.reshape(-1), majority_vote(probs))
    assert torch.allclose(js.reshape(-1), js_divergence(probs), atol=1e-5)


def test_training_decreases_both_losses_and_filters_the_set(tiny_config):
    cfg = tiny_config(**{**SMALL, "datasetgan.labeller_steps": 20, "datasetgan.pixel_batch_size": 128,
                         "datasetgan.lr": 1e-2, "train.steps": 30, "train.segmentor_optim.name": "adam",
                         "train.segmentor_optim.lr": 1e-2, "train.synthetic_batch_size": 4})
    tr = build_trainer(cfg)
    assert isinstance(tr, DatasetGANTrainer) and tr.label_size == 32
    logs = [tr.train_step() for _ in range(30)]
    fewshot = [m["loss/interpreter"] for m in logs[:20]]
    seg = [m["loss/segmentor"] for m in logs[20:]]
    assert sum(fewshot[-5:]) < sum(fewshot[:5])
    assert sum(seg[-3:]) < sum(seg[:3])
    assert logs[20]["set/size"] == 9 and logs[20]["set/dropped"] == 3
    s = tr.generated
    assert s.images.dtype == torch.uint8 and s.images.shape == (9, 3, 16, 16)
    assert s.targets.dtype == torch.uint8 and s.targets.shape == (9, 16, 16)
    ev, _ = tr.evaluate(pictures=False)
    assert 0 <= ev["annotator/fg_miou_vs_truth"] <= 1


def test_the_dropped_images_are_the_most_uncertain(tiny_config):
    tr = build_trainer(tiny_config(**{**SMALL, "datasetgan.set_size": 8, "datasetgan.filter_ratio": 0.5,
                                      "datasetgan.generate_batch_size": 8}))
    scores = []
    original = tr.label_generated

    def spy(features):
        labels, score = original(features)
        scores.append(score)
        return labels, score

    tr.label_generated = spy
    kept = tr.build_generated_set()
    order = torch.argsort(scores[0])
    assert len(kept) == 4 and kept.dropped == 4
    assert (scores[0][order[:4]].max() <= scores[0][order[4:]].min())


def test_needs_annotated_generated_images(tiny_config):
    with pytest.raises(ConfigError, match="needs annotated generated images"):
        build_trainer(tiny_config(**{**SMALL, "generator.truncation_psi": 0.7}))
    with pytest.raises(ConfigError, match="datasetgan.labeller_steps must be below train.steps"):
        tiny_config(**{**SMALL, "datasetgan.labeller_steps": 6})
    with pytest.raises(ConfigError, match="datasetgan.filter_ratio"):
        tiny_config(**{**SMALL, "datasetgan.filter_ratio": 1.0})


def test_resume_equals_uninterrupted(tiny_config, tmp_path):
    """Checkpoint at step 3 (just after the set was built); the resumed run rebuilds it."""
    full = build_trainer(tiny_config(**SMALL))
    full.fit(pictures=False)
    half = build_trainer(tiny_config(**SMALL, **{"train.steps": 3}))
    half.fit([LocalCheckpoints(tmp_path / "ck")], pictures=False)
    resumed = build_trainer(tiny_config(**SMALL))
    resumed.load(tmp_path / "ck" / "last.pt")
    assert resumed.step == 3 and resumed.generated is None
    resumed.fit(pictures=False)
    for a, b in ((full.segmentor, resumed.segmentor), (full.annotator, resumed.annotator)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(full.generated.targets, resumed.generated.targets)
    assert full.history == resumed.history


@pytest.mark.slow
def test_cli_trains_datasetgan(tiny_config, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(tiny_config(**SMALL).to_yaml())
    out = lagm_cli(["train", "--config", str(cfg_file), "--no-track"])
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tmp_path / "runs" / "tiny"
    result = json.loads((run_dir / "result.json").read_text())
    assert 0 <= result["test/fg_miou"] <= 1 and "annotator/fg_miou_vs_truth" in result
