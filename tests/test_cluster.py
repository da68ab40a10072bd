"""cluster/: the launcher and KubeRay manifests hold what lagm_ray relies on; and `ray job submit`
against a real local head runs an experiment end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def env_of(container) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_cluster_launcher_yaml():
    c = load("ray-cluster.yaml")
    types = c["available_node_types"]
    assert c["head_node_type"] in types and c["provider"]["type"]
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    assert c["max_workers"] >= max(t["max_workers"] for t in gpu)
    setup = " ".join(c["setup_commands"])
    assert setup.index("torch") < setup.index("lagm_ray")  # a CUDA torch before the project
    head = " ".join(c["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=0.0.0.0" in head
    # MLflow: a tracking server with a database backend and artifacts on shared storage, and the
    # environment the driver reads
    assert "mlflow server" in head and "--backend-store-uri postgresql://" in head
    assert "--artifacts-destination s3://" in head
    assert "MLFLOW_TRACKING_URI=http://" in head and "LAGM_STORAGE_PATH=s3://" in head
    assert head.index("mlflow server") < head.index("ray start --head")


def test_kuberay_raycluster_and_rayjob():
    rc = load("kuberay-raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    job = load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("python experiments/ablation_k.py")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert {"MLFLOW_TRACKING_URI", "LAGM_STORAGE_PATH"} <= set(runtime_env["env_vars"])
    for spec in (rc["spec"], job["spec"]["rayClusterSpec"]):
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # trials go to the GPU workers
        assert {"MLFLOW_TRACKING_URI", "LAGM_STORAGE_PATH"} <= set(env_of(head))
        assert any(p["containerPort"] == 8265 for p in head["ports"]) if "ports" in head else True
        for group in spec["workerGroupSpecs"]:
            w = group["template"]["spec"]["containers"][0]
            assert int(w["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert group["maxReplicas"] >= group["replicas"] >= group.get("minReplicas", 0)
        assert spec["rayVersion"] == rc["spec"]["rayVersion"]


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (from /proc; Ray retitles its processes, so names do not help)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def stop_session(sid: int) -> None:
    """Stop the head this test started and everything it spawned, and nothing else (`ray stop` would
    stop every Ray on the machine)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while session_pids(sid) and time.time() < deadline:
            time.sleep(0.3)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_runs_the_k_ablation_on_a_local_head(tmp_path):
    from mlflow.tracking import MlflowClient

    ray_bin = Path(sys.executable).parent / "ray"
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths are length-limited
    # Every port of this head chosen free: the defaults (e.g. the dashboard agent's 52365) may be held
    # by another Ray on the machine, such as the test session's own, and then no job can be submitted.
    port, dash, agent, agent_grpc, env_agent, metrics, client = (free_port() for _ in range(7))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray 2.60 turns token authentication on for `ray start` whenever ~/.ray/auth_token exists (a
    # local ray.init() writes one); `ray job submit` then needs the token too. Use our own token.
    token = tmp_path / "ray_token"
    token.write_text(os.urandom(16).hex())
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    # --block keeps `ray start` in the foreground as the leader of its own session: every process of
    # this head (GCS, raylet, dashboard, workers, the job's driver) is in that session.
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--num-cpus", "2",
                             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--port", str(port),
                             "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent),
                             "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
                             "--metrics-export-port", str(metrics), "--ray-client-server-port", str(client),
                             "--temp-dir", temp_dir, "--include-dashboard", "true",
                             "--disable-usage-stats"], env=env, stdout=open(tmp_path / "head.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:  # started, and the dashboard (which serves the job API) accepts connections
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", dash), timeout=1):
                    if "Ray runtime started" in (tmp_path / "head.log").read_text():
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the Ray head never came up: " + (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": uri, "LAGM_STORAGE_PATH": str(tmp_path / "ray")}}
        cmd = [str(ray_bin), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps(runtime_env), "--",
               sys.executable, "experiments/ablation_k.py", "--quick", "--steps", "2",
               "--set", "train.eval_interval=2", "--set", "data.num_val=8", "--set", "data.num_test=8",
               "--set", "eval.num_annotator_samples=4"]
        t0 = time.time()
        for _ in range(20):  # the job agent registers a few seconds after the dashboard answers
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if "No available agent to submit job" not in out.stderr + out.stdout:
                break
            time.sleep(3)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
        assert "succeeded" in (out.stdout + out.stderr).lower()
        assert "5 trials (0 failed)" in out.stdout, out.stdout[-3000:]
        client = MlflowClient(uri)
        (parent,) = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id],
                                       "tags.`lagm.role` = 'sweep'")
        assert parent.data.tags["lagm.sweep"] == "ablation_k-quick"
        kids = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted(int(r.data.params["train.K"]) for r in kids) == [1, 2, 5, 10, 20]
        assert "summary/summary.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
        print(f"ray job submit took {time.time() - t0:.0f} s")
    finally:
        stop_session(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)
