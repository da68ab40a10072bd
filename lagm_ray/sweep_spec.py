"""A sweep, declared in one YAML file under search_spaces/ and checked before Ray starts.

    name: ablation_k
    base: quickstart                  # a packaged config (lagm_ray/configs/NAME.yaml) or a path
    overrides: {train.steps: 600}     # dotted config keys applied to the base
    space:                            # dotted config key -> one domain
      train.K: {grid: [1, 2, 5, 10, 20]}
      train.annotator_optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
    metric: best/val_fg_miou          # what the searcher and scheduler optimise
    mode: max
    searcher: grid                    # grid | optuna (TPE) | random
    scheduler: {asha: {grace_period: 2, reduction_factor: 2}}   # optional; null = run every trial out
    num_samples: 1                    # grid: repeats of the whole grid; optuna/random: trials
    max_concurrent_trials: 2
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    max_failures: 2                   # restarts of a trial from its last checkpoint
    quick: {train.steps: 40}          # overrides added by --quick

Its MLflow runs go to an experiment named after the sweep (``ablation_k``; ``ablation_k-quick`` with
--quick), unless ``tracking.experiment`` is set in its overrides, by --set or by --experiment.

Domains: ``grid`` (every value, every trial set), ``choice`` (sampled), ``uniform``/``loguniform``
([low, high]), ``int`` ([low, high], inclusive). Every key and every value a domain can produce is
validated against the config schema here, so a typo fails at once with the file and key named.
This module imports no Ray: distributed/sweep.py turns a :class:`SweepSpec` into a Tuner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import flatten, parse_override
from .errors import ConfigError
from .methods import Config, load_config
from .metrics import HEADLINE_METRICS

CONFIG_DIR = Path(__file__).parent / "configs"
DOMAINS = ("grid", "choice", "uniform", "loguniform", "int")
SEARCHERS = ("grid", "optuna", "random")
# What each trial reports to Tune (distributed/train.py, RayReport) that a searcher or scheduler may optimise.
TUNE_METRICS = ("best/val_fg_miou",
                *(f"{split}/{m}" for split in ("val", "test", "best/test") for m in HEADLINE_METRICS),
                *(f"annotator/{m}_vs_truth" for m in HEADLINE_METRICS), "time/step_mean_s")
TOP_KEYS = {"name", "description", "base", "overrides", "space", "metric", "mode", "searcher", "scheduler",
            "num_samples", "max_concurrent_trials", "resources", "max_failures", "quick", "seed"}


@dataclass
class Domain:
    kind: str  # one of DOMAINS
    values: list[Any]  # grid/choice: the values; uniform/loguniform/int: [low, high]

    def examples(self) -> list[Any]:
        """Values to validate the config with: all of a grid/choice, the ends of a range."""
        return list(self.values)


@dataclass
class Resources:
    workers: int = 1  # Ray Train workers per trial; 1 runs the trainer inside the trial itself
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass
class SweepSpec:
    name: str
    base: Config  # base config with overrides (and quick overrides) applied
    space: dict[str, Domain]
    metric: str = "best/val_fg_miou"
    mode: str = "max"
    searcher: str = "optuna"
    scheduler: dict[str, Any] | None = None
    num_samples: int = 1
    max_concurrent_trials: int = 2
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 2
    seed: int = 0
    description: str = ""
    source: str = "sweep"  # the file it came from, for messages
    experiment: str | None = None  # an MLflow experiment asked for (--experiment, tracking.experiment override)
    # The paper's numbers for this sweep's settings (lagm_ray/paper.py: setting -> "mIoU %" or (time/step
    # ratio, "mIoU %")) and where they come from: logged on the parent run beside ours.
    paper: dict[Any, Any] = field(default_factory=dict)
    paper_note: str = ""

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment of the sweep's runs: the one asked for, else one named after the sweep
        (``ablation_k``, ``ablation_k-quick``); never the base config's, which every sweep shares."""
        return self.experiment or self.name

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The full config of one trial: the base with the sampled dotted keys set."""
        return self.base.replace(params, source=f"{self.source}: trial {params}")

    def configs_to_check(self) -> list[Config]:
        """The base, and the base with each value a domain can produce (grid, choice, a range's ends) set
        alone: what the driver checks (generator, data, folders) before Ray starts."""
        return [self.base] + [self.trial_config({key: v}) for key, d in self.space.items() for v in d.examples()]

    @property
    def swept_keys(self) -> list[str]:
        return list(self.space)

    def set_grid(self, key: str, values: list[Any]) -> None:
        """Replace (or add) ``key``'s domain by a grid, each value validated like the file's."""
        if not values:
            raise ConfigError(f"{self.source}: {key}: an empty grid")
        for v in values:
            self.trial_config({key: v})
        self.space[key] = Domain("grid", list(values))


def _resolve_base(base: str, spec_path: Path | None) -> Path:
    if base.endswith((".yaml", ".yml")) or "/" in base:
        p = Path(base)
        if not p.is_absolute() and spec_path is not None and not p.exists():
            p = spec_path.parent / p
        return p
    return CONFIG_DIR / f"{base}.yaml"


def _domain(key: str, raw: Any, source: str) -> Domain:
    where = f"{source}: space.{key}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"{where}: must be one of {{{', '.join(DOMAINS)}: ...}}, got {raw!r}")
    (kind, values), = raw.items()
    if kind not in DOMAINS:
        raise ConfigError(f"{where}: unknown domain {kind!r}; use one of {', '.join(DOMAINS)}")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}: must be a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "int"):
        if len(values) != 2:
            raise ConfigError(f"{where}.{kind}: must be [low, high], got {values!r}")
        try:
            lo, hi = (int(v) for v in values) if kind == "int" else (float(v) for v in values)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{kind}: bounds must be numbers, got {values!r}") from None
        if not lo < hi if kind != "int" else not lo <= hi:
            raise ConfigError(f"{where}.{kind}: low must be below high, got {values!r}")
        if kind == "loguniform" and lo <= 0:
            raise ConfigError(f"{where}.loguniform: bounds must be > 0, got {values!r}")
        values = [lo, hi]
    return Domain(kind, values)


def load_sweep(path: str | Path, quick: bool = False, overrides: dict[str, Any] | list[str] | None = None,
               name: str | None = None) -> SweepSpec:
    """Read and validate a search_spaces/ file. ``overrides`` (dotted config keys) go on top of the
    file's, after ``quick``'s; ``name`` renames the sweep (a shrunk sweep should not share a name)."""
    path = Path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{source}: cannot read sweep file ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown sweep key {sorted(unknown)[0]!r}; keys: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "space"):
        if key not in raw:
            raise ConfigError(f"{source}: missing required key {key!r}")

    def mapping(key: str) -> dict[str, Any]:
        v = raw.get(key) or {}
        if not isinstance(v, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {v!r}")
        return flatten(v)

    base_path = _resolve_base(str(raw.get("base", "quickstart")), path)
    if not base_path.exists():
        raise ConfigError(f"{source}: base config {raw.get('base')!r} not found (looked at {base_path})")
    all_overrides = {**mapping("overrides"), **(mapping("quick") if quick else {})}
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    all_overrides.update(overrides or {})
    try:
        base = load_config(base_path, all_overrides)
    except ConfigError as e:
        raise ConfigError(f"{source}: base {base_path.name} with the sweep's overrides: {e}") from None

    space_raw = raw["space"]
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError(f"{source}: space must map config keys to domains")
    space = {key: _domain(key, dom, source) for key, dom in space_raw.items()}
    valid_keys = set(Config().flat())
    for key, dom in space.items():
        for value in dom.examples():  # an unknown key fails here, with the section's valid keys listed
            base.replace({key: value}, source=f"{source}: space.{key}")
        if key not in valid_keys:
            raise ConfigError(f"{source}: space.{key}: sweep single keys (e.g. train.K), not a whole section")

    searcher = raw.get("searcher", "optuna")
    if searcher not in SEARCHERS:
        raise ConfigError(f"{source}: searcher must be one of {', '.join(SEARCHERS)}, got {searcher!r}")
    if searcher == "grid":
        bad = [k for k, d in space.items() if d.kind != "grid"]
        if bad:
            raise ConfigError(f"{source}: space.{bad[0]}: searcher grid needs grid domains, got {space[bad[0]].kind}")
    if searcher == "optuna":
        bad = [k for k, d in space.items() if d.kind == "grid"]
        if bad:
            raise ConfigError(f"{source}: space.{bad[0]}: optuna samples; use choice instead of grid "
                              "(or searcher: grid)")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{source}: mode must be max or min, got {mode!r}")
    scheduler = raw.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, dict) or set(scheduler) != {"asha"} or not isinstance(scheduler["asha"] or {}, dict):
            raise ConfigError(f"{source}: scheduler must be null or {{asha: {{grace_period, reduction_factor}}}}, "
                              f"got {scheduler!r}")
        extra = set(scheduler["asha"] or {}) - {"grace_period", "reduction_factor", "max_t"}
        if extra:
            raise ConfigError(f"{source}: scheduler.asha: unknown key {sorted(extra)[0]!r}")
    res_raw = raw.get("resources") or {}
    if not isinstance(res_raw, dict) or set(res_raw) - {"workers", "cpus_per_worker", "gpus_per_worker"}:
        raise ConfigError(f"{source}: resources takes workers, cpus_per_worker, gpus_per_worker; got {res_raw!r}")
    resources = Resources(**res_raw)

    def positive_int(key: str, default: int, minimum: int = 1) -> int:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{source}: {key} must be an integer >= {minimum}, got {v!r}")
        return v

    if resources.workers < 1 or resources.cpus_per_worker <= 0 or resources.gpus_per_worker < 0:
        raise ConfigError(f"{source}: resources: workers >= 1, cpus_per_worker > 0, gpus_per_worker >= 0; "
                          f"got {res_raw!r}")
    metric = str(raw.get("metric", "best/val_fg_miou"))
    if metric not in TUNE_METRICS:
        raise ConfigError(f"{source}: metric must be one a trial reports ({', '.join(TUNE_METRICS)}), got {metric!r}")
    spec_name = str(name or raw["name"])
    if not spec_name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{source}: name must be letters, digits, - and _, got {spec_name!r}")
    return SweepSpec(
        name=spec_name, base=base, space=space, metric=metric, mode=mode,
        searcher=searcher, scheduler=scheduler, num_samples=positive_int("num_samples", 1),
        max_concurrent_trials=positive_int("max_concurrent_trials", 2), resources=resources,
        max_failures=positive_int("max_failures", 2, minimum=0), seed=positive_int("seed", 0, minimum=0),
        description=str(raw.get("description", "")), source=source,
        experiment=all_overrides.get("tracking.experiment"))
