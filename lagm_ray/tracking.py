"""MLflow for every run: full config, code version, per-step metrics and timings, pictures, checkpoints.

A thin :class:`~lagm_ray.callbacks.Callback`; the trainer never imports MLflow. Sweeps nest trial runs
under one parent run by passing ``tracking.parent_run_id``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .callbacks import Callback, TrainResult, is_interruption
from .datagen import manifest_path
from .methods import Config
from .mlflow_datasets import log_labelled_set, log_shards
from .mlflow_models import log_models
from .storage import atomic_write_text, code_version

DEFAULT_URI = "sqlite:///mlflow.db"
# The best validation FG-mIoU so far (a fraction, 0..1, as every metric in MLflow): a sweep's default
# metric, under this one name in Tune's reports, each trial's child run and the sweep's parent run.
BEST_METRIC = "best/val_fg_miou"
# Config keys not logged as params: bookkeeping that differs per sweep trial and would show up as a
# compared axis in the UI; the run's name and its parent tag already hold them (config.yaml keeps them).
UNLOGGED_PARAMS = ("run.name", "tracking.parent_run_id")
SWEPT_VALUES_TAG = "lagm.swept"  # on a trial's child run: its swept values, "train.K=5, train.lr=0.001"
SOURCE_TAG = "mlflow.source.name"  # the UI's Source column: the sweep file rather than Ray's default_worker.py
ERROR_TAG = "lagm.error"  # why a run failed or was killed: one line


def tracking_uri(cfg_uri: str | None = None) -> str:
    return cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def use_experiment(name: str, uri: str | None = None) -> str:
    """Point MLflow at the store (``uri``, else the default) and experiment ``name``; returns its id.

    With a SQLite store a new experiment keeps its artifacts in ``mlartifacts/`` beside the database
    (MLflow's default, ``./mlruns``, depends on whichever directory the first run happened to start in)."""
    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def setup(cfg: Config) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    return use_experiment(cfg.tracking.experiment, cfg.tracking.uri)


def log_params(flat: dict[str, Any]) -> None:
    # MLflow params are strings of bounded length; lists become "a,b".
    params = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in flat.items()}
    mlflow.log_params(params)


def log_dataset_run(manifest: dict[str, Any], out: str | Path, grid=None, experiment: str = "lagm-datasets",
                    uri: str | None = None, run_name: str | None = None) -> str:
    """One MLflow run per `lagm generate`: its settings as params, row counts, filtering and throughput as
    metrics, the manifest and a picture of sample rows as artifacts. Returns the run id."""
    out = Path(out)
    experiment_id = use_experiment(experiment, uri)
    last = manifest.get("last_run", {})
    tags = {**code_version(), "lagm.role": "dataset", "lagm.dataset_dir": str(out.resolve())}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"generate-{out.name}", tags=tags) as run:
        params = {f"generate.{k}": v for k, v in manifest["config"].items()}
        params.update({"annotator.sha256": manifest["annotator"]["sha256"],
                       "generator.sha256": manifest["generator"]["sha256"], "num_classes": manifest["num_classes"],
                       **{f"run.{k}": last[k] for k in ("executor", "concurrency", "cpus_per_actor", "use_gpu")
                          if k in last}})
        log_params(params)
        metrics = {"rows": manifest["rows"], "rows_filtered": manifest["filter"]["filtered"],
                   "kept_fraction": manifest["filter"]["kept_fraction"], "num_shards": manifest["num_shards"],
                   **{f"stats/{k}": v for k, v in manifest["stats"].items()},
                   **{f"run/{k}": last.get(k) for k in ("images_per_s", "seconds", "shards_written", "shards_reused",
                                                        "worker_peak_rss_mb", "driver_peak_rss_mb")}}
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_artifact(str(manifest_path(out)))
        log_shards(manifest, out, manifest_path(out))
        if grid is not None:
            mlflow.log_image(grid, artifact_file="samples.png")
    return run.info.run_id


def start_parent_run(run_name: str, experiment: str, uri: str | None = None,
                     tags: dict[str, str] | None = None) -> str:
    """Create a run left RUNNING until :func:`end_run`, under which other runs nest (a sweep's trials, a
    quickstart's trainings); returns its id. Made with the client API, so no run becomes "active"."""

    experiment_id = use_experiment(experiment, uri)
    run = MlflowClient(tracking_uri(uri)).create_run(
        experiment_id, tags={**code_version(), **(tags or {}), "mlflow.runName": run_name}, run_name=run_name)
    return run.info.run_id


