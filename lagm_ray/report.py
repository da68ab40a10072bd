"""A sweep's summary, read back from MLflow: a table (CSV and markdown) and a plot of each swept value
against the metrics, logged on the sweep's parent run. Works for a finished or a running sweep
(`lagm report SWEEP`); needs no Ray."""

from __future__ import annotations

import math
import re
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from .storage import atomic_path
from .tracking import (
    METRIC_TAG,
    STOPPED_TAG,
    SWEPT_TAG,
    TRIAL_TAG,
    child_runs,
    tracking_uri,
)

# Columns after the swept values, in this order when present. The selection metric (best validation
# FG-mIoU) first, then the test numbers at that step, the annotator against true masks, cost.
METRICS = {
    "result/val/fg_miou": "val FG-mIoU",
    "result/test/fg_miou": "test FG-mIoU",
    "result/test/miou": "test mIoU",
    "result/annotator/miou_vs_truth": "annotator mIoU vs truth",
    "result/time/step_mean_s": "s/step",
    "result/best_step": "best step",
}
PERCENT = {"val FG-mIoU", "test FG-mIoU", "test mIoU", "annotator mIoU vs truth"}
BEST_TRIAL_TAG = "lagm.best_trial"  # on the parent: the run name of the trial best on the sweep's metric


def header(col: str) -> str:
    """A printed table's column name: the FG-mIoU columns say they are percent (MLflow and the CSV keep
    fractions, 0..1)."""
    return f"{col} %" if col in PERCENT else col


