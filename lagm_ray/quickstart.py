"""`lagm quickstart`: LAGM against supervised-only with 2 and 10 labelled images on the embedded
faces, on a CPU budget; prints a table and writes quickstart_results.json."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from queue import Empty

from rich.console import Console
from rich.table import Table

from .methods import from_dict, load_config
from .progress import QueueProgress, make_progress
from .runs import train_one
from .storage import atomic_write_text
from .tracking import end_run, start_parent_run, tracking_uri

CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"
console = Console()


def quickstart_configs(quick: bool = False, seeds=(0,), extra: dict | None = None):
    """(method, labels, seed) -> Config, all from configs/quickstart.yaml (``extra`` overrides last)."""
    out = {}
    for seed in seeds:
        for method in ("lagm", "supervised"):
            for labels in (2, 10):
                overrides = {"train.method": method, "data.num_labelled": labels, "run.seed": seed,
                             "run.name": f"quickstart-{method}-{labels}-seed{seed}"}
                if quick:
                    overrides.update({"train.steps": 40, "train.eval_interval": 20, "train.checkpoint_interval": 20,
                                      "train.log_interval": 10, "data.num_val": 20, "data.num_test": 20,
                                      "eval.num_annotator_samples": 16, "train.synthetic_pool": 64})
                out[(method, labels, seed)] = load_config(CONFIG, {**overrides, **(extra or {})})
    return out


def _timed_training(cfg, track: bool, progress: bool = True, description: str | None = None,
                    callbacks=()) -> dict:
    """One quickstart training: its result metrics and its wall time in seconds."""
    t0 = time.perf_counter()
    metrics = train_one(cfg, track=track, progress=progress, description=description, callbacks=callbacks).metrics
    return {**metrics, "seconds": time.perf_counter() - t0}


def _train_in_worker(cfg_dict: dict, track: bool, queue, key) -> dict:
    """One quickstart training in a worker process: its steps go to the parent's bars through ``queue``."""
    return _timed_training(from_dict(cfg_dict, source="quickstart"), track, progress=False,
                           callbacks=[QueueProgress(queue, key)])


def run_quickstart(quick: bool = False, seeds=(0,), out: Path = Path("quickstart_results.json"),
                   track: bool = True, extra: dict | None = None, parallel: int = 2) -> dict:
    """Every (method, labels, seed) training of the quickstart, ``parallel`` at a time in worker processes
    with one torch thread each (1: one after another in this process, with the config's threads).

    On 2 cores, two 1-thread trainings side by side do about 1.5x the work of one 2-thread training:
    a LAGM step on these small networks gains little from a second thread."""
    configs = quickstart_configs(quick, seeds, extra)
    parent_id = None
    any_cfg = next(iter(configs.values()))
    if track:
        parent_id = start_parent_run("quickstart", any_cfg.tracking.experiment, any_cfg.tracking.uri)
    if parent_id:
        configs = {k: cfg.replace({"tracking.parent_run_id": parent_id}) for k, cfg in configs.items()}
    start = time.perf_counter()
    try:
        if parallel > 1:
            results = _run_in_workers(configs, track, parallel)
        else:
            results = {(m, l, s): _timed_training(cfg, track, description=f"{m} {l} labels seed {s}")
                       for (m, l, s), cfg in configs.items()}
    except BaseException:
        if parent_id:  # not left RUNNING in the UI
            end_run(parent_id, any_cfg.tracking.uri, "FAILED")
        raise

    def stat(method, labels, key):
        vals = [results[(method, labels, s)][key] for s in seeds if key in results[(method, labels, s)]]
        return vals

    summary: dict[str, float | list] = {}
    for method in ("lagm", "supervised"):
        for labels in (2, 10):
            vals = stat(method, labels, "test/fg_miou")
            summary[f"{method}_fg_miou_{labels}"] = statistics.mean(vals)
            if len(vals) > 1:
                summary[f"{method}_fg_miou_{labels}_std"] = statistics.stdev(vals)
                summary[f"{method}_fg_miou_{labels}_per_seed"] = vals
    ann = stat("lagm", 10, "annotator/miou_vs_truth")
    summary["annotator_miou_vs_truth_10"] = statistics.mean(ann)
    ann2 = stat("lagm", 2, "annotator/miou_vs_truth")
    summary["annotator_miou_vs_truth_2"] = statistics.mean(ann2)
    summary["seeds"] = list(seeds)
    summary["quick"] = quick
    summary["total_seconds"] = time.perf_counter() - start
    summary["runs"] = {f"{m}-{l}-seed{s}": {k: v for k, v in r.items() if not k.startswith("final/")}
                       for (m, l, s), r in results.items()}
    atomic_write_text(out, json.dumps(summary, indent=2))
    if parent_id:
        end_run(parent_id, any_cfg.tracking.uri, metrics={k: v for k, v in summary.items() if isinstance(v, float)},
                summary=(summary, "quickstart_results.json"))

    table = Table(title=f"Quickstart: embedded faces, test FG-mIoU (%), seeds {list(seeds)}")
    table.add_column("method")
    for labels in (2, 10):
        table.add_column(f"{labels} labels", justify="right")
    for method in ("lagm", "supervised"):
        cells = []
        for labels in (2, 10):
            m = summary[f"{method}_fg_miou_{labels}"]
            sd = summary.get(f"{method}_fg_miou_{labels}_std")
            cells.append(f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else ""))
        table.add_row("LAGM" if method == "lagm" else "supervised-only", *cells)
    table.add_row("annotator mIoU vs true masks", f"{100 * summary['annotator_miou_vs_truth_2']:.1f}",
                  f"{100 * summary['annotator_miou_vs_truth_10']:.1f}")
    console.print(table)
    console.print(f"wrote {out} ({summary['total_seconds']:.0f} s)")
    if track:
        console.print(f"browse the runs: mlflow ui --backend-store-uri {tracking_uri()}  (then open http://127.0.0.1:5000)")
    return summary


def _run_in_workers(configs: dict, track: bool, parallel: int) -> dict[tuple, dict]:
    # The long LAGM trainings first, so that the short supervised ones fill in at the end.
    order = sorted(configs, key=lambda k: k[0] != "lagm")
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(parallel, mp_context=context) as pool, \
            make_progress() as progress:
        queue = manager.Queue()
        bars = {k: progress.add_task(f"{k[0]} {k[1]} labels seed {k[2]}", total=configs[k].train.steps, info="waiting")
                for k in order}
        futures = {pool.submit(_train_in_worker, configs[k].replace({"run.num_threads": 1}).to_dict(), track,
                               queue, k): k for k in order}
        results: dict[tuple, dict] = {}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                _drain(queue, progress, bars)
                for fut in finished:
                    method, labels, seed = key = futures[fut]
                    results[key] = fut.result()
                    done = f"test FG-mIoU {100 * results[key]['test/fg_miou']:.1f}"
                    progress.update(bars[key], completed=configs[key].train.steps, info=done)
                    progress.console.print(f"done: {method}, {labels} labels, seed {seed}: {done}")
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # a failed training stops the quickstart now
            raise
    return results


def _drain(queue, progress, bars) -> None:
    """Move each training's bar to the step its worker last reported."""
    while True:
        try:
            key, step, total, info = queue.get_nowait()
        except Empty:
            return
        progress.update(bars[key], completed=step, info=info, **({"total": total} if total else {}))
