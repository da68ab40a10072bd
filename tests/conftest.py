"""Shared fixtures: a tiny (untrained) embedded-world generator and a tiny training config, so trainer
tests run in seconds without the shipped toy generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lagm_ray.callbacks import Callback
from lagm_ray.data.toyworld import get_category
from lagm_ray.methods import load_config
from lagm_ray.models.generator import Generator
from lagm_ray.storage import save_checkpoint
from lagm_ray.synthetic import GENERATOR_FORMAT

TINY_G = dict(z_dim=64, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
              mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=16)


@pytest.fixture(scope="session")
def tiny_generator_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    G = Generator(**TINY_G)
    cat = get_category("faces")
    path = tmp_path_factory.mktemp("gen") / "tiny_faces.pt"
    save_checkpoint({"format": GENERATOR_FORMAT, "init_kwargs": TINY_G, "state_dict": G.state_dict(),
                     "meta": {"world": "embedded", "category": "faces", "class_names": list(cat.class_names),
                              "num_params": cat.num_params, "resolution": 32}}, path)
    return str(path)


def tiny_overrides(generator_path: str, tmp_path, **extra) -> dict:
    o = {
        "run.name": "tiny", "run.output_dir": str(tmp_path / "runs"), "run.num_threads": 1, "run.device": "cpu",
        "data.resolution": 32, "data.seg_resolution": 16, "data.num_labelled": 4, "data.num_val": 6,
        "data.num_test": 6, "generator.checkpoint": generator_path, "annotator.width": 8,
        "segmentor.kind": "unet", "segmentor.width": 4, "train.steps": 6, "train.matched_blocks": ["All"],
        "train.synthetic_batch_size": 2, "train.eval_interval": 3, "train.checkpoint_interval": 3,
        "train.log_interval": 1, "eval.num_annotator_samples": 4, "tracking.enabled": False,
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    o.update(extra)
    return o


@pytest.fixture
def tiny_config(tiny_generator_path, tmp_path):
    def make(**extra):
        return load_config(None, tiny_overrides(tiny_generator_path, tmp_path, **extra))
    return make


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster of 2 CPUs for the whole session (started once: it takes seconds)."""
    import os

    import ray

    # Ray Train's controller polls its workers every 2 s and starts a preemption watcher (one more
    # process, for spot instances); on 2 cores both add seconds to every run and test nothing of ours.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def tiny_sweep(tmp_path, generator_path, name="tiny", space=None, steps=6, **spec) -> Path:
    """A sweep file over a tiny base config (32 px untrained generator, 4-channel U-Net), tracked in
    tmp_path/mlflow.db."""
    base = load_config(None, tiny_overrides(generator_path, tmp_path, **{"tracking.enabled": True,
                                                                         "tracking.experiment": "sweeps",
                                                                         "train.steps": steps}))
    (tmp_path / "base.yaml").write_text(base.to_yaml())
    doc = {"name": name, "base": "base.yaml", "space": space or {"train.K": {"grid": [1, 2]}},
           "searcher": "grid", "max_concurrent_trials": 2, "resources": {"workers": 1, "cpus_per_worker": 1},
           "max_failures": 1, **spec}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p



@pytest.fixture(scope="session")
def finished_sweep(ray_local, tiny_generator_path, tmp_path_factory):
    """A finished 2-trial grid sweep (K in 1, 2) tracked in its own SQLite store, run once per session:
    (directory, tracking URI, parent run id, Tune results)."""
    from lagm_ray.distributed.sweep import run_sweep
    from lagm_ray.sweep_spec import load_sweep

    tmp_path = tmp_path_factory.mktemp("sweep")
    spec = load_sweep(tiny_sweep(tmp_path, tiny_generator_path))
    # as experiments/*.py give it (sweep_command.main's paper=): K 1 with a number, K 2 in prose only
    spec.paper, spec.paper_note = {1: (1.0, "33.71 ± 0.77"), 2: (0.5, "not reported")}, "a made-up table"
    results, parent = run_sweep(spec, storage_path=str(tmp_path / "ray"), verbose=0)
    return tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", parent, results


class KeepCheckpointAt(Callback):
    """A trainer callback keeping the checkpoint written at one step (``killed.pt``), as if the run had been
    killed right after it: resume tests compare a run resumed from it with an uninterrupted one."""

    def __init__(self, step, directory):
        self.step, self.directory = step, directory

    def on_checkpoint(self, step, trainer):
        if step == self.step:
            trainer.save(self.directory / "killed.pt")


def lagm_cli(args: list[str]):
    """``lagm ARGS`` through the console script's own ``main`` (its error handling included), in this
    process (no interpreter start-up per call): the result has ``returncode``, ``stdout`` and ``stderr``
    like a finished subprocess. An exception main() lets through (a bug) fails the test with its traceback."""
    import contextlib
    import io
    import types

    from lagm_ray.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def load_experiment(name: str):
    """experiments/<name>.py as a module (its flags, adjust and compare), without running its __main__."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "experiments"))  # for the script's `import _path`
    try:
        spec = importlib.util.spec_from_file_location(name, root / "experiments" / f"{name}.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
    finally:
        sys.path.remove(str(root / "experiments"))
    return script


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped without it, saying where they run (bench/gpu_check.py)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; `python bench/gpu_check.py` runs these on a machine with one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
