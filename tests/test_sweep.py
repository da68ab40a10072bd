"""Ray Tune sweeps for real: a local 2-CPU Ray, MLflow on SQLite, killed trials and a killed driver."""

from __future__ import annotations

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

from lagm_ray.distributed.faults import KillAfterCheckpoint
from lagm_ray.distributed.sweep import run_sweep
from lagm_ray.sweep_spec import load_sweep
from lagm_ray.trainer import Trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def children(uri: str, parent: str):
    c = MlflowClient(uri)
    exp = c.get_run(parent).info.experiment_id
    return c.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_grid_sweep_nests_trials_and_writes_a_summary(finished_sweep):
    tmp_path, uri, parent, results = finished_sweep
    assert len(results) == 2 and not [r for r in results if r.error]
    client = MlflowClient(uri)
    p = client.get_run(parent)
    assert p.data.tags["lagm.sweep"] == "tiny" and p.info.status == "FINISHED"
    assert p.data.tags["mlflow.source.name"] == str(tmp_path / "tiny.yaml")
    # its own experiment, named after the sweep (the base config says "sweeps")
    assert client.get_experiment(p.info.experiment_id).name == "tiny"
    kids = children(uri, parent)
    assert sorted(int(r.data.params["train.K"]) for r in kids) == [1, 2]
    for r in kids:
        assert r.info.status == "FINISHED" and "result/test/fg_miou" in r.data.metrics
        assert r.info.run_name.endswith(f"K={r.data.params['train.K']}")
        # the swept value as a tag and a param; no per-trial bookkeeping param to show up as an axis
        assert r.data.tags["lagm.swept"] == f"train.K={r.data.params['train.K']}"
        assert "run.name" not in r.data.params and "tracking.parent_run_id" not in r.data.params
        # the UI's Source: the sweep file, not Ray's default_worker.py
        assert r.data.tags["mlflow.source.name"] == str(tmp_path / "tiny.yaml")
        pictures = [a.path for a in client.list_artifacts(r.info.run_id, "pictures")]
        assert any(x.startswith("pictures/samples_step") and x.endswith(".png") for x in pictures)
    # the sweep's metric under its one name in every child and in the parent (the best child's value)
    for r in kids:
        assert r.data.metrics["best/val_fg_miou"] == pytest.approx(r.data.metrics["result/val/fg_miou"])
    best = max(kids, key=lambda r: r.data.metrics["best/val_fg_miou"])
    p = client.get_run(parent)
    assert p.data.metrics["best/val_fg_miou"] == pytest.approx(best.data.metrics["best/val_fg_miou"])
    assert p.data.metrics["result/test/fg_miou"] == pytest.approx(best.data.metrics["result/test/fg_miou"])
    assert p.data.tags["lagm.best_trial"] == best.info.run_name
    assert not [k for k in p.data.metrics if k.startswith("best_trial/")]
    # the paper's values beside ours on the parent: metrics (fractions, like ours) and paper.json
    assert p.data.metrics["paper/1/miou"] == pytest.approx(0.3371)
    assert p.data.metrics["paper/1/time_per_step_rel"] == 1.0 and "paper/2/miou" not in p.data.metrics
    assert p.data.tags["lagm.paper"] == "a made-up table"
    paper = json.loads(Path(client.download_artifacts(parent, "paper.json", str(tmp_path))).read_text())
    assert paper["values"] == {"1": [1.0, "33.71 ± 0.77"], "2": [0.5, "not reported"]}
    summary = {a.path for a in client.list_artifacts(parent, "summary")}
    assert summary == {"summary/summary.csv", "summary/summary.md", "summary/summary.png"}
    csv = (tmp_path / "ray" / "tiny" / "summary.csv").read_text().splitlines()
    assert len(csv) == 3 and "train.K" in csv[0] and "test FG-mIoU" in csv[0]

    # `lagm report` reads the same sweep back from MLflow by name
    out = subprocess.run([sys.executable, "-m", "lagm_ray.cli", "report", "tiny", "--out", str(tmp_path / "rep"),
                          "--no-log"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rep" / "summary.png").stat().st_size > 1000
    assert "| train.K |" in (tmp_path / "rep" / "summary.md").read_text()


def test_optuna_sweep_with_asha(ray_local, tiny_generator_path, tmp_path):
    path = tiny_sweep(tmp_path, tiny_generator_path, name="tpe", searcher="optuna", num_samples=3, steps=6,
                      space={"train.annotator_optim.lr": {"loguniform": [1e-4, 1e-2]},
                             "annotator.width": {"choice": [4, 8]}},
                      scheduler={"asha": {"grace_period": 1, "reduction_factor": 2}})
    results, parent = run_sweep(load_sweep(path), storage_path=str(tmp_path / "ray"), verbose=0)
    assert len(results) == 3 and not [r for r in results if r.error]
    kids = children(f"sqlite:///{tmp_path / 'mlflow.db'}", parent)
    assert len(kids) == 3
    lrs = [float(r.data.params["train.annotator_optim.lr"]) for r in kids]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 3
    assert all(r.data.params["annotator.width"] in ("4", "8") for r in kids)
    # trials ASHA stopped early are closed too, with their best-so-far as results
    assert all(r.info.status == "FINISHED" and "result/test/fg_miou" in r.data.metrics for r in kids)
    assert all("best/val_fg_miou" in r.data.metrics for r in kids)


def test_killed_trial_resumes_from_its_checkpoint_to_the_clean_result(ray_local, tiny_generator_path, tmp_path):
    marker = tmp_path / "killed-once"
    killed = load_sweep(tiny_sweep(tmp_path, tiny_generator_path, name="killed", space={"train.K": {"grid": [1]}}))
    results, p_killed = run_sweep(killed, storage_path=str(tmp_path / "ray"), verbose=0,
                                  extra_callbacks=[KillAfterCheckpoint(3, marker)])
    assert marker.exists() and not [r for r in results if r.error]  # it died at step 3, then finished
    (b,) = children(f"sqlite:///{tmp_path / 'mlflow.db'}", p_killed)  # still one child run, not two
    # the clean result: the same trial as a plain, uninterrupted run in this process
    clean = Trainer(killed.base.replace({"train.K": 1, "tracking.enabled": False})).fit()
    assert b.data.metrics["result/best_step"] == clean.best_step
    for key in ("test/fg_miou", "val/fg_miou", "test/miou"):
        assert b.data.metrics[f"result/{key}"] == clean.metrics[key], key


def test_killed_driver_is_restored_with_every_trial_once(tiny_generator_path, tmp_path):
    """`lagm sweep` in its own process group (its own local Ray), SIGKILLed mid-sweep, then run again with
    --resume (without it, the sweep already there is refused)."""
    path = tiny_sweep(tmp_path, tiny_generator_path, name="drv", steps=9,
                      space={"train.K": {"grid": [1, 2, 3]}}, max_concurrent_trials=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", LAGM_STORAGE_PATH=str(tmp_path / "ray"))
    cmd = [sys.executable, "-m", "lagm_ray.cli", "sweep", str(path)]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    exp = tmp_path / "ray" / "drv"
    deadline = time.time() + 240
    # wait until the second trial has checkpointed, so one trial is done, one is mid-run, one not started
    while time.time() < deadline and not list(exp.glob("00001-*/checkpoint_*")):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    assert list(exp.glob("00001-*/checkpoint_*")), "the sweep never reached its second trial"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    parent = json.loads((exp / "lagm_sweep.json").read_text())["parent_run_id"]

    refused = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--resume" in refused.stdout + refused.stderr  # restores only when asked
    second = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "3 trials (0 failed)" in second.stdout
    out = " ".join(second.stdout.split())  # rich wraps at the terminal width
    assert "| trial | status | train.K | val FG-mIoU % | test FG-mIoU % |" in out  # the console says its unit
    assert "MLflow holds the same values as fractions" in out and "MLflow experiment drv," in out
    kids = children(env["MLFLOW_TRACKING_URI"], parent)
    trial_ids = [r.data.tags["lagm.trial_id"] for r in kids]
    assert len(kids) == 3 and len(set(trial_ids)) == 3  # no duplicate child runs after the restore
    assert sorted(int(r.data.params["train.K"]) for r in kids) == [1, 2, 3]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for r in kids:  # every trial ran to its last step and closed its run
        assert r.info.status == "FINISHED" and "result/test/fg_miou" in r.data.metrics
        assert max(m.step for m in client.get_metric_history(r.info.run_id, "time/step_s")) == 9
    sweeps = client.search_runs([client.get_run(parent).info.experiment_id], "tags.`lagm.role` = 'sweep'")
    assert [r.info.run_id for r in sweeps] == [parent]  # the restore reused the parent run


TWO_NODES = r'''
import sys, json
import ray
from ray.cluster_utils import Cluster
from lagm_ray.sweep_spec import load_sweep
from lagm_ray.distributed.sweep import run_sweep

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
results, parent = run_sweep(load_sweep(sys.argv[1]), storage_path=sys.argv[2], verbose=0)
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
print("RESULT", json.dumps({"parent": parent, "errors": sum(r.error is not None for r in results), "nodes": nodes}))
ray.shutdown()
cluster.shutdown()
'''


def test_trials_land_on_both_nodes_of_a_two_node_cluster(tiny_generator_path, tmp_path):
    path = tiny_sweep(tmp_path, tiny_generator_path, name="twonode", steps=9)
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODES)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "ray")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert res["errors"] == 0 and len(res["nodes"]) == 2
    kids = children(env["MLFLOW_TRACKING_URI"], res["parent"])
    assert {r.data.tags["lagm.node"] for r in kids} == set(res["nodes"])  # one trial on each node
