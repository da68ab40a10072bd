"""Ray Train around the LAGM trainer: N data-parallel workers, checkpoints, resume after failures.

Gradient averaging. DDP's reducer hooks ``backward()`` and never sees ``torch.autograd.grad``, which
gradient matching uses (the annotator's gradient comes through a double backward). So we do not wrap
the networks in DDP. Instead every worker:

* builds identical networks (seeded by ``run.seed``) and samples its own latents and labelled batch
  (seeded by ``run.seed`` and its rank);
* computes its local gradient (the annotator's gradient of its own matching loss; the segmentor's
  gradient of its own synthetic loss);
* all-reduces the gradient (mean over workers) just before each optimizer step (``grad_sync``).

Identical starts and identical averaged updates keep the weights identical on every worker, with no
per-step broadcast. With W workers and per-worker batch b this is the matching loss averaged over W
batches of b, which approximates, but is not equal to, one worker's loss on a batch of W*b (the cosine
distance is not linear in the batch); the test checks the two stay close. BatchNorm running statistics
stay per worker, as with DDP without SyncBatchNorm; rank 0's are the ones evaluated and saved.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer
from torch import nn

from ..callbacks import Callback
from ..methods import Config, build_trainer, from_dict
from ..metrics import drop_per_class
from ..storage import load_checkpoint, save_checkpoint
from ..sweep_spec import Resources
from ..tracking import FINAL_REPORT_TAG, MLflowCallback
from ..trainer import Trainer
from .trial import MLflowRun

LAST = "last.pt"


def allreduce_mean(params: Sequence[nn.Parameter]) -> None:
    """Average .grad over all workers in one flat all-reduce (None grads are treated as absent on all)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


class RayReport(Callback):
    """Reports metrics to Ray and saves a resumable checkpoint every ``train.checkpoint_interval``.

    ``report`` is ``ray.train.report`` inside a Train worker (the default) or ``ray.tune.report``
    inside a Tune trial. ``ray.train.report`` is a barrier: every worker calls it; only rank 0
    attaches the checkpoint, which holds every worker's RNG states so that all of them resume exactly."""

    def __init__(self, report=None):
        self.pending: dict[str, float] = {}
        self.report = report
        self.last: dict[str, float] | None = None  # the last report sent
        self.started, self.started_unix = time.perf_counter(), time.time()

    def on_start(self, trainer: Trainer) -> None:
        self.started, self.started_unix = time.perf_counter(), time.time()

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.pending.update(metrics)

    def on_eval(self, step: int, metrics: dict[str, float], pictures: dict[str, Any]) -> None:
        self.pending.update(metrics)

    def metrics(self, step: int, trainer: Trainer) -> dict[str, float]:
        """What a report at ``step`` holds: the metrics since the last one and the best so far."""
        metrics = {"step": step, **drop_per_class(self.pending)}
        if trainer.best["step"]:
            metrics["best/val_fg_miou"] = trainer.best["metric"]
            metrics.update({f"best/{k}": v for k, v in drop_per_class(trainer.best["metrics"]).items()
                            if k.startswith("test/")})
        if trainer.mean_step_seconds is not None:
            metrics["time/step_mean_s"] = trainer.mean_step_seconds
        metrics["time/fit_elapsed_s"] = time.perf_counter() - self.started  # wall time, reporting included
        metrics["time/fit_started_unix_s"] = self.started_unix  # when this (resumed) fit began: timelines
        return metrics

    def final(self, trainer: Trainer) -> dict[str, float]:
        """The training's last report; built from the trainer when this process sent none (it resumed
        from the checkpoint of the last step, whose report Tune already holds)."""
        return self.last if self.last is not None else self.metrics(trainer.step, trainer)

    def on_checkpoint(self, step: int, trainer: Trainer) -> None:
        report = self.report or ray.train.report
        state = trainer.state_dict()
        if dist.is_initialized():
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, state["rng"])
        else:
            per_rank = [state["rng"]]
        metrics = self.last = self.metrics(step, trainer)
        self.pending = {}
        if trainer.rank == 0:
            state["rng_per_rank"] = per_rank
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(state, Path(d) / LAST)
                report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            report(metrics)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: build the trainer, resume from Ray's checkpoint, fit."""
    cfg = from_dict(loop_config["config"], source="ray train loop config")
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device() if cfg.run.device in ("auto", "cuda") else torch.device(cfg.run.device)
    trainer = build_trainer(cfg, device=device, rank=rank, grad_sync=allreduce_mean)
    resume(trainer, ray.train.get_checkpoint(), ctx.get_world_size())
    ray_report = RayReport()
    callbacks: list[Callback] = [ray_report, *loop_config["extra_callbacks"]]
    mlflow_run: MLflowRun = loop_config["mlflow"]
    if rank == 0 and cfg.tracking.enabled:
        callbacks.append(MLflowCallback(cfg, run_id=mlflow_run.run_id, run_name=mlflow_run.run_name,
                                        tags=mlflow_run.tags, end_tags=final_report_tags(ray_report, trainer)))
    trainer.fit(callbacks)


