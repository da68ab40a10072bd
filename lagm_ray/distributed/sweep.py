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

import contextlib
import json
import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

import optuna
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from ..callbacks import Callback, is_interruption
from ..errors import ConfigError
from ..methods import Config, build_trainer
from ..report import log_paper, write_report
from ..storage import atomic_write_text
from ..sweep_spec import SweepSpec
from ..tracking import (
    ERROR_TAG,
    SOURCE_TAG,
    SWEPT_VALUES_TAG,
    MLflowCallback,
    close_open_trials,
    close_stopped_trials,
    end_run,
    final_report,
    find_sweep_run,
    find_trial_run,
    record_trial_failure,
    reopen_run,
    start_sweep_run,
    tracking_uri,
)
from .session import start_ray
from .train import RayReport, final_report_tags, ray_fit, resume
from .trial import (
    DETERMINISTIC_KEY,
    MLflowRun,
    TrialContext,
    is_deterministic,
    one_line,
)

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
    """One Tune trial: the base config with this trial's values, trained and reported to Tune.

    A trial whose training already finished (its child run FINISHED with its final report: the driver
    died after it ended but before Tune saved that) reports that result again and trains nothing. A
    deterministic error (ConfigError, DataError, CheckpointError, DatasetError) fails the trial once:
    its child run ends FAILED with the reason, and Tune is told not to retry it (:class:`NoRetry`)."""
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    uri = ctx.base.tracking.uri
    tracked = bool(ctx.base.tracking.enabled and ctx.parent_run_id)
    child = find_trial_run(ctx.parent_run_id, trial_id, uri) if tracked else None
    done = final_report(child)
    if done is not None:
        tune.report(done)
        return
    if child is not None and child.info.status != "RUNNING":
        reopen_run(child.info.run_id, uri)  # stopped with an earlier driver: its stop tags no longer hold
    mlflow_run = MLflowRun(
        run_id=child.info.run_id if child is not None else None,
        run_name=tune_ctx.get_trial_name(),
        tags={"lagm.trial_id": trial_id, "lagm.role": "trial", "lagm.sweep": ctx.sweep,
              SWEPT_VALUES_TAG: ", ".join(f"{k}={v}" for k, v in sorted(params.items())),
              SOURCE_TAG: ctx.source, "mlflow.source.type": "LOCAL",  # not Ray's default_worker.py
              "lagm.node": ray.get_runtime_context().get_node_id()})  # which node ran it (multi-node sweeps)
    try:
        cfg = ctx.trial_config(params, trial_id)
        if ctx.resources.workers > 1:
            # Train retries every worker error and takes no filter, so it retries none here: Tune does, by
            # running this trial again, which resumes the Train run from its last checkpoint (ray_fit's
            # resume); a deterministic error is then not retried at all (NoRetry), as in 1-worker trials.
            ray_fit(cfg, ctx.resources, storage_path=ctx.storage_path, name=f"{ctx.sweep}-train-{trial_id}",
                    max_failures=0, mlflow_run=mlflow_run, extra_callbacks=ctx.extra_callbacks,
                    run_callbacks=[TuneReportCallback()])
            return
        trainer = build_trainer(cfg)
        resume(trainer, tune.get_checkpoint())
        ray_report = RayReport(report=tune.report)
        callbacks: list[Callback] = [ray_report, *ctx.extra_callbacks]
        if tracked:
            callbacks.append(MLflowCallback(cfg, run_name=mlflow_run.run_name, tags=mlflow_run.tags,
                                            run_id=mlflow_run.run_id,
                                            end_tags=final_report_tags(ray_report, trainer)))
        trainer.fit(callbacks)
    except BaseException as error:
        if not is_deterministic(error):
            raise  # anything else may pass on a retry (a lost node, a full disk): Tune's FailureConfig
        reason = one_line(error)
        if tracked:  # the run as it is now: the training (or a Train worker) may have opened it
            child = find_trial_run(ctx.parent_run_id, trial_id, uri)
            record_trial_failure(ctx.parent_run_id, uri, child.info.run_id if child else None,
                                 mlflow_run.run_name or trial_id, mlflow_run.tags, params, reason)
        tune.report({DETERMINISTIC_KEY: 1.0, "lagm/error": reason, **({ctx.metric: math.nan} if ctx.metric else {})})
        raise


