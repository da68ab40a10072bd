"""cluster/: the launcher and KubeRay manifests hold what lagm_ray relies on; and `ray job submit`
against a real local head runs an experiment end to end."""

from __future__ import annotations

import json
import os
import re
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
    assert "ray start --head" in head
    # MLflow: a tracking server with a database backend and artifacts on shared storage, and the
    # environment the driver reads
    assert "mlflow server" in head and "--artifacts-destination s3://" in head
    assert "MLFLOW_TRACKING_URI=http://" in head and "LAGM_STORAGE_PATH=s3://" in head
    assert head.index("mlflow server") < head.index("ray start --head")


# ---------------------------------------------------------------------------------------------
# Trust boundaries: who can reach the dashboard (whose Jobs API runs any code) and MLflow, and where
# the credentials come from

ALL_INTERFACES = re.compile(r"0\.0\.0\.0|(?<![\w:])::(?![\w:])|\[::\]")
# scheme://user:password@host, and NAME=value or NAME: value for a secret-looking NAME
URI_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@")
SECRET_ASSIGNMENT = re.compile(r"(?i)\b[\w-]*(password|passwd|secret|access_key)[\w-]*\s*[=:]\s*['\"]?[^\s'\"$]+")


def strings_in(doc) -> list[str]:
    """Every key and value of a parsed YAML document, as strings (comments are not part of it)."""
    if isinstance(doc, dict):
        return [s for k, v in doc.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in strings_in(v)]
    return [] if doc is None else [str(doc)]


def trust_problems(text: str) -> list[str]:
    """What a cluster file must not hold: a listener on every interface, or a credential in clear."""
    problems = []
    for doc in yaml.safe_load_all(text):
        for s in strings_in(doc):
            if ALL_INTERFACES.search(s):
                problems.append(f"binds every interface: {s!r}")
            if URI_WITH_PASSWORD.search(s) or SECRET_ASSIGNMENT.search(s):
                problems.append(f"credential in the file: {s!r}")
        for e in env_entries(doc):
            if re.search(r"(?i)password|secret|token|key", str(e["name"])) and "value" in e:
                problems.append(f"env {e['name']} has a literal value, not valueFrom a Secret")
    return problems


def env_entries(doc) -> list[dict]:
    """Every Kubernetes-style {name, value | valueFrom} entry in a document."""
    if isinstance(doc, dict):
        here = [doc] if "name" in doc and ("value" in doc or "valueFrom" in doc) else []
        return here + [e for v in doc.values() for e in env_entries(v)]
    if isinstance(doc, list):
        return [e for v in doc for e in env_entries(v)]
    return []


def test_the_trust_check_catches_what_the_files_used_to_hold():
    """The check below is not vacuous: the launcher's former MLflow and dashboard lines fail it."""
    before = yaml.safe_dump({"head_start_ray_commands": [
        "nohup mlflow server --host 0.0.0.0 --port 5000 "
        "--backend-store-uri postgresql://mlflow:mlflow@mlflow-db.internal:5432/mlflow",
        "ray start --head --port=6379 --dashboard-host=0.0.0.0"]})
    problems = trust_problems(before)
    assert sum("binds every interface" in p for p in problems) == 2
    assert sum("credential" in p for p in problems) == 1
    assert trust_problems("rayStartParams: {dashboard-host: '::'}")
    assert trust_problems("env: [{name: DB_PASSWORD, value: hunter2}]")
    assert trust_problems("containers: [{name: c, env: [{name: MLFLOW_TRACKING_PASSWORD, value: x}]}]")
    assert not trust_problems("containers: [{name: c, env: [{name: RAY_AUTH_TOKEN, valueFrom: "
                              "{secretKeyRef: {name: s, key: auth_token}}}]}]")


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTER.glob("*.yaml")))
def test_cluster_files_bind_no_public_interface_and_hold_no_credential(name):
    assert trust_problems((CLUSTER / name).read_text()) == []


