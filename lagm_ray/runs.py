"""What the command line, the quickstart and experiments/ share: train one config, evaluate a checkpoint,
train a toy generator, generate and log a synthetic dataset. Each builds the callbacks (checkpoints,
progress bar, MLflow) around a library call; the CLI only parses arguments and prints."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from .annotator_runs import describe_annotator, generate_local
from .callbacks import Callback
from .config import flatten, parse_override
from .datagen import check_workers, sample_grid
from .errors import CheckpointError
from .generator_training import train_generator
from .methods import build_trainer, from_dict, load_config
from .metrics import drop_per_class
from .preflight import check_run, check_writable_dir
from .progress import ProgressCallback, make_progress
from .storage import atomic_write_text, load_checkpoint
from .synthetic import embedded_generator_path
from .tracking import MLflowCallback, command_run, log_dataset_run
from .trainer import BEST_FORMAT, CHECKPOINT_FORMAT, LocalCheckpoints

console = Console()


def run_dir_of(cfg) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def train_one(cfg, resume: Optional[str] = None, track: bool = True, progress: bool = True,
              description: str | None = None, callbacks: Sequence[Callback] = ()):
    """Build a trainer for ``cfg``, resume if asked, fit with checkpoints, MLflow and a progress bar.

    The MLflow run's id is kept in the run directory from the moment the run exists, so a resumed
    training continues the same MLflow run; SIGTERM stops the training as Ctrl-C does (run KILLED)."""
    run_dir = run_dir_of(cfg)
    check_run(cfg, track=track)
    path = None
    if resume:
        path = run_dir / "last.pt" if resume == "auto" else Path(resume)
        if not path.exists() and resume != "auto":
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    trainer = build_trainer(cfg)
    if path is not None and path.exists():
        resume_from(trainer, path)
        console.print(f"resumed from {path} at step {trainer.step}")
    callbacks = [LocalCheckpoints(run_dir), *callbacks]
    if progress:
        callbacks.append(ProgressCallback(description or cfg.run.name))
    if track and cfg.tracking.enabled:
        run_id_file = run_dir / "mlflow_run_id"
        run_id = run_id_file.read_text().strip() if trainer.step > 0 and run_id_file.exists() else None
        callbacks.append(MLflowCallback(cfg, run_id=run_id or None, run_id_file=run_id_file, checkpoint_dir=run_dir))
    with sigterm_as_interrupt():
        result = trainer.fit(callbacks)
    atomic_write_text(run_dir / "result.json", json.dumps(result.metrics, indent=2, sort_keys=True))
    return result


# Keys whose value fixes a network's or an optimiser's tensors (or which data they were fitted to): a run
# cannot continue from a checkpoint written under another value. Other keys (steps, intervals, tracking)
# may change on resume; they are listed.
SHAPE_KEYS = ("train.method", "data.dataset", "data.category", "data.resolution", "data.seg_resolution",
              "generator.checkpoint", "annotator.", "segmentor.")


def resume_from(trainer, path: Path) -> None:
    """Load a run's ``last.pt`` into ``trainer``, refusing (naming the key) one written under a config that
    differs in a key that changes shapes, and any file that is not a resume checkpoint."""
    state = load_checkpoint(path)  # on the CPU, whatever the trainer's device (Trainer.load_state_dict)
    fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a lagm_ray resume checkpoint (format {fmt!r}); --resume takes a "
                              "run's last.pt")
    stored, current = flatten(state.get("config") or {}), trainer.cfg.flat()
    changed = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
    section = f"{type(trainer).section}." if type(trainer).section else None
    for key in changed:
        if key.startswith(SHAPE_KEYS) or (section and key.startswith(section)):
            raise CheckpointError(f"{path}: written with {key}={stored.get(key)!r} but this config has "
                                  f"{current.get(key)!r}; {key} changes the networks, so this run cannot continue "
                                  "from it (start a new run.name)")
    try:
        trainer.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as e:
        first = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: does not fit this config's networks ({type(e).__name__}: {first})") from e
    if changed:
        shown = ", ".join(f"{k} {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
        console.print(f"[yellow]resuming with changed keys:[/] {shown}", soft_wrap=True)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's or `kill`'s stop) raises KeyboardInterrupt in the main thread, so a training
    records its stop as Ctrl-C does; elsewhere (worker threads) signals stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def evaluate_checkpoint(path: str | Path, config: str | Path | None = None, overrides: list[str] | None = None,
                        downstream: bool = False, track: bool = False) -> dict[str, float]:
    """Metrics of a ``best.pt`` (best validation step) or ``last.pt`` (resume state) checkpoint.

    The run's own config (stored in the checkpoint) is used unless ``config`` is given; ``overrides``
    apply on top (e.g. ``eval.downstream_images=2000``)."""
    path = Path(path)
    state = load_checkpoint(path)
    fmt = state.get("format")
    if fmt not in (BEST_FORMAT, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path}: not a lagm_ray run checkpoint (format {fmt!r}); expected best.pt or last.pt")
    if config is not None:
        cfg = load_config(config, overrides or [])
    else:
        cfg = from_dict(state["config"], source=f"{path} (stored config)")
        if overrides:
            cfg = cfg.replace(dict(parse_override(o) for o in overrides), source="--set")
    trainer = build_trainer(cfg)
    if fmt == CHECKPOINT_FORMAT:
        trainer.load_state_dict(state)
    else:
        trainer.segmentor.load_state_dict(state["segmentor"])
        if trainer.annotator is not None and state.get("annotator") is not None:
            trainer.annotator.load_state_dict(state["annotator"])
        trainer.step = int(state["step"])
    trainer.best = {"step": trainer.step, "metric": -1.0, "metrics": {}}  # score these weights, not a stored best
    metrics, _ = trainer.evaluate(pictures=False)
    metrics = drop_per_class(metrics)
    metrics["step"] = float(trainer.step)
    if downstream:
        metrics.update(trainer.downstream(use_best=False))
    if track and cfg.tracking.enabled:
        log_command_run(cfg, f"evaluate-{cfg.run.name}", metrics, {"checkpoint": str(path.resolve())})
    return metrics


def log_command_run(cfg, run_name: str, metrics: dict[str, float], params: dict[str, str]) -> str:
    """One MLflow run for a command that measures without training (evaluate, downstream): the config and
    ``params``, its metrics, in the config's experiment; returns the run id."""
    with command_run({**cfg.flat(), **params}, run_name, cfg.tracking.experiment, cfg.tracking.uri) as (run_id, log):
        log(metrics)
    console.print(f"MLflow run {run_id} (experiment {cfg.tracking.experiment})")
    return run_id


