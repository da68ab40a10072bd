"""The shared part of the one typed configuration: the sections every method reads, and how a config is read.

The CLI, experiments/ and search_spaces/ all build a config the same way: a YAML file (optional) plus
``section.key=value`` overrides. Each section is a pydantic dataclass: pydantic checks every key's type and
bounds, so a bad value fails before any work starts, with the key (and the file) named in the message.
A method's own section lives in its module (lagm_ray/methods/); :mod:`lagm_ray.methods` registers the
methods and assembles the full ``Config`` from these sections and theirs.

The defaults are the paper's / reference code's (SGD lr 1e-3 momentum 0.9 for both networks,
K = 1, batch 2, Head matched, 150k steps). Quickstart and test configs override them explicitly.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from .errors import ConfigError


def config_section(cls: type) -> type:
    """Decorator of every config section: a dataclass whose keys pydantic checks; an unknown key is an error.
    Numbers are read laxly (YAML's "1e-3" is a string, a float here); give booleans as ``StrictBool``."""
    return dataclass(cls, config=ConfigDict(extra="forbid"))


def invalid(key: str, message: str) -> PydanticCustomError:
    """For a section's ``model_validator``: ``raise invalid("key", "must ...")`` names ``section.key``."""
    return PydanticCustomError("config_key", "{key} {message}", {"key": key, "message": message})


def _resolution(r: int) -> int:
    if not (16 <= r <= 1024 and r & (r - 1) == 0):
        raise ValueError("must be a power of two in 16..1024")
    return r


def _device(name: str) -> str:
    if not (name in ("auto", "cpu", "cuda", "mps") or name.startswith("cuda:")):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return name


Resolution = Annotated[int, AfterValidator(_resolution)]
Widths = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]  # layer widths: at least one, each >= 1


@config_section
class RunConfig:
    name: str = "lagm"
    seed: int = 0
    # "auto" = CUDA when present, else CPU; or "cpu", "cuda", "cuda:1"
    device: Annotated[str, AfterValidator(_device)] = "auto"
    output_dir: str = "runs"
    num_threads: Annotated[int, Field(ge=0)] = 0  # torch intra-op threads on CPU; 0 leaves torch's default


@config_section
class DataConfig:
    dataset: str = "embedded"  # "embedded" (procedural world) or a real dataset name
    category: str = "faces"
    root: str | None = None  # dataset root for real datasets
    num_labelled: Annotated[int, Field(ge=1)] = 10
    resolution: Resolution = 64  # generator / annotator output resolution
    seg_resolution: Resolution | None = None  # segmentor input resolution (Table C.9); None = resolution
    num_val: Annotated[int, Field(ge=1)] = 100
    num_test: Annotated[int, Field(ge=1)] = 200
    # Folder of unlabelled real images (jpg/png/webp, flat or nested), e.g. LSUN horse/airplane exported
    # for Pascal-Horse / Pascal-Aeroplane; None = the dataset has no unlabelled set here.
    unlabelled_root: str | None = None
    # DatasetGAN sets (Car-20, Cat-16, Face-34): the test images are split into cv_folds folds; fold
    # cv_fold is the validation set and the other folds the test set (sweep cv_fold for Table 1).
    cv_folds: int = 5
    cv_fold: int = 0

    @model_validator(mode="after")
    def _segmentor_not_finer(self) -> DataConfig:
        if self.seg_resolution is not None and self.seg_resolution > self.resolution:
            raise invalid("seg_resolution", f"must not exceed data.resolution ({self.resolution}), "
                                            f"got {self.seg_resolution}")
        return self


@config_section
class GeneratorConfig:
    # "embedded:<category>" loads the toy StyleGAN2 shipped in lagm_ray/assets; otherwise a path.
    checkpoint: str = "embedded:faces"
    truncation_psi: Annotated[float, Field(ge=0)] = 1.0  # the embedded world's true masks are exact only at psi = 1
    truncation_cutoff: int | None = None
    noise_mode: Literal["const", "random", "none"] = "const"


@config_section
class AnnotatorConfig:
    width: Annotated[int, Field(ge=1)] = 128  # FPN channels (reference: 128)
    # Resolutions of the synthesis blocks that feed the FPN; empty = every block (reference).
    feature_resolutions: list[int] = field(default_factory=list)


@config_section
class SegmentorConfig:
    # One of lagm_ray.models.segmentors.SEGMENTOR_KINDS (checked with train.matched_blocks by Trainer.check).
    kind: str = "deeplabv3_resnet101"
    width: int | None = None  # channel width multiplier base (64 = torchvision); None = default
    init: str = "scratch"  # "scratch" or a path to torchvision-format weights


