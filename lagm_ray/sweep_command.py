"""What experiments/*.py and `lagm sweep` share: flags to shrink a sweep, running it on the Ray
cluster in $RAY_ADDRESS (or a local one), and printing our table beside the paper's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.table import Table

from .config import parse_override
from .distributed.sweep import (
    absolute_paths,
    default_storage_path,
    failed_trials,
    run_sweep,
)
from .errors import CheckpointError, ConfigError, DataError
from .preflight import check_runs, check_writable_dir
from .report import sweep_table, to_markdown
from .sweep_spec import SweepSpec, load_sweep

ROOT = Path(__file__).resolve().parent.parent
SEARCH_SPACES = ROOT / "search_spaces"

# Wide when piped (ray job logs, files): the comparison tables would otherwise fold at 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=200)


def add_sweep_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="the sweep file's quick: budget (minutes on 2 CPUs)")
    ap.add_argument("--steps", type=int, help="override train.steps for every trial")
    ap.add_argument("--trials", type=int, help="override num_samples (grid: repeats of the grid)")
    ap.add_argument("--concurrency", type=int, help="override max_concurrent_trials")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key for every trial (repeatable)")
    ap.add_argument("--name", help="sweep name (default: the file's, with -quick for --quick)")
    ap.add_argument("--storage-path", help="Tune state and checkpoints: a directory, NFS path or s3:// "
                                           "(default $LAGM_STORAGE_PATH or ./ray_results)")
    ap.add_argument("--no-track", dest="track", action="store_false", help="log nothing to MLflow")
    ap.add_argument("--experiment", help="MLflow experiment (default: one named after the sweep, e.g. ablation_k-quick)")
    ap.add_argument("--verbose", action="store_true", help="show Ray's own log lines in the terminal")
    ap.add_argument("--resume", action="store_true",
                    help="finish the sweep of this name in the storage (Tune restores it: Ray unpickles its "
                         "state, so only from storage that only trusted users can write); without it a sweep "
                         "of that name already there is refused")


def spec_from_args(path: str | Path, args: argparse.Namespace) -> SweepSpec:
    overrides: dict[str, Any] = dict(parse_override(o) for o in args.overrides)
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    if getattr(args, "experiment", None):
        overrides["tracking.experiment"] = args.experiment
    if not getattr(args, "track", True):
        overrides["tracking.enabled"] = False
    spec = load_sweep(path, quick=args.quick, overrides=overrides, name=args.name)
    if args.name is None and args.quick:
        spec.name = f"{spec.name}-quick"  # a shrunk sweep must not restore, or mix with, the full one
    if args.trials is not None:
        spec.num_samples = args.trials
    if args.concurrency is not None:
        spec.max_concurrent_trials = args.concurrency
    return spec


def run(spec: SweepSpec, args: argparse.Namespace, compare: Callable[[Any], Table | None] | None = None,
        extra_callbacks=()):
    """Run (or with --resume restore) the sweep, then print its summary, the reason of each failed trial
    and, when given, the comparison with the paper. Every config a trial can get is checked first, in the
    driver, before Ray starts."""
    storage_path = args.storage_path or default_storage_path()
    check_runs(spec.configs_to_check())
    if "://" not in storage_path:
        check_writable_dir(storage_path, "--storage-path")
    spec_text = Path(spec.source).read_text() if Path(spec.source).exists() else ""
    results, parent = run_sweep(spec, storage_path=args.storage_path, resume=args.resume, spec_text=spec_text,
                                verbose=2 if getattr(args, "verbose", False) else 1,
                                extra_callbacks=extra_callbacks)
    failed = failed_trials(results)
    if parent is None:
        console.print(f"{len(results)} trials finished ({len(failed)} failed); tracking disabled")
        print_failures(failed)
        return results, None

    uri = absolute_paths(spec.base).tracking.uri
    df, _ = sweep_table(parent, uri)
    console.print(f"\n[bold]{spec.name}[/]: {len(df)} trials ({len(failed)} failed), metric {spec.metric} ({spec.mode}); "
                  "FG-mIoU columns in %, MLflow holds the same values as fractions (0..1)")
    print(to_markdown(df) if not df.empty else "(no trials)")
    print_failures(failed)
    if compare is not None and not df.empty:
        table = compare(df)
        if table is not None:
            console.print(table)
    console.print(f"MLflow experiment {spec.experiment_name}, parent run {parent}: mlflow ui --backend-store-uri {uri}",
                  soft_wrap=True)
    return results, parent


def print_failures(failed: dict[str, str]) -> None:
    for name, reason in failed.items():
        print(f"failed: {name}: {reason}")


def exit_status(results) -> int:
    """1 when a trial failed, else 0."""
    return 1 if failed_trials(results) else 0


def main(spec_file: str | Path, description: str, argv: Sequence[str] | None = None,
         compare: Callable[[Any], Table | None] | None = None, extra_flags: Callable | None = None,
         adjust: Callable[[SweepSpec, argparse.Namespace], SweepSpec] | None = None,
         paper: dict[Any, Any] | None = None, paper_note: str = "") -> int:
    """An experiments/ script: parse its flags, run its sweep, print the summary and ``compare``'s table.
    ``paper`` (setting -> the paper's value, lagm_ray/paper.py) and ``paper_note`` (its source) are
    logged on the sweep's parent run (report.log_paper)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_flags(ap)
    if extra_flags is not None:
        extra_flags(ap)
    args = ap.parse_args(argv)
    try:
        spec = spec_from_args(spec_file, args)
        if adjust is not None:
            spec = adjust(spec, args)
        spec.paper, spec.paper_note = dict(paper or {}), paper_note
        results, _ = run(spec, args, compare)
    except (ConfigError, DataError, CheckpointError, OSError) as e:  # as `lagm sweep` reports them
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the sweep's runs are KILLED; --resume continues it
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130
    return exit_status(results)


def relative_time(df, key: str, reference: Any) -> dict[Any, float]:
    """Mean s/step per swept value, divided by the reference value's (the paper's Time/step column)."""
    if "s/step" not in df or key not in df:
        return {}
    means = df.groupby(df[key].astype(str))["s/step"].mean()
    ref = means.get(str(reference))
    return {k: v / ref for k, v in means.items()} if ref else {}


def comparison_table(title: str, key: str, df, paper: dict[Any, tuple[float | None, str]], reference: Any,
                     ours_label: Callable[[Any], Any] = lambda v: v) -> Table:
    """Rows: the paper's settings; columns: the paper's time/step and mIoU, ours beside them."""
    ratios = relative_time(df, key, reference)
    table = Table(title=title)
    for col in ("setting", "paper time/step", "paper mIoU %", "ours time/step", "ours test FG-mIoU %"):
        table.add_column(col, justify="right")
    ours = df.groupby(df[key].astype(str))["test FG-mIoU"].agg(["mean", "std", "count"]) if "test FG-mIoU" in df else None
    for setting, (ratio, miou) in paper.items():
        k = str(ours_label(setting))
        mine = ""
        if ours is not None and k in ours.index:
            m = ours.loc[k]
            mine = f"{100 * m['mean']:.1f}" + (f" ± {100 * m['std']:.1f}" if m["count"] > 1 else "")
        table.add_row(str(setting), f"{ratio:.2f}x" if ratio is not None else "", miou,
                      f"{ratios[k]:.2f}x" if k in ratios else "", mine)
    return table
