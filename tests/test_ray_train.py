"""Ray Train around the trainer, started for real on a local 2-CPU Ray.

The plain loop is the reference throughout: the first test shows a 1-worker TorchTrainer equals it, so
the others compare with it too instead of paying for a second Ray Train run (each one starts a
controller and worker processes, about 15 s here)."""

import pytest

from lagm_ray.distributed.faults import KillAfterCheckpoint
from lagm_ray.distributed.train import ray_fit, result_metrics
from lagm_ray.sweep_spec import Resources
from lagm_ray.trainer import Trainer

pytestmark = pytest.mark.ray


def test_one_worker_equals_the_plain_loop(ray_local, tiny_config, tmp_path):
    cfg = tiny_config()
    plain = Trainer(cfg).fit()
    result = ray_fit(cfg, storage_path=str(tmp_path / "ray"), name="one")
    m = result_metrics(result)
    assert m["step"] == cfg.train.steps
    assert m["test/fg_miou"] == plain.metrics["test/fg_miou"]
    assert m["val/fg_miou"] == plain.metrics["val/fg_miou"]


def test_killed_worker_resumes_to_the_same_result(ray_local, tiny_config, tmp_path):
    cfg = tiny_config()
    clean = Trainer(cfg).fit()
    marker = tmp_path / "killed-once"
    result = ray_fit(cfg, storage_path=str(tmp_path / "ray"), name="killed", max_failures=1,
                     extra_callbacks=[KillAfterCheckpoint(3, marker)])
    assert marker.exists()  # the worker really died at step 3
    m = result_metrics(result)
    assert m["step"] == cfg.train.steps and m["best_step"] == clean.best_step
    for key, value in clean.metrics.items():  # bit for bit, as if it had never died
        if key in m:
            assert m[key] == value, key
    assert {"test/fg_miou", "test/miou", "val/fg_miou"} <= m.keys()


def test_two_workers_stay_in_sync_and_follow_one(ray_local, tiny_config, tmp_path):
    one = Trainer(tiny_config(**{"train.synthetic_batch_size": 4, "train.labelled_batch_size": 4})).fit()
    cfg2 = tiny_config(**{"train.synthetic_batch_size": 2, "train.labelled_batch_size": 2})
    two = ray_fit(cfg2, Resources(workers=2, cpus_per_worker=1), storage_path=str(tmp_path / "ray"), name="w2")
    m2 = result_metrics(two)
    assert m2["step"] == cfg2.train.steps
    # same global batch: the two runs land close (not equal: the cosine distance is not linear in the batch)
    assert abs(m2["test/pixel_acc"] - one.metrics["test/pixel_acc"]) < 0.25