def sweep_table(parent_run_id: str, uri: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per trial (child run): its swept values and result metrics; and the swept keys."""
    client = MlflowClient(tracking_uri(uri))
    parent = client.get_run(parent_run_id)
    swept = [k for k in parent.data.tags.get(SWEPT_TAG, "").split(",") if k]
    rows = []
    for run in child_runs(parent_run_id, uri):
        stopped = run.data.tags.get(STOPPED_TAG)
        row: dict[str, Any] = {"trial": run.info.run_name,
                               "status": f"stopped {stopped}" if stopped else run.info.status.lower()}
        for k in swept:
            row[k] = _parse(run.data.params.get(k))
        for key, col in METRICS.items():
            if key in run.data.metrics:
                row[col] = run.data.metrics[key]
        if "result/test/fg_miou" not in run.data.metrics and "best/val_fg_miou" in run.data.metrics:
            row["val FG-mIoU"] = run.data.metrics["best/val_fg_miou"]  # still running: best so far
        row["trial_id"] = run.data.tags.get(TRIAL_TAG, "")
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(swept + ["trial"] if swept else ["trial"], kind="stable").reset_index(drop=True)
    return df, swept


# What the parent run repeats of its best trial, under the names the trial's child run has them by.
BEST_TRIAL_METRICS = ("result/test/fg_miou", "result/test/miou", "result/annotator/miou_vs_truth")


def log_best_trial(parent_run_id: str, uri: str | None, metric: str, mode: str = "max") -> str | None:
    """On the parent run: the sweep's ``metric`` of its best trial (by ``mode``) under the same name as in
    Tune and in every child run (``best/val_fg_miou``), that trial's test metrics likewise, and its run
    name as tag ``lagm.best_trial``. Returns that trial's run id (None when no trial has the metric)."""
    runs = [r for r in child_runs(parent_run_id, uri)
            if metric in r.data.metrics and not math.isnan(r.data.metrics[metric])]
    if not runs:
        return None
    best = (max if mode == "max" else min)(runs, key=lambda r: r.data.metrics[metric])
    client = MlflowClient(tracking_uri(uri))
    for key in (metric, *BEST_TRIAL_METRICS):
        if key in best.data.metrics:
            client.log_metric(parent_run_id, key, best.data.metrics[key])
    client.set_tag(parent_run_id, BEST_TRIAL_TAG, best.info.run_name)
    return best.info.run_id


PAPER_TAG = "lagm.paper"  # on the parent: where the paper's numbers in paper.json come from


def paper_metrics(values: dict[Any, Any]) -> dict[str, float]:
    """``paper/<setting>/miou`` for each setting whose paper value starts with a number (a percent there,
    a fraction here like every mIoU in MLflow) and ``paper/<setting>/time_per_step_rel`` for a
    (time/step ratio, mIoU) pair. Values that are prose ("not reported ...") give no metric."""
    out = {}
    for setting, value in values.items():
        ratio, text = value if isinstance(value, tuple) else (None, value)
        key = re.sub(r"[^\w\-. /]", "_", str(setting))
        number = re.match(r"\s*(\d+(?:\.\d+)?)", str(text or ""))
        if number:
            out[f"paper/{key}/miou"] = round(float(number.group(1)) / 100, 6)
        if ratio is not None:
            out[f"paper/{key}/time_per_step_rel"] = float(ratio)
    return out


def log_paper(parent_run_id: str, uri: str | None, values: dict[Any, Any], note: str = "") -> None:
    """The paper's numbers on a sweep's parent run, beside ours: ``paper.json`` (every value as the paper
    gives it), :func:`paper_metrics` and the tag ``lagm.paper`` (the source)."""
    client = MlflowClient(tracking_uri(uri))
    client.log_dict(parent_run_id, {"note": note, "values": {str(k): v for k, v in values.items()}}, "paper.json")
    for k, v in paper_metrics(values).items():
        client.log_metric(parent_run_id, k, v)
    if note:
        client.set_tag(parent_run_id, PAPER_TAG, note[:5000])


def _parse(v: str | None) -> Any:
    if v is None:
        return None
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except ValueError:
        return v


def to_markdown(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if c not in ("trial_id",)]
    lines = ["| " + " | ".join(map(header, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float) and math.isnan(v):
                cells.append("")
            elif c in PERCENT:
                cells.append(f"{100 * v:.1f}")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Swept keys that repeat a setting rather than change it, with the ddof of their spread: seeds (sample
# std) and DatasetGAN's cross-validation folds (np.std over folds, as its evaluation code).
REPLICATE_KEYS = {"run.seed": 1, "data.cv_fold": 0}
SPREAD_COLUMNS = ("test FG-mIoU", "test mIoU", "annotator mIoU vs truth", "s/step")


def seed_summary(df: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds (or cross-validation folds) of each setting (the other
    swept keys): one row per setting with ``<metric>`` and ``<metric> std`` columns and the number of
    replicates (``seeds``). Empty when the sweep repeats nothing."""
    replicate = [k for k in REPLICATE_KEYS if k in swept]
    if not replicate or df.empty:
        return pd.DataFrame()
    keys = [k for k in swept if k not in replicate]
    cols = [c for c in SPREAD_COLUMNS if c in df and df[c].notna().any()]
    if keys:
        g = df.groupby(keys, sort=False, dropna=False)
    else:  # one setting repeated (e.g. a cross-validation sweep): one row
        g = df.assign(setting="all").groupby(["setting"])
        keys = ["setting"]
    out = g[cols].mean()
    std = g[cols].std(ddof=REPLICATE_KEYS[replicate[0]])
    for c in cols:
        out[f"{c} std"] = std[c]
    out["seeds"] = g.size()
    out = out.reset_index()
    return out[keys + [x for c in cols for x in (c, f"{c} std")] + ["seeds"]]


def seed_summary_markdown(summary: pd.DataFrame) -> str:
    """``mean ± std`` cells (percent for the mIoU columns)."""
    metric_cols = [c for c in summary.columns if c in SPREAD_COLUMNS]
    keys = [c for c in summary.columns if c not in metric_cols and not c.endswith(" std") and c != "seeds"]
    head = keys + metric_cols + ["seeds"]
    lines = ["| " + " | ".join(map(header, head)) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [str(r[k]) for k in keys]
        for c in metric_cols:
            m, sd = r[c], r[f"{c} std"]
            scale, fmt = (100, ".1f") if c in PERCENT else (1, ".3g")
            cell = "" if pd.isna(m) else f"{scale * m:{fmt}}"
            if cell and not pd.isna(sd):
                cell += f" ± {scale * sd:{fmt}}"
            cells.append(cell)
        cells.append(str(int(r["seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_seed_bars(summary: pd.DataFrame, path: Path, title: str = "") -> None:
    """Bars of mean test FG-mIoU (and the annotator against true masks) per setting, error bars = std."""
    import matplotlib  # drawing only: matplotlib takes ~0.5 s to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # drawing only: matplotlib takes ~0.5 s to import

    keys = [c for c in summary.columns if c not in SPREAD_COLUMNS and not c.endswith(" std") and c != "seeds"]
    labels = [", ".join(str(r[k]) for k in keys) for _, r in summary.iterrows()]
    bars = [c for c in ("test FG-mIoU", "test mIoU", "annotator mIoU vs truth") if c in summary]
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(bars))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 3.8))
    for i, c in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, 100 * summary[c].fillna(0), width,
               yerr=100 * summary[f"{c} std"].fillna(0), capsize=3, label=c, alpha=0.85)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot(df: pd.DataFrame, swept: list[str], path: Path, title: str = "") -> None:
    """One panel per swept key: value against validation and test FG-mIoU (mean and every trial)."""
    import matplotlib  # drawing only: matplotlib takes ~0.5 s to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # drawing only: matplotlib takes ~0.5 s to import

    keys = swept or ["trial"]
    fig, axes = plt.subplots(1, len(keys), figsize=(max(5.5, 4.5 * len(keys)), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        x = df[key] if key in df else pd.Series(range(len(df)))
        numeric = pd.api.types.is_numeric_dtype(x)
        labels = sorted(set(map(str, x))) if not numeric else None
        pos = x if numeric else x.map(lambda v: labels.index(str(v)))
        for col, marker in (("val FG-mIoU", "o"), ("test FG-mIoU", "s")):
            if col not in df:
                continue
            y = 100 * df[col]
            ax.scatter(pos, y, marker=marker, alpha=0.6, label=col)
            means = pd.DataFrame({"x": pos, "y": y}).groupby("x")["y"].mean()
            ax.plot(means.index, means.values, alpha=0.8)
        if numeric and len(set(x)) > 2 and min(x) > 0 and max(x) / min(x) >= 20:
            ax.set_xscale("log")
        if numeric and len(set(x)) <= 10:
            ax.set_xticks(sorted(set(x)), [str(v) for v in sorted(set(x))])
            ax.minorticks_off()
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel("FG-mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the atomic temp name has no .png suffix
    plt.close(fig)


def write_report(parent_run_id: str, uri: str | None = None, out_dir: str | Path | None = None,
                 log: bool = True) -> dict[str, Path]:
    """summary.csv, summary.md and summary.png for a sweep; logged to its parent run under summary/
    (re-running overwrites them, so a restored sweep's report replaces the partial one)."""
    client = MlflowClient(tracking_uri(uri))
    parent = client.get_run(parent_run_id)
    df, swept = sweep_table(parent_run_id, uri)
    metric = parent.data.tags.get(METRIC_TAG, "")
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    paths = {"csv": out / "summary.csv", "markdown": out / "summary.md", "plot": out / "summary.png"}
    with atomic_path(paths["csv"]) as p:
        df.to_csv(p, index=False)
    with atomic_path(paths["markdown"]) as p:
        Path(p).write_text(to_markdown(df) if not df.empty else "(no trials yet)\n")
    if not df.empty:
        with atomic_path(paths["plot"]) as p:
            plot(df, swept, Path(p), title=f"{parent.info.run_name} ({len(df)} trials; searched on {metric})")
    by_seed = seed_summary(df, swept)
    if not by_seed.empty:  # settings repeated over seeds: mean ± std per setting, and bars
        paths.update({"seed_csv": out / "summary_over_seeds.csv", "seed_markdown": out / "summary_over_seeds.md",
                      "seed_plot": out / "summary_over_seeds.png"})
        with atomic_path(paths["seed_csv"]) as p:
            by_seed.to_csv(p, index=False)
        with atomic_path(paths["seed_markdown"]) as p:
            Path(p).write_text(seed_summary_markdown(by_seed))
        with atomic_path(paths["seed_plot"]) as p:
            plot_seed_bars(by_seed, Path(p), title=f"{parent.info.run_name}: mean ± std over seeds")
    if log:
        for p in paths.values():
            if p.exists():
                client.log_artifact(parent_run_id, str(p), "summary")
        log_best_trial(parent_run_id, uri, *(metric.split() + ["max"])[:2])
        client.log_metric(parent_run_id, "trials", float(len(df)))
    if tmp is not None:  # nothing to hand back but what was logged
        tmp.cleanup()
        return {}
    return paths
