"""What MLflow and the run directory say after a training dies, is interrupted, or fails, through the real
`lagm train` in its own process: the status, the checkpoint, and a resume that continues the same run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow.tracking import MlflowClient

from lagm_ray.methods import build_trainer, load_config

pytestmark = pytest.mark.slow
STEPS = 120


def tiny_yaml(tmp_path: Path, generator_path: str, **extra) -> tuple[Path, str]:
    o = tiny_overrides(generator_path, tmp_path, **{
        "tracking.enabled": True, "tracking.experiment": "failures", "train.steps": STEPS,
        "train.eval_interval": 20, "train.checkpoint_interval": 10, "train.log_interval": 1, **extra})
    cfg = load_config(None, o)
    path = tmp_path / "tiny.yaml"
    path.write_text(cfg.to_yaml())
    return path, cfg.tracking.uri


def lagm(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lagm_ray.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_checkpoint(proc: subprocess.Popen, last: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not last.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def only_run(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("failures")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def test_sigkilled_training_resumed_is_one_finished_run_with_no_step_twice(tiny_generator_path, tmp_path):
    config, uri = tiny_yaml(tmp_path, tiny_generator_path)
    last = tmp_path / "runs" / "tiny" / "last.pt"
    first = lagm(["train", "-c", config], tmp_path)
    wait_for_checkpoint(first, last)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    client, run = only_run(uri)
    assert run.info.status == "RUNNING"  # SIGKILL leaves no chance to record anything

    second = lagm(["train", "-c", config, "--resume", "auto"], tmp_path)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert "resumed from" in out
    client, resumed = only_run(uri)  # the same MLflow run, continued
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    for key in ("loss/gm", "val/fg_miou"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, sorted(steps))
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss/gm")) == STEPS
    clean = build_trainer(load_config(config, {"tracking.enabled": False})).fit()
    for key in ("test/fg_miou", "val/fg_miou", "test/miou"):
        assert resumed.data.metrics[f"result/{key}"] == clean.metrics[key], key


def test_interrupted_training_is_killed_and_says_where_its_checkpoint_is(tiny_generator_path, tmp_path):
    config, uri = tiny_yaml(tmp_path, tiny_generator_path)
    last = tmp_path / "runs" / "tiny" / "last.pt"
    proc = lagm(["train", "-c", config], tmp_path)
    wait_for_checkpoint(proc, last)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == f"interrupted: its last checkpoint is {last}; continue with --resume auto"
    assert "Traceback" not in err
    _, run = only_run(uri)
    assert run.info.status == "KILLED"
    assert run.data.tags["lagm.last_checkpoint"] == str(last.resolve())
    assert int(run.data.tags["lagm.stopped_at_step"]) >= 10


def test_sigterm_stops_a_training_as_ctrl_c_does(tiny_generator_path, tmp_path):
    config, uri = tiny_yaml(tmp_path, tiny_generator_path)
    proc = lagm(["train", "-c", config], tmp_path)
    wait_for_checkpoint(proc, tmp_path / "runs" / "tiny" / "last.pt")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert only_run(uri)[1].info.status == "KILLED"


def test_training_that_raises_is_failed_with_its_reason(tiny_generator_path, tmp_path):
    """A folder stands where the first checkpoint goes (runs/tiny/last.pt): the run starts (every check before
    it passes), then its first checkpoint raises IsADirectoryError."""
    config, uri = tiny_yaml(tmp_path, tiny_generator_path, **{"train.steps": 12})
    (tmp_path / "runs" / "tiny" / "last.pt").mkdir(parents=True)
    proc = lagm(["train", "-c", config], tmp_path)
    _, err = proc.communicate(timeout=300)
    # an OSError names its path: one line, exit 2, as for any error the user can fix
    assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("error: ") and "last.pt" in err
    _, run = only_run(uri)
    assert run.info.status == "FAILED"
    assert "last.pt" in run.data.tags["lagm.error"]
