"""Integration through the real `lagm` console script, with MLflow on a real SQLite store."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import lagm_cli

LAGM = [sys.executable, "-m", "lagm_ray.cli"]


def run(args, cwd, **env):
    e = {**os.environ, **env}
    return subprocess.run(LAGM + args, cwd=cwd, capture_output=True, text=True, env=e, timeout=600)


def test_help_lists_subcommands(tmp_path):
    out = run(["--help"], tmp_path)
    assert out.returncode == 0
    for cmd in ("train", "evaluate", "quickstart", "train-generator", "render"):
        assert cmd in out.stdout


def test_train_then_evaluate_with_mlflow(tiny_config, tmp_path):
    cfg = tiny_config(**{"tracking.enabled": True, "tracking.experiment": "cli-test"})
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(cfg.to_yaml())
    out = run(["train", "--config", str(cfg_file), "--set", "train.K=2"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = Path(cfg.run.output_dir) / "tiny"
    assert (run_dir / "last.pt").exists() and (run_dir / "best.pt").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert 0 <= result["test/fg_miou"] <= 1

    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(experiment_names=["cli-test"], output_format="list")
    assert len(runs) == 1
    r = runs[0]
    assert r.data.params["train.K"] == "2" and r.data.params["segmentor.kind"] == "unet"
    assert "git.commit" in r.data.tags or "lagm_ray.version" in r.data.tags
    client = mlflow.MlflowClient(cfg.tracking.uri)
    history = client.get_metric_history(r.info.run_id, "loss/gm")
    assert [m.step for m in history] == list(range(1, 7))
    assert client.get_metric_history(r.info.run_id, "time/step_s")
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "pictures", "checkpoints"} <= arts
    pics = {a.path for a in client.list_artifacts(r.info.run_id, "pictures")}
    assert any("samples" in p for p in pics) and any("confusion" in p for p in pics)

    out = run(["evaluate", str(run_dir / "best.pt"), "--downstream", "--set", "eval.downstream_images=8",
               "--set", "eval.downstream_epochs=1", "--set", "eval.downstream_batch_size=4"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "downstream/test/fg_miou" in out.stdout and "test/fg_miou" in out.stdout


@pytest.mark.parametrize("text, needle", [
    ("train:\n  K: 0\n", "train.K"),
    ("train:\n  matched_blocks: [Res9]\n", "unknown block 'Res9'"),
    ("train: [1, 2\n", "invalid YAML"),
])
def test_bad_config_exits_2_with_a_clear_message(tiny_config, tmp_path, text, needle):
    import yaml

    base = yaml.safe_load(tiny_config().to_yaml())
    extra = yaml.safe_load(text) if "[1, 2\n" not in text else None
    p = tmp_path / "bad.yaml"
    if extra is None:
        p.write_text(text)
    else:
        base["train"].update(extra["train"])
        p.write_text(yaml.safe_dump(base))
    out = run(["train", "--config", str(p)], tmp_path)
    assert out.returncode == 2
    assert needle in out.stdout + out.stderr


def test_render_grid_of_a_given_generator(tiny_generator_path, tmp_path):
    """`lagm render --generator`: renders, masks and that generator's samples, one row per scene."""
    from PIL import Image

    out = tmp_path / "world.png"
    res = lagm_cli(["render", "--n", "3", "--generator", tiny_generator_path, "--out", str(out)])
    assert res.returncode == 0, res.stdout + res.stderr
    with Image.open(out) as im:
        with_generator = im.size
    res = lagm_cli(["render", "--n", "3", "--no-generated", "--resolution", "32", "--out", str(out)])
    assert res.returncode == 0, res.stdout + res.stderr
    with Image.open(out) as im:
        assert im.size[0] < with_generator[0]  # two columns fewer: no generated image, no true mask