def end_run(run_id: str, uri: str | None = None, status: str = "FINISHED",
            metrics: dict[str, float] | None = None, summary: tuple[dict, str] | None = None,
            tags: dict[str, str] | None = None) -> None:
    """Finish a run from :func:`start_parent_run`, first logging its final ``metrics``, ``summary``
    (a dict and the JSON artifact name it goes to) and ``tags`` (e.g. ``lagm.error``: why it failed)."""

    client = MlflowClient(tracking_uri(uri))
    for k, v in (metrics or {}).items():
        client.log_metric(run_id, k, v)
    if summary is not None:
        client.log_dict(run_id, summary[0], summary[1])
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status)


@contextlib.contextmanager
def command_run(params: dict[str, Any], run_name: str, experiment: str,
                uri: str | None = None) -> Iterator[tuple[str, Callable[..., None]]]:
    """A run for a command that is not a training (`lagm train-generator`, `evaluate`, `downstream`): its
    settings as params, the code version as tags; yields ``(run_id, log_metrics(metrics, step=None))``.
    Ends FAILED if the body raises, KILLED on Ctrl-C."""
    experiment_id = use_experiment(experiment, uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=code_version()) as run:
        log_params(params)
        try:
            yield run.info.run_id, mlflow.log_metrics
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise


class MLflowCallback(Callback):
    """One training's MLflow run: params and config at the start, metrics as they come, pictures, the best
    checkpoint at the end. The run's status tells what happened: FINISHED, FAILED (the training raised),
    KILLED (interrupted); a SIGKILLed run stays RUNNING until it is resumed.

    ``run_id``: continue that run (a resumed training, a restarted trial); steps it already logged are not
    logged again. ``run_id_file``: where the id of a new run is written as soon as the run exists, so
    that a resume after any kind of death finds it. ``checkpoint_dir``: named on the run when it stops.
    ``end_tags``: called at the end of a training, its tags set before the run is closed FINISHED."""

    wants_pictures = True  # logged as artifacts at every evaluation that draws them

    def __init__(self, cfg: Config, run_name: str | None = None, tags: dict[str, str] | None = None,
                 run_id: str | None = None, run_id_file: Path | None = None, checkpoint_dir: Path | None = None,
                 end_tags: Callable[[], dict[str, str]] | None = None):
        self.cfg = cfg
        self.end_tags = end_tags  # tags set just before the run ends FINISHED (a sweep trial's final report)
        self.run_name = run_name or cfg.run.name
        self.tags = dict(tags or {})
        self.run_id = run_id
        self.run_id_file, self.checkpoint_dir = run_id_file, checkpoint_dir
        self.logged_until = 0  # the last step the run already holds (resumed runs)
        self.best_logged_at = 0  # the last step best/val_fg_miou was logged at
        self.active = False
        self.trainer: Any = None  # the running Trainer

    def on_start(self, trainer: Any) -> None:
        self.trainer = trainer
        experiment_id = setup(self.cfg)
        tags = {**code_version(), "method": self.cfg.train.method, **self.tags}
        if self.run_id is not None:
            mlflow.start_run(run_id=self.run_id)
            self.active = True
            self.logged_until = last_logged_step(self.run_id)
            return
        run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                               parent_run_id=self.cfg.tracking.parent_run_id, tags=tags)
        self.run_id, self.active = run.info.run_id, True  # from here on, a stop is recorded on the run
        log_params({k: v for k, v in self.cfg.flat().items() if k not in UNLOGGED_PARAMS})
        if getattr(trainer, "splits", None) is not None:
            log_labelled_set(self.cfg, trainer.splits)
        mlflow.log_text(self.cfg.to_yaml(), "config.yaml")
        if self.run_id_file is not None:
            atomic_write_text(self.run_id_file, self.run_id)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.logged_until:
            mlflow.log_metrics(metrics, step=step)

    def on_eval(self, step: int, metrics: dict[str, float], pictures: dict[str, Any]) -> None:
        if step <= self.logged_until:
            return
        best = self.trainer.best if self.trainer is not None else {}
        if best.get("step"):  # the sweep metric, under the name Tune and the parent run know it by
            metrics = {**metrics, BEST_METRIC: best["metric"]}
            self.best_logged_at = step
        mlflow.log_metrics(metrics, step=step)
        for name, image in pictures.items():
            mlflow.log_image(image, artifact_file=f"pictures/{name}_step{step:07d}.png")

    def on_end(self, result: TrainResult) -> None:
        mlflow.log_metrics({f"result/{k}": v for k, v in result.metrics.items()})
        step = self.trainer.step if self.trainer is not None else 0
        # at the last step too, for a run resumed after its last evaluation: once, not again after on_eval
        if "val/fg_miou" in result.metrics and step > max(self.logged_until, self.best_logged_at):
            mlflow.log_metric(BEST_METRIC, result.metrics["val/fg_miou"], step=step)
        if self.trainer is not None and self.trainer.mean_step_seconds is not None:
            # Kept out of result.metrics, which must repeat exactly for a seed; timings never do.
            mlflow.log_metric("result/time/step_mean_s", self.trainer.mean_step_seconds)
        if self.trainer is not None:
            with tempfile.TemporaryDirectory() as d:
                self.trainer.save_best(Path(d) / "best.pt")
                mlflow.log_artifact(str(Path(d) / "best.pt"), "checkpoints")
            log_models(self.trainer)  # the same weights as MLflow models: "Logged models" in the UI
        if self.end_tags is not None:
            mlflow.set_tags(self.end_tags())
        mlflow.end_run()
        self.active = False

    def on_abort(self, step: int, error: BaseException) -> None:
        if not self.active:
            return
        tags = {"lagm.stopped_at_step": str(step),
                "lagm.error": (f"{type(error).__name__}: {error}".splitlines() or [""])[0][:500]}
        last = self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None
        if last is not None and last.exists():
            tags["lagm.last_checkpoint"] = str(last.resolve())
        mlflow.set_tags(tags)
        mlflow.end_run("KILLED" if is_interruption(error) else "FAILED")
        self.active = False


