"""train.method true_masks: the segmentor learns from generated images and their exact masks only."""

import pytest
import torch
import torch.nn.functional as F

from lagm_ray.data.datasets import resize_labels
from lagm_ray.errors import ConfigError
from lagm_ray.methods import build_trainer
from lagm_ray.methods.true_masks import TrueMasksTrainer

FAST = {"train.segmentor_optim.name": "adam", "train.segmentor_optim.lr": 1e-2}


def test_trains_on_the_true_masks_of_generated_images_only(tiny_config, monkeypatch):
    tr = build_trainer(tiny_config(**{"train.method": "true_masks", "train.steps": 12, **FAST}))
    assert isinstance(tr, TrueMasksTrainer) and tr.annotator is None
    tr.splits.train_images.fill_(float("nan"))  # a real labelled image would poison the segmentor
    seen = []
    real_sample = tr.source.sample

    def spy(*args, **kwargs):
        batch = real_sample(*args, **kwargs)
        seen.append(resize_labels(batch.true_masks, tr.seg_size))
        return batch

    monkeypatch.setattr(tr.source, "sample", spy)
    targets = []
    real_ce = F.cross_entropy

    def spy_ce(logits, masks, *args, **kwargs):
        targets.append(masks)
        return real_ce(logits, masks, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy_ce)
    losses = [tr.train_step()["loss/segmentor"] for _ in range(12)]
    assert len(seen) == len(targets) == 12 and all(torch.equal(a, b) for a, b in zip(seen, targets))
    assert all(torch.isfinite(p).all() for p in tr.segmentor.parameters())
    assert sum(losses[-3:]) < sum(losses[:3])


def test_needs_a_generator_with_exact_masks(tiny_config):
    with pytest.raises(ConfigError, match="true_masks.*truncation_psi"):
        build_trainer(tiny_config(**{"train.method": "true_masks", "generator.truncation_psi": 0.7}))