@config_section
class OptimConfig:
    name: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # SGD only
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


@config_section
class TrainConfig:
    # lagm and supervised are the paper's; the rest are the methods it is compared with, each configured in
    # its own section. The allowed names are the registry's, lagm_ray.methods.METHODS (one module per method).
    method: str = "lagm"
    steps: Annotated[int, Field(ge=1)] = 150_000
    # Algorithm 1's K: the segmentor is updated once every K annotator steps.
    # The reference code accepts K but always behaves as K = 1; K > 1 is implemented here.
    K: Annotated[int, Field(ge=1, description="segmentor updated every K steps")] = 1
    # Segmentor steps each time it is updated. The paper's Figure 4 finds the annotator learns faster
    # the more often the segmentor moves; > 1 goes further than K = 1. 1 = Algorithm 1 (reference code).
    segmentor_steps: Annotated[int, Field(ge=1)] = 1
    # Block names depend on the segmentor kind: Trainer.check checks them.
    matched_blocks: Annotated[list[str], Field(min_length=1)] = field(default_factory=lambda: ["Head"])
    labelled_batch_size: Annotated[int, Field(ge=0, description="0 = whole labelled set")] = 2
    synthetic_batch_size: Annotated[int, Field(ge=1)] = 2
    # 0 = a fresh G(z) for every synthetic batch (Algorithm 1, reference code). N > 0 = batches drawn from
    # N samples generated once at the start (seeded): takes the generator out of the step on CPU budgets.
    synthetic_pool: int = 0
    annotator_optim: OptimConfig = field(default_factory=OptimConfig)
    segmentor_optim: OptimConfig = field(default_factory=OptimConfig)
    # Gradient matching details (reference code's behaviour by default, see README):
    node_reduction: Literal["mean", "sum"] = "mean"  # per tensor: mean (code) or sum (paper Eq. 12) over output nodes
    count_1d_tensors: StrictBool = True  # 1-D tensors add 0 but count in the divisor (code)
    synthetic_target: Literal["soft", "hard"] = "soft"  # soft CE against the annotator's softmax (code)
    # Class weights (labelled-set pixel frequency)^-p in the cross-entropy on labelled images: the loss of
    # supervised-only, and for LAGM both sides of the gradient matching (the segmentor's own steps on
    # annotator labels stay plain). Small parts (eyes, brows) then weigh in the matched gradients as much
    # as their rarity hides them. 0 = plain CE (paper, reference code). Read by lagm and supervised.
    class_weight_power: Annotated[float, Field(ge=0)] = 0.0
    eval_interval: Annotated[int, Field(ge=1)] = 4000
    checkpoint_interval: Annotated[int, Field(ge=1)] = 4000
    log_interval: Annotated[int, Field(ge=1)] = 50
    picture_interval: Annotated[int, Field(ge=0)] = 0  # 0 = pictures only at evaluation

    @model_validator(mode="after")
    def _pool_holds_a_batch(self) -> TrainConfig:
        if self.synthetic_pool != 0 and self.synthetic_pool < self.synthetic_batch_size:
            raise invalid("synthetic_pool", f"must be 0 (fresh samples) or at least train.synthetic_batch_size "
                                            f"({self.synthetic_batch_size}), got {self.synthetic_pool}")
        return self


@config_section
class EvalConfig:
    absent_class: Literal["zero", "ignore"] = "zero"  # reference quirk: absent classes count as IoU 0
    num_annotator_samples: int = 64  # generated images scored against true masks (embedded world)
    # Downstream protocol of Table 1: a fresh segmentor trained on annotator-labelled images.
    downstream_images: Annotated[int, Field(ge=1)] = 10_000
    downstream_epochs: Annotated[int, Field(ge=1)] = 20
    downstream_batch_size: Annotated[int, Field(ge=1)] = 8
    downstream_lr: Annotated[float, Field(gt=0)] = 1e-3


@config_section
class TrackingConfig:
    enabled: StrictBool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "lagm"
    parent_run_id: str | None = None  # set by sweeps to nest a trial's run


# The sections every run has, in the order a stored config lists them; lagm_ray.methods adds one per method.
SHARED_SECTIONS: dict[str, type] = {
    "run": RunConfig, "data": DataConfig, "generator": GeneratorConfig, "annotator": AnnotatorConfig,
    "segmentor": SegmentorConfig, "train": TrainConfig, "eval": EvalConfig, "tracking": TrackingConfig,
}


# ---------------------------------------------------------------------------------------------
# Reading