def last_logged_step(run_id: str) -> int:
    """The largest step at which ``run_id`` logged any metric (0 if none)."""
    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return max((m.step for k in keys for m in client.get_metric_history(run_id, k)), default=0)


# ---------------------------------------------------------------------------------------------
# Sweeps: one parent run per sweep, one child run per trial (found again after a restore).

SWEEP_TAG = "lagm.sweep"  # on the parent: the sweep's name
ROLE_TAG = "lagm.role"  # "sweep" on the parent, "trial" on children
TRIAL_TAG = "lagm.trial_id"  # on a child: the Ray Tune trial id
SWEPT_TAG = "lagm.swept_keys"  # on the parent: comma-separated swept config keys
METRIC_TAG = "lagm.metric"  # on the parent: "<metric> <mode>"


def start_sweep_run(name: str, experiment: str, uri: str | None, swept_keys: list[str], metric: str, mode: str,
                    params: dict[str, Any], spec_text: str, source: str | None = None) -> str:
    """Create the sweep's parent run (left RUNNING until :func:`end_run`); returns its id.

    Created by the driver before any trial starts, so that trials only ever nest under it. ``source``:
    the sweep file, shown as the run's Source."""

    run_id = start_parent_run(f"sweep-{name}", experiment, uri, tags={
        SWEEP_TAG: name, ROLE_TAG: "sweep", SWEPT_TAG: ",".join(swept_keys), METRIC_TAG: f"{metric} {mode}",
        **({SOURCE_TAG: source, "mlflow.source.type": "LOCAL"} if source else {})})
    client = MlflowClient(tracking_uri(uri))
    for k, v in params.items():
        client.log_param(run_id, k, str(v)[:500])
    client.log_text(run_id, spec_text, "sweep.yaml")
    return run_id


def find_trial_run(parent_run_id: str, trial_id: str, uri: str | None):
    """The child run a trial already created (before its worker or the driver was killed), if any."""
    runs = child_runs(parent_run_id, uri, f"tags.`{TRIAL_TAG}` = '{trial_id}'")
    return runs[0] if runs else None


FINAL_REPORT_TAG = "lagm.final_report"  # on a child: the trial's last Tune report, JSON, set as it finishes


STOP_TAGS = (ERROR_TAG, "lagm.stopped_at_step", "lagm.last_checkpoint")  # why and where a run stopped


def reopen_run(run_id: str, uri: str | None) -> None:
    """A run closed KILLED or FAILED when its sweep's driver stopped (the parent, a trial's child) is
    RUNNING again as the sweep is restored, without the tags that said why it stopped."""
    client = MlflowClient(tracking_uri(uri))
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    for tag in STOP_TAGS:
        if tag in run.data.tags:
            client.delete_tag(run_id, tag)


def final_report(run) -> dict[str, Any] | None:
    """The last Tune report of a trial whose training finished and whose child run was closed FINISHED
    (None otherwise): a restored sweep reports it to Tune again instead of training the trial again."""
    text = run.data.tags.get(FINAL_REPORT_TAG) if run is not None and run.info.status == "FINISHED" else None
    return json.loads(text) if text else None


