"""What a Ray Tune trial needs to know about its sweep, typed, and the one place a trial's config is built.

The driver fills a :class:`TrialContext` once per sweep; Tune hands it to every trial. A trial's config
is the sweep's base with the sampled values and the trial's own bookkeeping set, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..callbacks import Callback
from ..datagen.spec import DatasetError
from ..errors import CheckpointError, ConfigError, DataError
from ..methods import Config
from ..sweep_spec import Resources

# Errors a trial raises again, identically, on every attempt with the same config and files: a retry
# costs minutes and tracebacks and changes nothing, so a trial fails at the first one (run_trial).
DETERMINISTIC_ERRORS = (ConfigError, DataError, CheckpointError, DatasetError)
# Reported to Tune by a trial just before it raises one of them; the driver's NoRetry callback then
# takes that trial's retries away (Tune's FailureConfig itself retries every exception alike).
DETERMINISTIC_KEY = "lagm/deterministic_error"


@dataclass(frozen=True)
class MLflowRun:
    """Where a training logs in MLflow when a sweep launched it: the trial's child run (found again
    after a restart: ``run_id``), its name and tags."""

    run_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialContext:
    sweep: str  # the sweep's name: prefixes the trials' run names
    source: str  # the sweep file, for error messages
    base: Config  # the sweep's base config, validated by the driver, paths made absolute
    parent_run_id: str | None  # the sweep's MLflow parent run; None when tracking is off
    resources: Resources  # per trial: Ray Train workers, CPUs and GPUs per worker
    storage_path: str  # Tune and Ray Train state (local, NFS or s3://)
    max_failures: int  # restarts of a trial (or of its Ray Train run) from its last checkpoint
    extra_callbacks: tuple[Callback, ...] = ()  # added to every trial's trainer: fault drills in tests
    metric: str = ""  # the sweep's metric: every report to Tune holds it (NaN in a failed trial's last)

    def trial_config(self, params: dict[str, Any], trial_id: str) -> Config:
        """The base with this trial's sampled ``params`` and bookkeeping set, validated once."""
        eval_interval = params.get("train.eval_interval", self.base.train.eval_interval)
        return self.base.replace({
            **params,
            "run.name": f"{self.sweep}-{trial_id}",
            # Report and checkpoint at every evaluation: the metric is in every report.
            "train.checkpoint_interval": eval_interval,
            "tracking.parent_run_id": self.parent_run_id,
            # One torch thread per CPU the trial reserved, whatever the base config asks for a standalone
            # run: concurrent trials with more threads than cores slow each other down several times over.
            "run.num_threads": max(1, int(self.resources.cpus_per_worker)),
        }, source=f"{self.source}: trial {params}")


def root_cause(error: BaseException) -> BaseException:
    """The trial's own exception inside what Ray wraps it in: a RayTaskError (``cause``) around a trial,
    a Ray Train WorkerGroupError (``worker_failures``, by rank) around a multi-worker run."""
    for _ in range(5):  # a few layers at most; never loop on a self-referencing cause
        failures = getattr(error, "worker_failures", None)
        inner = next(iter(failures.values()), None) if failures else getattr(error, "cause", None)
        if not isinstance(inner, BaseException) or inner is error:
            return error
        error = inner
    return error


def is_deterministic(error: BaseException) -> bool:
    """One of DETERMINISTIC_ERRORS, itself or under Ray's wrappers (every worker of a Train run)."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        return all(is_deterministic(e) for e in failures.values())
    return isinstance(root_cause(error), DETERMINISTIC_ERRORS)


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` of the root cause, as a run tag or a summary line holds it."""
    cause = root_cause(error)
    if str(cause).startswith("Traceback"):  # Tune's TuneError(traceback.format_exc()): say what it caught
        inner = cause.__cause__ or cause.__context__
        if inner is not None:
            return one_line(inner)
        return ([x for x in str(cause).splitlines() if x.strip()] or [""])[-1][:500]
    return (f"{type(cause).__name__}: {cause}".splitlines() or [""])[0][:500]
