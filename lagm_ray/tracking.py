"""MLflow for every run: full config, code version, per-step metrics and timings, pictures, checkpoints.

A thin :class:`~lagm_ray.trainer.Callback`; the trainer never imports MLflow. Sweeps nest trial runs
under one parent run by passing ``tracking.parent_run_id``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from . import __version__
from .config import Config
from .trainer import Callback, Trainer, TrainResult

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg_uri: str | None = None) -> str:
    return cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def code_version() -> dict[str, str]:
    """Package version and, when run from a git checkout, the commit (with a dirty marker)."""
    info = {"lagm_ray.version": __version__}
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            info["git.commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def use_experiment(name: str, uri: str | None = None) -> str:
    """Point MLflow at the store (``uri``, else the default) and experiment ``name``; returns its id."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp else mlflow.create_experiment(name)


def setup(cfg: Config) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    return use_experiment(cfg.tracking.experiment, cfg.tracking.uri)


def log_params(flat: dict[str, Any]) -> None:
    # MLflow params are strings of bounded length; lists become "a,b".
    params = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in flat.items()}
    mlflow.log_params(params)


class MLflowCallback(Callback):
    def __init__(self, cfg: Config, run_name: str | None = None, tags: dict[str, str] | None = None,
                 run_id: str | None = None):
        self.cfg = cfg
        self.run_name = run_name or cfg.run.name
        self.tags = dict(tags or {})
        self.run_id = run_id  # resume into an existing run (after a restart) instead of a new one
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        experiment_id = setup(self.cfg)
        tags = {**code_version(), "method": self.cfg.train.method, **self.tags}
        if self.run_id is not None:
            run = mlflow.start_run(run_id=self.run_id)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                   parent_run_id=self.cfg.tracking.parent_run_id, tags=tags)
            self.run_id = run.info.run_id
            log_params(self.cfg.flat())
            mlflow.log_text(self.cfg.to_yaml(), "config.yaml")

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=step)

    def on_eval(self, step: int, metrics: dict[str, float], pictures: dict[str, Any]) -> None:
        mlflow.log_metrics(metrics, step=step)
        for name, image in pictures.items():
            mlflow.log_image(image, artifact_file=f"pictures/{name}_step{step:07d}.png")

    def on_end(self, result: TrainResult) -> None:
        mlflow.log_metrics({f"result/{k}": v for k, v in result.metrics.items()})
        if self.trainer is not None:
            with tempfile.TemporaryDirectory() as d:
                self.trainer.save_best(Path(d) / "best.pt")
                mlflow.log_artifact(str(Path(d) / "best.pt"), "checkpoints")
        mlflow.end_run()