def final_report_tags(ray_report: RayReport, trainer: Trainer) -> Callable[[], dict[str, str]]:
    """MLflowCallback's ``end_tags`` for a training Ray runs: its last report, kept on its run as it
    ends FINISHED, so that a restored sweep finds the trial finished (tracking.final_report) rather
    than training it again. Left out if it would not fit in an MLflow tag (8000 characters)."""
    def tags() -> dict[str, str]:
        text = json.dumps(ray_report.final(trainer))
        return {FINAL_REPORT_TAG: text} if len(text) <= 8000 else {}
    return tags


def resume(trainer: Trainer, checkpoint, world_size: int = 1) -> bool:
    """Load a Ray checkpoint (from RayReport) into ``trainer``, with this rank's own RNG states."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as d:
        state = load_checkpoint(Path(d) / LAST)  # on the CPU, whatever the trainer's device (Trainer.load_state_dict)
    per_rank = state.get("rng_per_rank") or []
    if trainer.rank < len(per_rank) and len(per_rank) == world_size:
        state["rng"] = per_rank[trainer.rank]
    trainer.load_state_dict(state)
    return True


def ray_fit(cfg: Config, resources: Resources | None = None, *, storage_path: str | None = None,
            name: str | None = None, max_failures: int = 0, resume: bool = True, mlflow_run: MLflowRun = MLflowRun(),
            extra_callbacks: Sequence[Callback] = (), run_callbacks: Sequence[Any] = ()):
    """Run ``cfg`` with Ray Train's TorchTrainer; returns the ray.train.Result.

    ``resources``: workers and their CPUs/GPUs (default: 1 worker, 1 CPU, a GPU when ``run.device`` allows
    one and CUDA is present). ``storage_path`` may be a local directory or shared storage (NFS path,
    s3://...). With ``resume`` a run of the same name whose checkpoint exists continues from it.
    ``extra_callbacks`` go to every worker's trainer (fault drills); ``run_callbacks`` to Ray Train's
    RunConfig (e.g. Tune's report callback when a trial launched this run)."""
    if resources is None:
        gpu = cfg.run.device in ("auto", "cuda") and torch.cuda.is_available()
        resources = Resources(workers=1, cpus_per_worker=1.0, gpus_per_worker=1.0 if gpu else 0.0)
    storage_path = storage_path or str(Path(cfg.run.output_dir).resolve() / "ray")
    name = name or cfg.run.name
    loop_config = {"config": cfg.to_dict(), "mlflow": mlflow_run, "extra_callbacks": tuple(extra_callbacks)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=resources.workers, use_gpu=resources.gpus_per_worker > 0,
                                               resources_per_worker={"CPU": resources.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       callbacks=list(run_callbacks)),
        resume_from_checkpoint=latest_checkpoint(storage_path, name) if resume else None,
    )
    return trainer.fit()


def latest_checkpoint(storage_path: str, name: str):
    """The newest checkpoint a previous (killed) run of this name left in local storage, if any."""
    run_dir = Path(storage_path) / name
    if not run_dir.is_dir():
        return None
    candidates = sorted((p for p in run_dir.glob("checkpoint_*") if (p / LAST).exists()), key=lambda p: p.stat().st_mtime)
    return ray.train.Checkpoint.from_directory(str(candidates[-1])) if candidates else None


def result_metrics(result) -> dict[str, float]:
    """The final test metrics from a finished run's last checkpoint (best validation step)."""
    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(Path(d) / LAST)
    best = state["best"]
    out = drop_per_class(best["metrics"])
    out["best_step"] = best["step"]
    out["step"] = state["step"]
    return out
