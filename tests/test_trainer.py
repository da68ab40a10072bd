import pytest
import torch

from lagm_ray.config import ConfigError
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
