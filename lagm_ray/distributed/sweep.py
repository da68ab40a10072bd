"""Ray Tune (+ Optuna) sweeps over a :class:`~lagm_ray.sweep_spec.SweepSpec`, nested in MLflow.

* Each trial is the LAGM trainer: run inside the trial process when ``resources.workers`` is 1, or as
  a Ray Train ``TorchTrainer`` of N workers launched from the trial otherwise.
* A trial reports to Tune at every evaluation, with a checkpoint, so ASHA can stop it early and a
  killed worker or driver resumes it from there (``FailureConfig`` / ``Tuner.restore``).
* MLflow: the driver creates one parent run per sweep before the Tuner starts and keeps its id in
  ``<storage>/<name>/lagm_sweep.json``; every trial logs into a child run tagged with its Tune trial
  id, which a restarted trial finds again instead of making a duplicate. When the sweep ends the
  parent gets the summary table and plot (lagm_ray/report.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import optuna
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from ..callbacks import Callback
from ..errors import ConfigError
from ..methods import Config, build_trainer
from ..report import write_report
from ..storage import atomic_write_text
from ..sweep_spec import SweepSpec
from ..tracking import (
    MLflowCallback,
    close_stopped_trials,
    end_run,
    find_sweep_run,
    find_trial_run,
    start_sweep_run,
    tracking_uri,
)
from .train import RayReport, ray_fit, resume
from .trial import MLflowRun, TrialContext

STATE_FILE = "lagm_sweep.json"
TRIAL_CPU = 0.5  # a trial that only launches a multi-worker TorchTrainer waits; it needs little CPU


def default_storage_path() -> str:
    """Where sweeps keep Tune state and checkpoints: $LAGM_STORAGE_PATH (NFS, s3://...) or ./ray_results."""
    return os.environ.get("LAGM_STORAGE_PATH") or str(Path("ray_results").resolve())


def absolute_paths(cfg: Config) -> Config:
    """Trials run in their own working directories and perhaps on other nodes: make every relative
    path in the config (and a relative SQLite tracking store) absolute, as seen from the driver."""
    def absolute(p: str | None) -> str | None:
        return p if p is None or "://" in p or p.startswith("embedded:") or p == "scratch" else str(Path(p).resolve())

    uri = tracking_uri(cfg.tracking.uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return cfg.replace({"tracking.uri": uri, "run.output_dir": absolute(cfg.run.output_dir),
                        "generator.checkpoint": absolute(cfg.generator.checkpoint),
                        "segmentor.init": absolute(cfg.segmentor.init), "data.root": absolute(cfg.data.root)})


def param_space(spec: SweepSpec) -> dict[str, Any]:
    return {key: _tune_domain(d) for key, d in spec.space.items()}


def _tune_domain(d):
    if d.kind == "grid":
        return tune.grid_search(d.values)
    if d.kind == "choice":
        return tune.choice(d.values)
    low, high = d.values
    if d.kind == "int":
        return tune.randint(low, high + 1)  # the spec's bounds are inclusive, randint's upper is not
    return tune.loguniform(low, high) if d.kind == "loguniform" else tune.uniform(low, high)


def make_searcher(spec: SweepSpec):
    if spec.searcher == "optuna":
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
    # Tune applies max_concurrent_trials to a Searcher (Optuna) only; the grid generator takes its own.
    return BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.max_concurrent_trials or 0)


def make_scheduler(spec: SweepSpec):
    if not spec.scheduler:
        return None
    a = dict(spec.scheduler["asha"] or {})
    t = spec.base.train
    reports = -(-t.steps // t.eval_interval)  # a trial reports once per evaluation
    return ASHAScheduler(time_attr="training_iteration", max_t=a.get("max_t", reports),
                         grace_period=a.get("grace_period", 1), reduction_factor=a.get("reduction_factor", 2))


# ------------------------------------------------------------------------------------ the trial


def trial_name(trial) -> str:
    """``00003-K=5`` rather than ``run_trial_633bf_00003``: the Tune and MLflow run name of a trial."""
    parts = [f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in sorted(trial.config.items())]
    return f"{trial.trial_id.rsplit('_', 1)[-1]}-" + ",".join(parts)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v).replace(",", "+")


def run_trial(params: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial: the base config with this trial's values, trained and reported to Tune."""
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    cfg = ctx.trial_config(params, trial_id)
    mlflow_run = MLflowRun(
        run_id=find_trial_run(ctx.parent_run_id, trial_id, cfg.tracking.uri)
        if cfg.tracking.enabled and ctx.parent_run_id else None,
        run_name=tune_ctx.get_trial_name(),
        tags={"lagm.trial_id": trial_id, "lagm.role": "trial", "lagm.sweep": ctx.sweep,
              "lagm.node": ray.get_runtime_context().get_node_id()})  # which node ran it (multi-node sweeps)

    if ctx.resources.workers > 1:
        ray_fit(cfg, ctx.resources, storage_path=ctx.storage_path, name=f"{ctx.sweep}-train-{trial_id}",
                max_failures=ctx.max_failures, mlflow_run=mlflow_run, extra_callbacks=ctx.extra_callbacks,
                run_callbacks=[TuneReportCallback()])
        return

    trainer = build_trainer(cfg)
    resume(trainer, tune.get_checkpoint())
    callbacks: list[Callback] = [RayReport(report=tune.report), *ctx.extra_callbacks]
    if cfg.tracking.enabled:
        callbacks.append(MLflowCallback(cfg, run_name=mlflow_run.run_name, tags=mlflow_run.tags,
                                        run_id=mlflow_run.run_id))
    trainer.fit(callbacks)


# ------------------------------------------------------------------------------------ the sweep


def run_sweep(spec: SweepSpec, storage_path: str | None = None, resume: bool = False,
              spec_text: str = "", extra_callbacks: Sequence[Callback] = (), verbose: int = 1):
    """Run a sweep, or with ``resume`` restore and finish the one of this name in the storage; returns
    (ResultGrid, parent run id).

    Without ``resume`` a sweep already in the storage is refused (ConfigError): Ray's restore unpickles
    ``<storage>/<name>/tuner.pkl``, so that state is read only when asked for.

    ``extra_callbacks`` go to every trial's trainer, e.g. a fault drill
    (:class:`~lagm_ray.distributed.faults.KillAfterCheckpoint`)."""
    storage_path = storage_path or default_storage_path()
    exp_path = f"{storage_path.rstrip('/')}/{spec.name}"  # Tune's experiment directory (local or s3://)
    exp_dir = Path(exp_path) if "://" not in storage_path else None
    state_path = exp_dir / STATE_FILE if exp_dir else None
    restorable = tune.Tuner.can_restore(exp_path)
    if not resume and (restorable or (state_path is not None and state_path.exists())):
        raise ConfigError(f"a sweep named {spec.name!r} already exists in {exp_path}: pass --resume to finish it "
                          "(only from storage you trust: Ray unpickles its state) or choose another --name")
    restoring = resume and restorable
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=verbose > 1)
    base = absolute_paths(spec.base)
    uri = base.tracking.uri

    state: dict[str, Any] = {}
    if restoring and state_path and state_path.exists():
        state = json.loads(state_path.read_text())
    parent_run_id = state.get("parent_run_id")
    if restoring and parent_run_id is None and base.tracking.enabled:
        # Remote storage keeps no state file of ours: the newest parent run of this sweep's name.
        try:
            parent_run_id = find_sweep_run(spec.name, base.tracking.experiment, uri)
        except LookupError:
            pass
    if base.tracking.enabled and parent_run_id is None:
        params = {"searcher": spec.searcher, "metric": spec.metric, "mode": spec.mode,
                  "num_samples": spec.num_samples, "max_concurrent_trials": spec.max_concurrent_trials,
                  **{f"space.{k}": f"{d.kind}{d.values}" for k, d in spec.space.items()}}
        parent_run_id = start_sweep_run(spec.name, base.tracking.experiment, uri, spec.swept_keys, spec.metric,
                                        spec.mode, params, spec_text or base.to_yaml())
    if exp_dir:
        exp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(state_path, json.dumps({"parent_run_id": parent_run_id, "tracking_uri": uri,
                                                   "experiment": base.tracking.experiment,
                                                   "source": spec.source}, indent=2))

    r = spec.resources
    ctx = TrialContext(sweep=spec.name, source=spec.source, base=base, parent_run_id=parent_run_id, resources=r,
                       storage_path=storage_path, max_failures=spec.max_failures,
                       extra_callbacks=tuple(extra_callbacks))
    if r.workers > 1:
        resources = {"cpu": TRIAL_CPU}
    else:
        resources = {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)

    optuna_limit = spec.max_concurrent_trials if spec.searcher == "optuna" else None  # see make_searcher
    if restoring:
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=make_searcher(spec),
                                        scheduler=make_scheduler(spec), num_samples=spec.num_samples,
                                        max_concurrent_trials=optuna_limit,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                        # a finished trial's process takes the next trial: no new
                                        # interpreter, no second import of torch, per trial
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=spec.name, storage_path=storage_path, verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
    results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if parent_run_id:
        close_stopped_trials(parent_run_id, uri, {r.metrics["trial_id"]: r.metrics for r in results
                                                  if r.error is None and r.metrics and "trial_id" in r.metrics})
        write_report(parent_run_id, uri, out_dir=exp_dir)
        end_run(parent_run_id, uri, "FAILED" if errors else "FINISHED")
    return results, parent_run_id
