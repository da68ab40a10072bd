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
    # evaluate logs its own run (tracked by default, in the run's experiment or --experiment's)
    evaluated = mlflow.search_runs(experiment_names=["cli-test"], output_format="list",
                                   filter_string="attributes.run_name = 'evaluate-tiny'")
    assert len(evaluated) == 1 and evaluated[0].info.status == "FINISHED"
    assert evaluated[0].data.params["checkpoint"] == str((run_dir / "best.pt").resolve())
    assert evaluated[0].data.metrics["downstream/test/fg_miou"] == result_metric(out.stdout)
    out = run(["evaluate", str(run_dir / "best.pt"), "--no-track", "--experiment", "never"], tmp_path)
    assert out.returncode == 0 and not mlflow.get_experiment_by_name("never")


def result_metric(stdout: str) -> float:
    """downstream/test/fg_miou as the table prints it (percent, 2 decimals), as a fraction."""
    line = next(line for line in stdout.splitlines() if "downstream/test/fg_miou" in line)
    return pytest.approx(float(line.split()[-2]) / 100, abs=5e-5)


def test_version_short_help_and_completion():
    out = lagm_cli(["--version"])
    assert out.returncode == 0 and out.stdout.startswith("lagm_ray 0.")
    short, long = lagm_cli(["train", "-h"]), lagm_cli(["train", "--help"])
    assert short.returncode == 0 and short.stdout == long.stdout and "--resume" in short.stdout
    assert "--install-completion" in lagm_cli(["--help"]).stdout
    for command in ("train", "evaluate", "downstream", "quickstart", "generate", "train-generator"):
        text = lagm_cli([command, "--help"]).stdout
        assert "--track" in text and "--no-track" in text, command
    for command in ("train", "evaluate", "downstream", "generate", "train-generator", "sweep"):
        assert "--experiment" in lagm_cli([command, "--help"]).stdout, command
    sweep = lagm_cli(["sweep", "--help"]).stdout  # its flags declared, not parsed by hand after typer
    for flag in ("--quick", "--steps", "--trials", "--concurrency", "--set", "--name", "--storage-path",
                 "--resume", "--no-track", "--verbose"):
        assert flag in sweep, flag
    assert lagm_cli(["sweep", "x.yaml", "--no-such-flag"]).returncode == 2


def test_config_show_prints_the_resolved_config_and_schema_its_json_schema(tmp_path):
    import yaml

    path = tmp_path / "my.yaml"
    path.write_text("train: {K: 5, matched_blocks: [All]}\nsegmentor: {kind: unet, width: 8}\n")
    out = lagm_cli(["config", "show", "-c", path, "--set", "train.steps=7"])
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["train"]["K"] == 5 and shown["train"]["steps"] == 7 and shown["segmentor"]["width"] == 8
    assert shown["train"]["annotator_optim"]["name"] == "sgd"  # defaults filled in
    from lagm_ray.methods import load_config

    assert load_config(None, []).to_yaml() == lagm_cli(["config", "show"]).stdout
    bad = lagm_cli(["config", "show", "--set", "train.K=0"])
    assert bad.returncode == 2 and "train.K" in bad.stderr
    schema = json.loads(lagm_cli(["config", "schema"]).stdout)
    train = schema["$defs"][schema["properties"]["train"]["$ref"].rsplit("/", 1)[1]]
    assert train["properties"]["K"]["default"] == 1 and "steps" in train["properties"]


def test_quickstart_writes_its_results_and_nests_runs_in_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = ["train.steps=2", "train.eval_interval=2", "train.checkpoint_interval=2", "train.log_interval=1",
            "data.num_val=4", "data.num_test=4", "eval.num_annotator_samples=4"]
    out = run(["quickstart", "--quick", *[a for kv in tiny for a in ("--set", kv)]], tmp_path,
              MLFLOW_TRACKING_URI=uri)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "quickstart_results.json").read_text())
    for key in ("lagm_fg_miou_2", "lagm_fg_miou_10", "supervised_fg_miou_2", "supervised_fg_miou_10",
                "annotator_miou_vs_truth_10"):
        assert 0 <= results[key] <= 1, key
    assert "mlflow ui" in out.stdout

    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("lagm-quickstart")
    (parent,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'quickstart'")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["lagm_fg_miou_10"] == pytest.approx(results["lagm_fg_miou_10"])
    assert "quickstart_results.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.params["train.method"] + r.data.params["data.num_labelled"] for r in kids) == [
        "lagm10", "lagm2", "supervised10", "supervised2"]


def test_a_failing_quickstart_training_stops_it_and_marks_the_parent_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run(["quickstart", "--quick", "--set", "data.num_labelled=5000"], tmp_path, MLFLOW_TRACKING_URI=uri)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "data.num_labelled: 5000 labelled images requested" in out.stdout + out.stderr
    assert not (tmp_path / "quickstart_results.json").exists()
    import mlflow

    client = mlflow.MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("lagm-quickstart").experiment_id],
                                   "attributes.run_name = 'quickstart'")
    assert parent.info.status == "FAILED"


def test_train_generator_logs_its_run_to_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run(["train-generator", "--resolution", "16", "--steps", "3", "--batch-size", "2",
               "--out", str(tmp_path / "g.pt")], tmp_path, MLFLOW_TRACKING_URI=uri)
    assert out.returncode == 0, out.stdout + out.stderr
    import mlflow

    client = mlflow.MlflowClient(uri)
    (r,) = client.search_runs([client.get_experiment_by_name("lagm-generators").experiment_id])
    assert r.info.status == "FINISHED" and r.info.run_name == "toy-generator-faces-16px"
    assert r.data.params["steps"] == "3" and r.data.params["resolution"] == "16"
    assert 0 < r.data.metrics["heldout_l1"] < 2  # L1 between images in [-1, 1]


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
