"""How a sweep ends when something goes wrong, for real (local Ray, MLflow on SQLite): a deterministic
error in a trial, a driver that raises, SIGTERM, a driver SIGKILLed right after a trial finished, and a
sweep directory that is only restored when asked."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_sweep
from mlflow.tracking import MlflowClient

from lagm_ray import sweep_command
from lagm_ray.distributed.faults import RaiseAtStart
from lagm_ray.distributed.sweep import run_sweep
from lagm_ray.distributed.trial import is_deterministic
from lagm_ray.errors import ConfigError
from lagm_ray.sweep_spec import load_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def children(uri: str, parent: str):
    c = MlflowClient(uri)
    exp = c.get_run(parent).info.experiment_id
    return c.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_a_deterministic_error_fails_its_trial_once_and_says_why(ray_local, tiny_generator_path, tmp_path, capsys):
    path = tiny_sweep(tmp_path, tiny_generator_path, name="det", max_failures=2)  # K in 1, 2
    attempts = tmp_path / "attempts"
    drill = RaiseAtStart(ConfigError("train.K: 2 is refused by this drill"), "train.K", 2, attempts)
    args = argparse.Namespace(storage_path=str(tmp_path / "ray"), resume=False)
    results, parent = sweep_command.run(load_sweep(path), args, extra_callbacks=[drill])
    out = capsys.readouterr().out

    assert attempts.read_text().splitlines() == ["train.K=2"]  # one attempt, not 1 + max_failures
    (error,) = [r.error for r in results if r.error is not None]
    assert is_deterministic(error)
    assert sweep_command.exit_status(results) == 1
    assert "2 trials (1 failed)" in out
    (line,) = [x for x in out.splitlines() if x.startswith("failed: ")]
    assert line.endswith("K=2: ConfigError: train.K: 2 is refused by this drill"), line

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kids = {r.data.params["train.K"]: r for r in children(uri, parent)}
    assert kids["1"].info.status == "FINISHED"
    # it failed before its training opened a run: the run is made, FAILED, with the reason and its values
    assert kids["2"].info.status == "FAILED"
    assert kids["2"].data.tags["lagm.error"] == "ConfigError: train.K: 2 is refused by this drill"
    p = MlflowClient(uri).get_run(parent)
    assert p.info.status == "FAILED" and "1 of 2 trials failed" in p.data.tags["lagm.error"]


def test_a_deterministic_error_in_a_multi_worker_trial_is_not_retried_either(ray_local, tiny_generator_path,
                                                                             tmp_path):
    """Two Ray Train workers per trial: the error reaches the trial wrapped in Train's WorkerGroupError; Train
    itself retries nothing (max_failures=0 inside a sweep) and Tune's NoRetry sees through the wrapper."""
    path = tiny_sweep(tmp_path, tiny_generator_path, name="det2", space={"train.K": {"grid": [2]}}, max_failures=2,
                      resources={"workers": 2, "cpus_per_worker": 0.5})
    attempts = tmp_path / "attempts"
    drill = RaiseAtStart(ConfigError("train.K: 2 is refused by this drill"), "train.K", 2, attempts)
    args = argparse.Namespace(storage_path=str(tmp_path / "ray"), resume=False)
    results, parent = sweep_command.run(load_sweep(path), args, extra_callbacks=[drill])
    assert attempts.read_text().splitlines() == ["train.K=2"]  # one attempt (rank 0 records it)
    (error,) = [r.error for r in results if r.error is not None]
    assert is_deterministic(error) and sweep_command.exit_status(results) == 1
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(parent).info.status == "FAILED"


def test_a_driver_that_raises_closes_the_parent_failed(ray_local, tiny_generator_path, tmp_path):
    spec = load_sweep(tiny_sweep(tmp_path, tiny_generator_path, name="raises", space={"train.K": {"grid": [1]}}))
    spec.metric = "no/such_metric"  # Tune raises in the driver at the trial's first report
    with pytest.raises(Exception, match="no/such_metric"):
        run_sweep(spec, storage_path=str(tmp_path / "ray"), verbose=0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name(spec.experiment_name).experiment_id],
                                   "tags.`lagm.role` = 'sweep'")
    assert parent.info.status == "FAILED" and "no/such_metric" in parent.data.tags["lagm.error"]
    (kid,) = children(uri, parent.info.run_id)
    assert kid.info.status == "KILLED", kid.data.tags.get("lagm.error")


