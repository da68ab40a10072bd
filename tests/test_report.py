"""Sweep summaries over seeds: mean and sample std per setting, by hand."""

import math

import pandas as pd
import pytest
from conftest import load_experiment

from lagm_ray.errors import ConfigError
from lagm_ray.report import plot_seed_bars, seed_summary, seed_summary_markdown
from lagm_ray.sweep_command import SEARCH_SPACES
from lagm_ray.sweep_spec import load_sweep


def trials():
    return pd.DataFrame({
        "train.method": ["lagm", "lagm", "lagm", "supervised", "supervised", "supervised"],
        "run.seed": [0, 1, 2, 0, 1, 2],
        "test FG-mIoU": [0.50, 0.60, 0.70, 0.40, 0.40, 0.46],
        "annotator mIoU vs truth": [0.8, 0.9, 1.0, float("nan"), float("nan"), float("nan")],
    })


def test_seed_summary_is_mean_and_sample_std_per_setting():
    s = seed_summary(trials(), ["run.seed", "train.method"]).set_index("train.method")
    assert s.loc["lagm", "test FG-mIoU"] == pytest.approx(0.60)
    assert s.loc["lagm", "test FG-mIoU std"] == pytest.approx(0.10)  # sqrt(((.1)^2+0+(.1)^2)/2)
    assert s.loc["supervised", "test FG-mIoU"] == pytest.approx(0.42)
    assert s.loc["supervised", "test FG-mIoU std"] == pytest.approx(math.sqrt((0.02**2 * 2 + 0.04**2) / 2))
    assert math.isnan(s.loc["supervised", "annotator mIoU vs truth"])
    assert list(s["seeds"]) == [3, 3]
    md = seed_summary_markdown(s.reset_index())
    assert "| lagm | 60.0 ± 10.0 | 90.0 ± 10.0 | 3 |" in md
    assert "| train.method | test FG-mIoU % | annotator mIoU vs truth % | seeds |" in md  # the unit, said


def test_printed_tables_say_percent_where_mlflow_holds_fractions():
    from lagm_ray.report import to_markdown

    md = to_markdown(pd.DataFrame({"train.K": [1], "val FG-mIoU": [0.0447], "s/step": [0.25]}))
    assert md.splitlines()[0] == "| train.K | val FG-mIoU % | s/step |"
    assert md.splitlines()[2] == "| 1 | 4.5 | 0.25 |"


def test_no_seed_summary_without_repeated_seeds():
    assert seed_summary(trials(), ["train.method"]).empty


def test_cross_validation_folds_are_summarised_with_numpy_std():
    folds = pd.DataFrame({"data.cv_fold": [0, 1, 2, 3], "test mIoU": [0.5, 0.6, 0.5, 0.6]})
    s = seed_summary(folds, ["data.cv_fold"])
    assert len(s) == 1 and s["seeds"].item() == 4
    assert s["test mIoU"].item() == pytest.approx(0.55)
    assert s["test mIoU std"].item() == pytest.approx(0.05)  # np.std over folds, as DatasetGAN's code


def test_seed_bars_plot(tmp_path):
    plot_seed_bars(seed_summary(trials(), ["run.seed", "train.method"]), tmp_path / "bars.png")
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_methods_sweep_is_every_method_over_three_seeds():
    spec = load_sweep(SEARCH_SPACES / "compare_methods.yaml", quick=True)
    assert set(spec.space["train.method"].values) >= {"lagm", "supervised", "pseudo_label", "inversion", "maml",
                                                      "datasetgan", "repurposegan", "ganorcon", "layermatch"}
    assert spec.space["run.seed"].values == [0, 1, 2]
    spec.set_grid("train.method", ["lagm", "supervised"])
    assert spec.space["train.method"].values == ["lagm", "supervised"]
    with pytest.raises(ConfigError, match="train.method"):
        spec.set_grid("train.method", ["lagm", "no_such_method"])


def test_compare_methods_prints_papers_orderings_beside_ours():
    from rich.console import Console

    script = load_experiment("compare_methods")
    df = pd.DataFrame({"train.method": ["lagm", "lagm", "supervised", "supervised", "inversion", "inversion"],
                       "run.seed": [0, 1, 0, 1, 0, 1],
                       "test FG-mIoU": [0.50, 0.60, 0.40, 0.42, 0.70, 0.70],
                       "test mIoU": [0.6, 0.7, 0.5, 0.5, 0.8, 0.8]})
    console = Console(width=250, record=True)
    console.print(script.compare(df))
    text = console.export_text()
    assert "lagm > supervised" in text and "ours agrees (55.0 vs 41.0)" in text
    assert "lagm > inversion" in text and "ours DISAGREES (55.0 vs 70.0)" in text
    assert "55.0 ± 7.1" in text  # mean ± sample std over the two seeds
    assert "48.57 ± 0.38" in text  # the paper's inversion number beside ours
