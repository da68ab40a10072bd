import pytest
import torch

from lagm_ray.errors import ConfigError
from lagm_ray.trainer import LocalCheckpoints, Trainer


def params(module):
    return [p.detach().clone() for p in module.state_dict().values()]


def weights(module):
    """Parameters only: BN running statistics move in every forward in train mode, as in the reference."""
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_one_lagm_step_updates_annotator_and_segmentor(tiny_config):
    tr = Trainer(tiny_config())
    a0, s0 = params(tr.annotator), params(tr.segmentor)
    m = tr.train_step()
    assert {"loss/gm", "loss/segmentor", "time/step_s", "time/annotator_phase_s"} <= set(m)
    assert 0 <= m["loss/gm"] <= 2  # 1 - cosine averaged over tensors
    assert not same(a0, params(tr.annotator)) and not same(s0, params(tr.segmentor))


def test_segmentor_updated_every_k_steps(tiny_config):
    tr = Trainer(tiny_config(**{"train.K": 3}))
    s0 = weights(tr.segmentor)
    assert "loss/segmentor" not in tr.train_step()
    assert "loss/segmentor" not in tr.train_step()
    assert same(s0, weights(tr.segmentor))
    assert "loss/segmentor" in tr.train_step()
    assert not same(s0, weights(tr.segmentor))


def test_segmentor_steps_per_update(tiny_config):
    """train.segmentor_steps 3 takes three optimiser steps each time the segmentor is updated."""
    tr = Trainer(tiny_config(**{"train.segmentor_steps": 3, "train.segmentor_optim.name": "adam"}))
    tr.train_step()
    assert tr.opt_s.state[next(tr.segmentor.parameters())]["step"] == 3
    tr = Trainer(tiny_config(**{"train.K": 2, "train.segmentor_steps": 3, "train.segmentor_optim.name": "adam"}))
    tr.train_step()
    tr.train_step()
    assert tr.opt_s.state[next(tr.segmentor.parameters())]["step"] == 3


@pytest.mark.parametrize("method", ["lagm", "supervised"])
def test_class_weights_come_from_the_labelled_masks(tiny_config, method):
    """train.class_weight_power: weights from the labelled training masks alone; they change the step."""
    from lagm_ray import gm

    plain = Trainer(tiny_config(**{"train.method": method}))
    weighted = Trainer(tiny_config(**{"train.method": method, "train.class_weight_power": 1.0}))
    assert plain.class_weights is None
    expected = gm.class_weights(weighted.splits.train_masks, weighted.num_classes, 1.0)
    assert torch.equal(weighted.class_weights, expected)
    assert same(weights(plain.segmentor), weights(weighted.segmentor))  # same seed, same start
    m_plain, m_weighted = plain.train_step(), weighted.train_step()
    key = "loss/gm" if method == "lagm" else "loss/segmentor"
    assert m_plain[key] != m_weighted[key]


def test_synthetic_pool_draws_from_samples_made_once(tiny_config, tmp_path):
    """train.synthetic_pool N: every synthetic batch is N-pool samples, made once from their own seed
    (the generator is not called again), and a resumed run rebuilds the same pool."""
    tr = Trainer(tiny_config(**{"train.synthetic_pool": 6, "train.synthetic_batch_size": 2}))
    pool_images, pool_features = tr.synthetic_pool()
    assert pool_images.shape[0] == 6 and all(f.shape[0] == 6 for f in pool_features)
    calls = []
    tr.source.sample = lambda *a, **k: calls.append(1)
    images, features = tr.synthetic_batch()
    assert not calls
    rows = [next(i for i in range(6) if torch.equal(pool_images[i], img)) for img in images]
    assert len(set(rows)) == 2
    # each image comes with its own sample's features, at every level
    assert all(torch.equal(f[b], pf[row]) for f, pf in zip(features, pool_features) for b, row in enumerate(rows))
    tr.train_step()

    full = Trainer(tiny_config(**{"train.synthetic_pool": 6}))
    full.fit()
    half = Trainer(tiny_config(**{"train.synthetic_pool": 6, "train.steps": 3}))
    half.fit([LocalCheckpoints(tmp_path / "ck")])
    resumed = Trainer(tiny_config(**{"train.synthetic_pool": 6}))
    resumed.load(tmp_path / "ck" / "last.pt")
    resumed.fit()
    assert full.history == resumed.history
    assert same(params(full.annotator), params(resumed.annotator))