def train_toy_generator(c, out: Optional[Path] = None, track: bool = True,
                        experiment: str = "lagm-generators") -> dict[str, float]:
    """Train a toy generator with a progress bar, logged to MLflow."""

    out = out or embedded_generator_path(c.category)
    run = contextlib.nullcontext()  # yields None: no MLflow
    if track:
        run = command_run(c.__dict__, f"toy-generator-{c.category}-{c.resolution}px", experiment)
    with run as opened, make_progress() as progress:
        log_metrics = opened[1] if opened else None
        task = progress.add_task(f"generator {c.category}", total=c.steps, info="")

        def on_step(step, m):
            progress.update(task, completed=step, info=f"L1 {m['loss/distill']:.4f}")
            if log_metrics is not None and step % 100 == 0:
                log_metrics(m, step=step)

        metrics = train_generator(c, out, on_step=on_step)
        if log_metrics is not None:
            log_metrics(metrics)
    console.print(f"saved {out}: held-out L1 {metrics['heldout_l1']:.4f}, {metrics['train_seconds']:.0f} s")
    return metrics


def generate_and_log(annotator: Path, out: Path, spec, *, local: bool = False, concurrency: Optional[int] = None,
                     cpus_per_actor: float = 1.0, use_gpu: Optional[bool] = None, track: bool = True,
                     experiment: str = "lagm-datasets", verbose: bool = False) -> dict:
    """`lagm generate` and experiments/generate_dataset.py: generate (on Ray, or ``local``ly) with a progress
    bar (images and shards done, images/s), then log the run to MLflow with a sample grid."""
    def warn(message: str) -> None:
        console.print(f"[yellow]warning:[/] {message}")

    # before the progress bar and Ray: the pool's options, the annotator run readable, the output writable
    check_workers(concurrency, cpus_per_actor)
    info = describe_annotator(annotator, spec.truncation_psi)
    check_writable_dir(out, "--out")
    t0 = time.perf_counter()
    with make_progress() as progress:
        task = progress.add_task(f"generate {out.name}", total=spec.num_images, info="")

        def on_shard(plan, entry) -> None:
            new = sum(len(plan.spec.shard_seeds(i)) for i in plan.written)
            shards = len(plan.done) + len(plan.written)
            filtered = sum(e["filtered"] for e in plan.written.values())
            progress.update(task, completed=plan.images_done,
                            info=f"shards {shards}/{plan.spec.num_shards}  {new / (time.perf_counter() - t0):.1f} img/s"
                                 + (f"  filtered {filtered}" if filtered else ""))

        if local:
            manifest = generate_local(info, out, spec, on_shard=on_shard, warn=warn)
        else:
            from .distributed.generate import (
                generate_dataset,  # imports Ray: only generation on a cluster needs it
            )

            manifest = generate_dataset(info, out, spec, concurrency=concurrency, cpus_per_actor=cpus_per_actor,
                                        use_gpu=use_gpu, on_shard=on_shard, warn=warn, verbose=verbose)
        progress.update(task, completed=spec.num_images)
    last = manifest["last_run"]
    rate = f", {last['images_per_s']:.1f} images/s" if last.get("images_per_s") else ""
    console.print(f"{out}: {manifest['rows']} rows in {manifest['num_shards']} shards "
                  f"({manifest['filter']['filtered']} filtered; {last['shards_written']} shards written now, "
                  f"{last['shards_reused']} kept{rate})")
    if track:
        run_id = log_dataset_run(manifest, out, sample_grid(out), experiment=experiment)
        console.print(f"MLflow run {run_id} (experiment {experiment})")
    return manifest
