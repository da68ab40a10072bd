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

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..callbacks import Callback
from ..methods import Config, build_trainer, from_dict
from ..metrics import drop_per_class
from ..storage import load_checkpoint, save_checkpoint
from ..trainer import Trainer

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

    def __init__(self, fail_at_step: int | None = None, fail_marker: str | None = None, report=None):
        self.pending: dict[str, float] = {}
        self.fail_at_step, self.fail_marker = fail_at_step, fail_marker
        self.report = report
        self.started, self.started_unix = time.perf_counter(), time.time()

    def on_start(self, trainer: Trainer) -> None:
        self.started, self.started_unix = time.perf_counter(), time.time()

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.pending.update(metrics)

    def on_eval(self, step: int, metrics: dict[str, float], pictures: dict[str, Any]) -> None:
        self.pending.update(metrics)

    def on_checkpoint(self, step: int, trainer: Trainer) -> None:
        import ray.train

        report = self.report or ray.train.report
        state = trainer.state_dict()
        if dist.is_initialized():
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, state["rng"])
        else:
            per_rank = [state["rng"]]
        metrics = {"step": step, **drop_per_class(self.pending)}
        if trainer.best["step"]:
            metrics["best/val_fg_miou"] = trainer.best["metric"]
            metrics.update({f"best/{k}": v for k, v in drop_per_class(trainer.best["metrics"]).items()
                            if k.startswith("test/")})
        if trainer.mean_step_seconds is not None:
            metrics["time/step_mean_s"] = trainer.mean_step_seconds
        metrics["time/fit_elapsed_s"] = time.perf_counter() - self.started  # wall time, reporting included
        metrics["time/fit_started_unix_s"] = self.started_unix  # when this (resumed) fit began: timelines
        self.pending = {}
        if trainer.rank == 0:
            state["rng_per_rank"] = per_rank
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(state, Path(d) / LAST)
                report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            report(metrics)
        # Fault injection for tests and drills: kill this worker's process once, right after a checkpoint.
        if self.fail_at_step == step and trainer.rank == 0 and self.fail_marker and not os.path.exists(self.fail_marker):
            Path(self.fail_marker).write_text(str(step))
            os._exit(1)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: build the trainer, resume from Ray's checkpoint, fit."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(loop_config["config"], source="ray train loop config")
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device() if cfg.run.device in ("auto", "cuda") else torch.device(cfg.run.device)
    trainer = build_trainer(cfg, device=device, rank=rank, grad_sync=allreduce_mean)
    resume(trainer, ray.train.get_checkpoint(), ctx.get_world_size())
    callbacks: list[Callback] = [RayReport(loop_config.get("fail_at_step"), loop_config.get("fail_marker"))]
    if rank == 0 and cfg.tracking.enabled:
        from ..tracking import MLflowCallback

        callbacks.append(MLflowCallback(cfg, run_id=loop_config.get("mlflow_run_id"),
                                        run_name=loop_config.get("mlflow_run_name"),
                                        tags=loop_config.get("mlflow_tags")))
    trainer.fit(callbacks)


def resume(trainer: Trainer, checkpoint, world_size: int = 1) -> bool:
    """Load a Ray checkpoint (from RayReport) into ``trainer``, with this rank's own RNG states."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as d:
        state = load_checkpoint(Path(d) / LAST, map_location=trainer.device)
    per_rank = state.get("rng_per_rank") or []
    if trainer.rank < len(per_rank) and len(per_rank) == world_size:
        state["rng"] = per_rank[trainer.rank]
    trainer.load_state_dict(state)
    return True


def ray_fit(cfg: Config, num_workers: int = 1, use_gpu: bool | None = None, storage_path: str | None = None,
            name: str | None = None, max_failures: int = 0, cpus_per_worker: float = 1.0,
            resume: bool = True, mlflow_run_id: str | None = None, fail_at_step: int | None = None,
            fail_marker: str | None = None, mlflow_run_name: str | None = None,
            mlflow_tags: dict[str, str] | None = None, callbacks: list | None = None):
    """Run ``cfg`` with Ray Train's TorchTrainer; returns the ray.train.Result.

    ``storage_path`` may be a local directory or shared storage (NFS path, s3://...). With
    ``resume`` a run of the same name whose checkpoint exists continues from it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if use_gpu is None:
        use_gpu = cfg.run.device in ("auto", "cuda") and torch.cuda.is_available()
    storage_path = storage_path or str(Path(cfg.run.output_dir).resolve() / "ray")
    name = name or cfg.run.name
    loop_config = {"config": cfg.to_dict(), "mlflow_run_id": mlflow_run_id, "fail_at_step": fail_at_step,
                   "fail_marker": fail_marker, "mlflow_run_name": mlflow_run_name, "mlflow_tags": mlflow_tags}
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(storage_path, name)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       callbacks=callbacks),
        resume_from_checkpoint=resume_from,
    )
    return trainer.fit()


def latest_checkpoint(storage_path: str, name: str):
    """The newest checkpoint a previous (killed) run of this name left in local storage, if any."""
    import ray.train

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
