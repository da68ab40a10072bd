"""search_spaces/ files: every shipped one loads; bad ones fail naming the file and key."""

from pathlib import Path

import pytest
import yaml

from lagm_ray.errors import ConfigError
from lagm_ray.sweep_spec import load_sweep

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_sweeps_load_in_both_budgets(path):
    full, quick = load_sweep(path), load_sweep(path, quick=True)
    assert full.space and quick.base.train.steps < full.base.train.steps
    for key, dom in full.space.items():  # every grid value builds a valid trial config
        if dom.kind == "grid":
            for v in dom.values:
                full.trial_config({key: v})


def test_the_expected_sweeps_exist():
    assert {p.stem for p in SHIPPED} >= {"ablation_k", "ablation_blocks_deeplab", "ablation_blocks_unet",
                                         "ablation_resolution", "label_counts", "lagm_tpe"}
    k = load_sweep(ROOT / "search_spaces" / "ablation_k.yaml")
    assert k.space["train.K"].values == [1, 2, 5, 10, 20] and k.searcher == "grid"
    assert load_sweep(ROOT / "search_spaces" / "lagm_tpe.yaml").searcher == "optuna"


def write(tmp_path, doc) -> Path:
    p = tmp_path / "bad_sweep.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


GOOD = {"name": "s", "base": "quickstart", "space": {"train.K": {"grid": [1, 2]}}, "searcher": "grid"}


@pytest.mark.parametrize("change, needle", [
    ({"space": {"train.Kay": {"grid": [1]}}}, "unknown config key 'train.Kay'"),
    ({"space": {"train.K": {"grid": [1, 0]}}}, "train.K must be >= 1"),
    ({"space": {"train.matched_blocks": {"grid": ["Head"]}}}, "unknown block 'Head' for unet"),
    ({"space": {"train.K": {"normal": [1, 2]}}}, "space.train.K: unknown domain 'normal'"),
    ({"space": {"train.K": {"int": [5, 1]}}}, "low must be below high"),
    ({"space": {"train.annotator_optim.lr": {"loguniform": [0, 1]}}}, "bounds must be > 0"),
    ({"searcher": "optuna"}, "optuna samples; use choice instead of grid"),
    ({"searcher": "hyperband"}, "searcher must be one of"),
    ({"mode": "maximise"}, "mode must be max or min"),
    ({"base": "no_such_base"}, "base config 'no_such_base' not found"),
    ({"overrides": {"train.K": 0}}, "train.K must be >= 1"),
    ({"resources": {"gpus": 1}}, "resources takes workers"),
    ({"scheduler": {"pbt": {}}}, "scheduler must be null or"),
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"trails": 3}, "unknown sweep key 'trails'"),
])
def test_bad_sweep_names_file_and_key(tmp_path, change, needle):
    p = write(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError) as ei:
        load_sweep(p)
    assert needle in str(ei.value) and str(p) in str(ei.value)


def test_bad_yaml_and_missing_keys(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_sweep(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="missing required key 'space'"):
        load_sweep(write(tmp_path, {"name": "s"}))
    with pytest.raises(ConfigError, match="cannot read sweep file"):
        load_sweep(tmp_path / "absent.yaml")


def test_overrides_and_quick_and_trial_configs(tmp_path):
    p = write(tmp_path, {**GOOD, "overrides": {"train.steps": 50}, "quick": {"train.steps": 5}})
    assert load_sweep(p).base.train.steps == 50
    assert load_sweep(p, quick=True).base.train.steps == 5
    assert load_sweep(p, quick=True, overrides=["train.steps=7"]).base.train.steps == 7
    cfg = load_sweep(p).trial_config({"train.K": 2, "train.matched_blocks": "Up,Output"})
    assert cfg.train.K == 2 and cfg.train.matched_blocks == ["Up", "Output"]


def test_every_metric_a_sweep_may_name_is_one_a_trial_reports(tiny_config):
    """TUNE_METRICS (what load_sweep accepts as `metric`) against what RayReport really sends to Tune at a
    checkpoint after an evaluation: a name accepted but never reported would fail every trial of a sweep."""
    from lagm_ray.distributed.train import RayReport
    from lagm_ray.methods import build_trainer
    from lagm_ray.sweep_spec import TUNE_METRICS

    reported: list[dict] = []
    cfg = tiny_config(**{"train.steps": 3, "train.eval_interval": 3, "train.checkpoint_interval": 3})
    build_trainer(cfg).fit([RayReport(report=lambda metrics, checkpoint=None: reported.append(metrics))])
    assert reported and set(TUNE_METRICS) <= set(reported[-1]), set(TUNE_METRICS) - set(reported[-1])


def test_a_metric_no_trial_reports_is_refused_with_the_ones_it_could_be(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nspace: {train.K: {grid: [1]}}\nsearcher: grid\nmetric: best/val_fg_mIoU\n")
    with pytest.raises(ConfigError, match=r"s.yaml: metric must be one a trial reports \(best/val_fg_miou, .*"
                                          r"got 'best/val_fg_mIoU'"):
        load_sweep(spec)


def test_a_sweep_gets_its_own_experiment_unless_one_is_asked_for(tmp_path):
    """Every search_spaces/ file builds on quickstart.yaml: the base's tracking.experiment must not put
    every sweep in one experiment. Named after the sweep (its --quick variant apart); --experiment,
    --set tracking.experiment or the file's own overrides win."""
    import argparse

    from lagm_ray.sweep_command import SEARCH_SPACES, add_sweep_flags, spec_from_args

    ap = argparse.ArgumentParser()
    add_sweep_flags(ap)

    def spec(*argv, path=SEARCH_SPACES / "ablation_k.yaml"):
        return spec_from_args(path, ap.parse_args(list(argv)))

    assert spec().experiment_name == "ablation_k"
    assert spec("--quick").experiment_name == "ablation_k-quick"
    assert spec("--name", "mine").experiment_name == "mine"
    assert spec("--quick", "--experiment", "paper-k").experiment_name == "paper-k"
    assert spec("--set", "tracking.experiment=by-set").experiment_name == "by-set"
    doc = yaml.safe_load((SEARCH_SPACES / "ablation_k.yaml").read_text())
    doc["overrides"]["tracking.experiment"] = "in-file"
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(doc))
    assert spec(path=tmp_path / "k.yaml").experiment_name == "in-file"
    assert spec(path=tmp_path / "k.yaml").base.tracking.experiment == "in-file"