def record_trial_failure(parent_run_id: str, uri: str | None, run_id: str | None, run_name: str,
                         tags: dict[str, str], params: dict[str, Any], reason: str) -> str:
    """End a trial's child run FAILED with ``reason``, creating it first when the trial failed before
    its training opened one (a bad config value, an unreadable file). A run the training already
    closed (its MLflowCallback.on_abort) is left as it is. Returns the run id."""
    client = MlflowClient(tracking_uri(uri))
    if run_id is None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        run_id = client.create_run(experiment_id, run_name=run_name, tags={
            **code_version(), **tags, "mlflow.parentRunId": parent_run_id, "mlflow.runName": run_name}).info.run_id
        for k, v in params.items():  # the sampled values: which setting failed
            client.log_param(run_id, k, str(v)[:500])
    elif client.get_run(run_id).info.status != "RUNNING":
        return run_id
    client.set_tag(run_id, ERROR_TAG, reason)
    client.set_terminated(run_id, "FAILED")
    return run_id


def close_open_trials(parent_run_id: str, uri: str | None, status: str, reason: str,
                      failed: dict[str, str] | None = None) -> int:
    """Close the child runs still RUNNING, whose trial process ended without closing them (killed with
    the driver, or by a worker death Ray gave up on): ``status`` (KILLED) with ``reason``, or FAILED with
    the trial's own reason when its run name is in ``failed`` (run name -> one-line reason)."""
    client = MlflowClient(tracking_uri(uri))
    closed = 0
    for run in child_runs(parent_run_id, uri, "attributes.status = 'RUNNING'"):
        own = (failed or {}).get(run.info.run_name)
        client.set_tag(run.info.run_id, ERROR_TAG, own or reason)
        client.set_terminated(run.info.run_id, "FAILED" if own else status)
        closed += 1
    return closed


def child_runs(parent_run_id: str, uri: str | None, extra_filter: str = "") -> list:
    """The runs nested under ``parent_run_id`` (and matching ``extra_filter``, an MLflow filter string)."""

    client = MlflowClient(tracking_uri(uri))
    parent = client.get_run(parent_run_id)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" + (f" and {extra_filter}" if extra_filter else "")
    return client.search_runs([parent.info.experiment_id], filter_string=query, max_results=10_000)


def find_sweep_run(sweep: str, experiment: str | None, uri: str | None) -> str:
    """A sweep's parent run id from its name (the newest run of that name) or its run id."""
    client = MlflowClient(tracking_uri(uri))
    if len(sweep) == 32 and all(c in "0123456789abcdef" for c in sweep):
        try:
            return client.get_run(sweep).info.run_id
        except MlflowException:
            pass
    experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in experiments if e is not None]
    runs = client.search_runs(ids, filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{ROLE_TAG}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not runs:
        raise LookupError(f"no sweep named {sweep!r} in {tracking_uri(uri)}"
                          + (f" (experiment {experiment!r})" if experiment else ""))
    return runs[0].info.run_id


STOPPED_TAG = "lagm.stopped_early"


def close_stopped_trials(parent_run_id: str, uri: str | None, last_reports: dict[str, dict[str, float]]) -> int:
    """Trials a scheduler (ASHA) stopped never reach their own end: their child runs are RUNNING (or
    KILLED, when the stop reached the trainer as an interruption) and hold no result/ metrics. Give them
    their best-so-far from the last Tune report, tag them stopped early and close them FINISHED: the
    scheduler's stop is a normal end of a trial. ``last_reports``: Tune trial id -> last reported
    metrics of the trials that ended without an error."""
    client = MlflowClient(tracking_uri(uri))
    closed = 0
    for run in child_runs(parent_run_id, uri):
        report = last_reports.get(run.data.tags.get(TRIAL_TAG, ""))
        if run.info.status not in ("RUNNING", "KILLED") or report is None:
            continue
        result = {f"result/{k.removeprefix('best/')}": v for k, v in report.items()
                  if k.startswith("best/test/")}
        if BEST_METRIC in report:
            result["result/val/fg_miou"] = result[BEST_METRIC] = report[BEST_METRIC]
        if "time/step_mean_s" in report:
            result["result/time/step_mean_s"] = report["time/step_mean_s"]
        for k, v in result.items():
            client.log_metric(run.info.run_id, k, float(v))
        client.set_tag(run.info.run_id, STOPPED_TAG, f"at step {int(report.get('step', 0))}")
        client.set_terminated(run.info.run_id, "FINISHED")
        closed += 1
    return closed