@pytest.mark.parametrize("method", ["lagm", "supervised"])
def test_same_seed_same_metrics(tiny_config, method):
    r1 = Trainer(tiny_config(**{"train.method": method})).fit()
    r2 = Trainer(tiny_config(**{"train.method": method})).fit()
    assert r1.metrics == r2.metrics and r1.history == r2.history
    r3 = Trainer(tiny_config(**{"train.method": method, "run.seed": 1})).fit()
    assert r3.history != r1.history


def test_resume_equals_uninterrupted(tiny_config, tmp_path):
    full = Trainer(tiny_config())
    full.fit()
    half = Trainer(tiny_config(**{"train.steps": 3}))
    half.fit([LocalCheckpoints(tmp_path / "ck")])
    resumed = Trainer(tiny_config())
    resumed.load(tmp_path / "ck" / "last.pt")
    assert resumed.step == 3
    resumed.fit()
    assert same(params(full.segmentor), params(resumed.segmentor))
    assert same(params(full.annotator), params(resumed.annotator))
    assert full.history == resumed.history
    assert (tmp_path / "ck" / "best.pt").exists()


def test_head_matching_on_deeplab(tiny_config):
    tr = Trainer(tiny_config(**{"segmentor.kind": "deeplabv3_resnet18", "segmentor.width": 4,
                                "train.matched_blocks": ["Head"]}))
    assert all(n.startswith("classifier.") for n, _ in tr.matched)
    tr.train_step()


def test_bad_config_errors(tiny_config):
    with pytest.raises(ConfigError, match="train.matched_blocks unknown block 'Res9' for unet; valid blocks: Input"):
        tiny_config(**{"train.matched_blocks": ["Res9"]})
    with pytest.raises(ConfigError, match="unknown block 'U1' for deeplabv3_resnet18"):
        tiny_config(**{"segmentor.kind": "deeplabv3_resnet18", "train.matched_blocks": ["U1"]})
    with pytest.raises(ConfigError, match="segmentor.kind: unknown segmentor kind 'vgg'"):
        tiny_config(**{"segmentor.kind": "vgg"})
    with pytest.raises(ConfigError, match="data.num_labelled: 5000 labelled images requested.*holds 1500"):
        Trainer(tiny_config(**{"data.num_labelled": 5000}))
    with pytest.raises(ConfigError, match="train.K"):
        tiny_config(**{"train.K": 0})
    with pytest.raises(ConfigError, match="train.class_weight_power must be >= 0, got -1"):
        tiny_config(**{"train.class_weight_power": -1})
    with pytest.raises(ConfigError, match="train.segmentor_steps must be >= 1, got 0"):
        tiny_config(**{"train.segmentor_steps": 0})
    with pytest.raises(ConfigError, match=r"train.synthetic_pool must be 0 \(fresh samples\) or at least"):
        tiny_config(**{"train.synthetic_pool": 1, "train.synthetic_batch_size": 2})
    with pytest.raises(ConfigError, match="train.segmentor_optim.lr"):
        tiny_config(**{"train.segmentor_optim.lr": 0.0})
    with pytest.raises(ConfigError, match=r"data.resolution is 64 but the generator .* makes 32 px images"):
        Trainer(tiny_config(**{"data.resolution": 64}))


def test_a_lower_data_resolution_stops_the_generator_at_that_block(tiny_config):
    """data.resolution 16 with a 32 px generator: images are block 16's skip image, features stop there,
    and the true masks are rendered at 16 px."""
    trainer = Trainer(tiny_config(**{"data.resolution": 16, "data.seg_resolution": 16}))
    assert trainer.source.resolution == 16 and trainer.source.block_resolutions == [4, 8, 16]
    images, features = trainer.synthetic_batch()
    assert images.shape[-1] == 16 and [f.shape[-1] for f in features] == [4, 8, 16]
    assert trainer.source.sample(2, seed=0).true_masks.shape == (2, 16, 16)
    trainer.train_step()  # the annotator and the whole step work at that resolution
