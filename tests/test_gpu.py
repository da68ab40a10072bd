"""What only a CUDA machine can check (skipped elsewhere; `python bench/gpu_check.py` runs them): a training
resumed on the GPU, Ray Train with one GPU worker, data generation on the device."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides

from lagm_ray.methods import load_config
from lagm_ray.trainer import Trainer

pytestmark = pytest.mark.gpu


def cuda_config(generator_path, tmp_path, **extra):
    return load_config(None, tiny_overrides(generator_path, tmp_path, **{"run.device": "cuda", **extra}))


def test_a_training_resumed_on_cuda_continues_from_its_checkpoint(tiny_generator_path, tmp_path):
    """Checkpoints mapped to CUDA once broke every GPU resume: the trainer's CPU torch.Generator rejects a
    CUDA state tensor. Resumed, the run reaches its last step with the checkpoint's RNG state and step."""
    first = Trainer(cuda_config(tiny_generator_path, tmp_path, **{"train.steps": 3}))
    first.fit(pictures=False)
    first.save(tmp_path / "last.pt")
    resumed = Trainer(cuda_config(tiny_generator_path, tmp_path, **{"train.steps": 6}))
    resumed.load(tmp_path / "last.pt")
    assert resumed.step == 3 and torch.equal(resumed.rng.get_state(), first.rng.get_state())
    assert next(resumed.segmentor.parameters()).device.type == "cuda"
    result = resumed.fit(pictures=False)
    assert resumed.step == 6 and 0 <= result.metrics["test/fg_miou"] <= 1


def test_ray_train_runs_a_gpu_worker_and_resumes_it(ray_local, tiny_generator_path, tmp_path):
    from lagm_ray.distributed.train import ray_fit
    from lagm_ray.sweep_spec import Resources

    cfg = cuda_config(tiny_generator_path, tmp_path, **{"train.steps": 6, "run.device": "auto"})
    gpu = Resources(workers=1, cpus_per_worker=1, gpus_per_worker=1)
    storage = str(tmp_path / "ray")
    short = cfg.replace({"train.steps": 3})
    assert ray_fit(short, gpu, storage_path=storage, name="gpu").error is None
    result = ray_fit(cfg, gpu, storage_path=storage, name="gpu")  # resumes the step-3 checkpoint on the GPU
    assert result.error is None and result.metrics["step"] == 6


def test_data_generation_on_the_device_matches_the_cpu_shapes(tiny_generator_path, tmp_path):
    from lagm_ray import datagen as dg
    from lagm_ray.annotator_runs import generate_local

    trainer = Trainer(load_config(None, tiny_overrides(tiny_generator_path, tmp_path)))
    trainer.fit(pictures=False)
    trainer.save_best(tmp_path / "best.pt")
    spec = dg.GenerationSpec(num_images=4, shard_size=2, batch_size=2)
    on_gpu = generate_local(tmp_path / "best.pt", tmp_path / "gpu", spec, device="cuda")
    on_cpu = generate_local(tmp_path / "best.pt", tmp_path / "cpu", spec, device="cpu")
    assert on_gpu["rows"] == on_cpu["rows"] == 4 and on_gpu["last_run"]["device"] == "cuda"