def test_launcher_dashboard_on_loopback_mlflow_on_the_private_address_secrets_from_files():
    c = load("ray-cluster.yaml")
    head = c["head_start_ray_commands"]
    ray_start = next(cmd for cmd in head if "ray start --head" in cmd)
    assert "--dashboard-host=127.0.0.1" in ray_start  # reached through `ray dashboard` (an SSH tunnel)
    mlflow = next(cmd for cmd in head if "mlflow server" in cmd)
    assert "--host \"$(hostname -I | awk '{print $1}')\"" in mlflow  # the other nodes log to it
    assert "MLFLOW_TRACKING_URI=http://$(hostname -I | awk '{print $1}'):5000" in ray_start
    # The database URI (password included) reaches the server's environment from a file the operator
    # keeps, never its command line.
    assert "--backend-store-uri" not in mlflow and ". ~/.lagm/mlflow.env" in mlflow
    mounts = c["file_mounts"]
    assert mounts["/home/ubuntu/.lagm/mlflow.env"] == "~/.lagm/mlflow.env"
    # Token authentication on every node: the token file and RAY_AUTH_MODE=token in every shell.
    assert mounts["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in cmd and ".bashrc" in cmd for cmd in c["initialization_commands"])
    for cmd in (c["initialization_commands"] + c["setup_commands"] + head + c["worker_start_ray_commands"]):
        out = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert out.returncode == 0, (cmd, out.stderr)


def first_address() -> str | None:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else None


@pytest.mark.skipif(shutil.which("bash") is None or first_address() is None, reason="needs bash and `hostname -I`")
def test_launcher_mlflow_command_runs_with_the_uri_from_the_env_file(tmp_path):
    """The head's MLflow command as the launcher runs it, with a stand-in `mlflow` that records what it
    was given: the host is the private address, the database URI arrives in the environment only, and
    without ~/.lagm/mlflow.env the command fails with a message instead of starting a server."""
    cmd = next(c for c in load("ray-cluster.yaml")["head_start_ray_commands"] if "mlflow server" in c)
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    record = tmp_path / "mlflow-called.json"
    stub = bin_dir / "mlflow"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv[1:], 'uri': os.environ.get('MLFLOW_BACKEND_STORE_URI')}}, "
                    f"open({str(record)!r}, 'w'))\n")
    stub.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "does not set MLFLOW_BACKEND_STORE_URI" in out.stderr
    time.sleep(0.5)
    assert not record.exists()

    uri = "postgresql://lagm:s3cr%40t@db.internal:5432/mlflow"
    (home / ".lagm").mkdir()
    (home / ".lagm" / "mlflow.env").write_text(f"MLFLOW_BACKEND_STORE_URI='{uri}'\n")
    out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    deadline = time.time() + 20
    while not record.exists() and time.time() < deadline:  # the server is started in the background
        time.sleep(0.2)
    called = json.loads(record.read_text())
    assert called["uri"] == uri and not any("s3cr" in a for a in called["argv"])
    argv = called["argv"]
    assert argv[0] == "server" and argv[argv.index("--host") + 1] == first_address()


def test_kuberay_token_auth_and_no_exposed_service():
    for spec in (load("kuberay-raycluster.yaml")["spec"], load("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"]):
        assert spec["authOptions"]["mode"] == "token"  # KubeRay makes the token Secret and hands it out
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)


def test_docs_reach_the_uis_through_tunnels():
    """The README and docs/cluster.md send nobody to the head's dashboard port directly."""
    for doc in (ROOT / "README.md", ROOT / "docs" / "cluster.md"):
        text = doc.read_text()
        assert "<head>:8265" not in text and "0.0.0.0" not in text, doc
    cluster_md = (ROOT / "docs" / "cluster.md").read_text()
    for how in ("ray dashboard cluster/ray-cluster.yaml", "kubectl port-forward", "RAY_AUTH_MODE=token"):
        assert how in cluster_md, how


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
        (parent,) = client.search_runs([client.get_experiment_by_name("ablation_k-quick").experiment_id],
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