class NoRetry(tune.Callback):
    """Tune's FailureConfig retries every exception a trial raises and takes no filter; the decision is
    ``Trial.should_recover``, which compares the trial's failures with that trial's own ``max_failures``.
    A trial about to raise a deterministic error reports DETERMINISTIC_KEY first (Tune processes a
    trial's report before the error that follows it); here, in the driver, that report sets the trial's
    ``max_failures`` to 0, so the error ends it ERROR at once, with the error as its result."""

    def __init__(self, max_failures: int):
        self.max_failures = max_failures

    def on_trial_start(self, iteration, trials, trial, **info):
        trial.max_failures = self.max_failures  # a restored errored trial gets its retries back

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(DETERMINISTIC_KEY):
            trial.max_failures = 0


# ------------------------------------------------------------------------------------ the sweep


def run_sweep(spec: SweepSpec, storage_path: str | None = None, resume: bool = False,
              spec_text: str = "", extra_callbacks: Sequence[Callback] = (), verbose: int = 1):
    """Run a sweep, or with ``resume`` restore and finish the one of this name in the storage; returns
    (ResultGrid, parent run id).

    Without ``resume`` a sweep already in the storage is refused (ConfigError): Ray's restore unpickles
    ``<storage>/<name>/tuner.pkl``, so that state is read only when asked for. The parent run and every
    child run are closed on every way out: FINISHED (the parent FAILED if a trial failed) at the end;
    the parent FAILED (tag ``lagm.error``) when the driver raises; the parent KILLED on Ctrl-C or SIGTERM,
    which then raise KeyboardInterrupt. Children left RUNNING end KILLED, or FAILED for a failed trial.

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
    base = absolute_paths(spec.base).replace({"tracking.experiment": spec.experiment_name})
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
    if restoring and parent_run_id:
        reopen_run(parent_run_id, uri)  # closed KILLED or FAILED by the run that stopped
    if base.tracking.enabled and parent_run_id is None:
        params = {"searcher": spec.searcher, "metric": spec.metric, "mode": spec.mode,
                  "num_samples": spec.num_samples, "max_concurrent_trials": spec.max_concurrent_trials,
                  **{f"space.{k}": f"{d.kind}{d.values}" for k, d in spec.space.items()}}
        parent_run_id = start_sweep_run(spec.name, base.tracking.experiment, uri, spec.swept_keys, spec.metric,
                                        spec.mode, params, spec_text or base.to_yaml(), source=spec.source)
        if spec.paper or spec.paper_note:
            log_paper(parent_run_id, uri, spec.paper, spec.paper_note)
    try:
        with sigterm_as_sigint():
            if exp_dir:
                exp_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(state_path, json.dumps({"parent_run_id": parent_run_id, "tracking_uri": uri,
                                                           "experiment": base.tracking.experiment,
                                                           "source": spec.source}, indent=2))
            start_ray(verbose=verbose > 1)
            results = _tuner(spec, base, parent_run_id, storage_path, exp_path, restoring, extra_callbacks,
                             verbose).fit()
    except BaseException as error:
        if parent_run_id:
            _close_stopped_sweep(parent_run_id, uri, error)
        raise
    if results.num_terminated + results.num_errors < len(results):
        # Tune's own SIGINT handler (Ctrl-C, or SIGTERM passed on to it) ends fit() early and normally.
        stop = KeyboardInterrupt(f"sweep {spec.name} interrupted: finish it with --resume")
        if parent_run_id:
            _close_stopped_sweep(parent_run_id, uri, stop)
        raise stop
    if parent_run_id:
        _close_finished_sweep(parent_run_id, uri, results, exp_dir)
    return results, parent_run_id


def _tuner(spec: SweepSpec, base: Config, parent_run_id: str | None, storage_path: str, exp_path: str,
           restoring: bool, extra_callbacks: Sequence[Callback], verbose: int) -> tune.Tuner:
    r = spec.resources
    ctx = TrialContext(sweep=spec.name, source=spec.source, base=base, parent_run_id=parent_run_id, resources=r,
                       storage_path=storage_path, max_failures=spec.max_failures,
                       extra_callbacks=tuple(extra_callbacks), metric=spec.metric)
    if r.workers > 1:
        resources = {"cpu": TRIAL_CPU}
    else:
        resources = {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    if restoring:
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    optuna_limit = spec.max_concurrent_trials if spec.searcher == "optuna" else None  # see make_searcher
    return tune.Tuner(
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
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  callbacks=[NoRetry(spec.max_failures)]),
    )


def failed_trials(results) -> dict[str, str]:
    """Trial name -> one-line reason, for every trial of ``results`` that failed."""
    failed = {}
    for r in results:
        name = Path(r.path or "").name  # the trial's directory, named as its run (trial_name)
        if r.error is not None:
            failed[name] = one_line(r.error)
        elif (r.metrics or {}).get(DETERMINISTIC_KEY):  # a scheduler stopped it on that report: failed all the same
            failed[name] = str(r.metrics.get("lagm/error", "a deterministic error"))
    return failed


def _close_finished_sweep(parent_run_id: str, uri: str, results, exp_dir: Path | None) -> None:
    """The end of a sweep that ran all its trials: trials stopped early closed FINISHED, runs of trials
    whose process died closed FAILED with their reason, the summary written; the parent FINISHED, or
    FAILED naming the failed trials."""
    failed = failed_trials(results)
    status, tags = "FINISHED", {}
    if failed:
        name, reason = next(iter(failed.items()))
        status, tags = "FAILED", {ERROR_TAG: f"{len(failed)} of {len(results)} trials failed; {name}: {reason}"[:500]}
    try:
        close_stopped_trials(parent_run_id, uri, {r.metrics["trial_id"]: r.metrics for r in results
                                                  if Path(r.path or "").name not in failed and r.metrics
                                                  and "trial_id" in r.metrics})
        close_open_trials(parent_run_id, uri, "KILLED", "its trial ended without closing it", failed)
        write_report(parent_run_id, uri, out_dir=exp_dir)
    except Exception as e:
        status, tags = "FAILED", {ERROR_TAG: f"closing the sweep: {one_line(e)}"}
        raise
    finally:
        end_run(parent_run_id, uri, status, tags=tags)


def _close_stopped_sweep(parent_run_id: str, uri: str, error: BaseException) -> None:
    """The driver stopped before the sweep's end: the parent KILLED (interrupted) or FAILED (it raised),
    with the reason; children still RUNNING KILLED (their trials were stopped with the driver)."""
    reason = "interrupted (Ctrl-C or SIGTERM)" if is_interruption(error) else one_line(error)
    try:
        close_open_trials(parent_run_id, uri, "KILLED", f"the sweep stopped: {reason}")
        end_run(parent_run_id, uri, "KILLED" if is_interruption(error) else "FAILED", tags={ERROR_TAG: reason})
    except Exception as e:  # noqa: BLE001 - the driver's own error is the one to raise
        error.add_note(f"while closing the sweep's MLflow runs: {type(e).__name__}: {e}")


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`, a job stopped) acts as Ctrl-C: during fit() Tune's SIGINT
    handler saves the state and stops the trials, and the runs are closed KILLED. Python's default
    SIGTERM action would end the driver on the spot and leave every run RUNNING. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        sigint = signal.getsignal(signal.SIGINT)
        if callable(sigint):
            sigint(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