def test_an_existing_sweep_is_restored_only_with_resume(tmp_path, tiny_generator_path, capsys):
    """No Ray needed: the refusal comes first. A planted tuner.pkl would write a file when unpickled."""
    path = tiny_sweep(tmp_path, tiny_generator_path, name="planted")
    exp = tmp_path / "ray" / "planted"
    exp.mkdir(parents=True)
    owned = tmp_path / "owned"
    payload = f"import pathlib; pathlib.Path({str(owned)!r}).write_text('ran')"
    (exp / "tuner.pkl").write_bytes(b"cbuiltins\nexec\n(S" + repr(payload).encode() + b"\ntR.")
    rc = sweep_command.main(path, "sweep", ["--storage-path", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(exp) in err[0] and "--resume" in err[0] and "--name" in err[0]
    assert not owned.exists()


DRIVER = r'''
import sys, time
from pathlib import Path

from lagm_ray.callbacks import Callback
from lagm_ray.distributed.sweep import run_sweep
from lagm_ray.sweep_spec import load_sweep


class Trace(Callback):
    """Notes every training start (K and its first step) in a file; holds the K=2 trial at step 2 once,
    after it logged step 1, so that the test can kill the driver there."""

    def __init__(self, log, hold):
        self.log, self.hold = Path(log), Path(hold)

    def on_start(self, trainer):
        self.K = trainer.cfg.train.K
        with self.log.open("a") as f:
            f.write(f"{self.K} {trainer.step}\n")

    def on_log(self, step, metrics):
        if self.K == 2 and step == 2 and not self.hold.exists():
            self.hold.write_text("held")
            time.sleep(600)


spec, storage, log, hold, resume = sys.argv[1:6]
results, parent = run_sweep(load_sweep(spec), storage_path=storage, resume=resume == "resume", verbose=0,
                            extra_callbacks=[Trace(log, hold)])
print("RESULT", parent, sum(r.error is not None for r in results))
'''


def start_driver(tmp_path, path, env, mode="new"):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cmd = [sys.executable, str(script), str(path), str(tmp_path / "ray"), str(tmp_path / "trace"),
           str(tmp_path / "held"), mode]
    log = open(tmp_path / f"{mode}.log", "w")
    return cmd, subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(cond, proc, log: Path, what: str, seconds=120):
    deadline = time.time() + seconds
    while not cond():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"never {what}: " + log.read_text()[-3000:]
        time.sleep(0.2)


def driver_env(ray_local, **extra):
    """The driver joins the session's local Ray (starting one of its own takes 15 s or more on 2 busy
    cores); killing the driver ends its trials, as Ray ends every actor of a job whose driver died."""
    return {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, **extra}


def test_restore_after_a_driver_kill_right_after_a_trial_finished(ray_local, tiny_generator_path, tmp_path):
    """Trial K=1 finishes; the driver is SIGKILLed while K=2 has logged step 1. Tune's saved state still
    has K=1 running (from its step-4 checkpoint, the last state save): the restore must not train it
    again, K=2 restarts from step 0 in the run that holds step 1, and no step is logged twice."""
    path = tiny_sweep(tmp_path, tiny_generator_path, name="fin", steps=6, max_concurrent_trials=1,
                      overrides={"train.eval_interval": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Tune saves its state every 10 s or more, and at every 2nd checkpoint of a trial (num_to_keep);
    # no periodic save here, so the saved state is the one of K=1's step-4 checkpoint whatever the timing.
    cmd, first = start_driver(tmp_path, path, driver_env(ray_local, TUNE_GLOBAL_CHECKPOINT_S="3600"))
    try:
        wait_for((tmp_path / "held").exists, first, tmp_path / "new.log", "reached K=2's step 2")
    finally:
        first.kill()  # SIGKILL
        first.wait()
    exp = tmp_path / "ray" / "fin"
    parent = json.loads((exp / "lagm_sweep.json").read_text())["parent_run_id"]
    before = {r.data.params["train.K"]: r.info.status for r in children(uri, parent)}
    assert before == {"1": "FINISHED", "2": "RUNNING"}, before

    second = subprocess.run(cmd[:-1] + ["resume"], cwd=tmp_path, env=driver_env(ray_local), capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"RESULT {parent} 0" in second.stdout
    # K=1 trained once; K=2 twice from step 0 (killed before its first checkpoint)
    assert sorted((tmp_path / "trace").read_text().splitlines()) == ["1 0", "2 0", "2 0"]
    client = MlflowClient(uri)
    kids = children(uri, parent)
    assert sorted(r.data.params["train.K"] for r in kids) == ["1", "2"]
    for r in kids:
        assert r.info.status == "FINISHED" and "result/test/fg_miou" in r.data.metrics
        for key in r.data.metrics:  # one value per step, for every metric (result/ ones: one value)
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert len(steps) == len(set(steps)), (r.data.params["train.K"], key, steps)
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "time/step_s")) == [1, 2, 3, 4, 5, 6]
    p = client.get_run(parent)
    assert p.info.status == "FINISHED" and "lagm.error" not in p.data.tags
    assert len(client.search_runs([p.info.experiment_id], "tags.`lagm.role` = 'sweep'")) == 1


def test_sigterm_closes_the_parent_and_children_killed(ray_local, tiny_generator_path, tmp_path):
    path = tiny_sweep(tmp_path, tiny_generator_path, name="term", steps=6, max_concurrent_trials=1,
                      overrides={"train.eval_interval": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd, driver = start_driver(tmp_path, path, driver_env(ray_local))
    try:
        wait_for((tmp_path / "held").exists, driver, tmp_path / "new.log", "reached K=2's step 2")
        driver.send_signal(signal.SIGTERM)  # as a scheduler stopping a job would
        rc = driver.wait(timeout=120)
    finally:
        driver.kill()
    assert rc != 0, (tmp_path / "new.log").read_text()[-3000:]
    parent = json.loads((tmp_path / "ray" / "term" / "lagm_sweep.json").read_text())["parent_run_id"]
    p = MlflowClient(uri).get_run(parent)
    assert p.info.status == "KILLED" and "interrupted" in p.data.tags["lagm.error"]
    status = {r.data.params["train.K"]: r.info.status for r in children(uri, parent)}
    assert status == {"1": "FINISHED", "2": "KILLED"}, status