def layered(data: dict[str, Any], path: str | Path | None = None,
            overrides: list[str] | dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The defaults ``data`` (a config's ``to_dict()``, updated in place), then the YAML file's keys, then the
    overrides (``["train.K=5"]`` or ``{"train.K": 5}``) -> (data, the source to name in error messages)."""
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        for key, value in flatten(loaded).items():
            set_dotted(data, key, value, str(path))
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        set_dotted(data, key, value, f"{path} + overrides" if path else "overrides")
    return data, str(path) if path is not None else "overrides" if items else "defaults"


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.K=5"`` -> ("train.K", 5). The value is read as YAML, so lists and nulls work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.K=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key.strip(), value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """``data["train"]["K"] = value`` for key "train.K"; the key must exist in ``data`` (a full config dict).
    A string where the key holds a list is comma-separated ("Res5,Head" from a command line)."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"{source}: unknown config key {key!r} (no section {'.'.join(parts[: i + 1])!r}); "
                              f"valid sections: {', '.join(data)}")
        node = node[part]
    if parts[-1] not in node:
        section = ".".join(parts[:-1]) or "<top>"
        raise ConfigError(f"{source}: unknown config key {key!r}; keys in {section}: {', '.join(node)}")
    if isinstance(node[parts[-1]], dict) and isinstance(value, dict):
        for k, v in value.items():
            set_dotted(data, f"{key}.{k}", v, source)
    elif isinstance(node[parts[-1]], list) and isinstance(value, str):
        node[parts[-1]] = [v.strip() for v in value.split(",") if v.strip()]
    else:
        node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Checking: pydantic's errors, one line each, naming the file and the dotted key


def build(cls: type, data: Any, source: str) -> Any:
    """``cls(**data)`` for a config class; pydantic's errors become one ConfigError, a line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return cls(**data)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{source}: {problem(err, cls)}" for err in e.errors())) from None


_MUST = {  # pydantic error type -> what the value must be
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "list_type": "must be a list",
    "dataclass_type": "must be a mapping", "dataclass_args_type": "must be a mapping",
    "literal_error": "must be {expected}",
    "too_short": "must have at least {min_length} item(s)", "too_long": "must have at most {max_length} item(s)",
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_CONSTRAINTS = _BOUNDS | {"literal_error", "too_short", "too_long", "value_error"}  # these get the field's hint


def problem(err: dict[str, Any], root: type) -> str:
    """One pydantic error as ``key must ..., got value``; ``root`` is the class that was validated."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    parent, info = _field(root, loc)
    if kind == "config_key":  # a section's model validator: invalid(key, message)
        return f"{key}.{ctx['key']} {ctx['message']}"
    if kind == "unexpected_keyword_argument":
        where = f"keys in {key.rpartition('.')[0]}" if len(loc) > 1 else "valid sections"
        return f"unknown config key {key!r}; {where}: {', '.join(getattr(parent, '__pydantic_fields__', ()))}"
    if kind == "value_error":
        must = str(ctx.get("error", err["msg"]))
    elif kind in _MUST:
        bounds = _bounds(info.metadata) if info is not None and kind in _BOUNDS else None
        must = bounds or _MUST[kind].format(**{k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()})
    else:
        must = err["msg"]
    if info is not None and info.description and kind in _CONSTRAINTS:
        must += f" ({info.description})"
    return f"{key} {must}, got {err['input']!r}"


def _field(root: type, loc: tuple) -> tuple[type, Any]:
    """(the section holding the last key of ``loc``, that key's pydantic FieldInfo or None for a list item)."""
    cls, info = root, None
    for part in loc:
        fields = getattr(cls, "__pydantic_fields__", {})
        if not isinstance(part, str) or part not in fields:
            return cls, None
        info = fields[part]
        if hasattr(info.annotation, "__pydantic_fields__"):
            cls = info.annotation
    return cls, info


def _bounds(metadata: list[Any]) -> str | None:
    """A field's bounds as written: "must be >= 1", "must be in [0, 1)"; None if it has none."""
    low = [("[", ">=", m.ge) if isinstance(m, Ge) else ("(", ">", m.gt) for m in metadata if isinstance(m, (Ge, Gt))]
    high = [("]", "<=", m.le) if isinstance(m, Le) else (")", "<", m.lt) for m in metadata if isinstance(m, (Le, Lt))]
    if low and high:
        return f"must be in {low[0][0]}{low[0][2]}, {high[0][2]}{high[0][0]}"
    if low or high:
        return f"must be {(low or high)[0][1]} {(low or high)[0][2]}"
    return None


def resolve_device(name: str):
    """The ``run.device`` key: "auto" picks CUDA when present (cluster GPUs), else CPU."""
    import torch  # only when a run starts: reading a config does not need torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
