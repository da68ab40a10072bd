"""The registry: every method the runner trains, one ``train.method`` value each, through the same Trainer loop,
and the full run config assembled from the shared sections (lagm_ray/config.py) and the methods' own.

``lagm`` and ``supervised`` live in lagm_ray/trainer.py; each other method is one module here whose Trainer
subclass overrides the hooks (build, method_step, method_state) and declares its settings: ``section`` (its
top-level config key, e.g. ``datasetgan``), ``Settings`` (that section's pydantic dataclass) and ``check``
(its checks across sections). Adding a method = its module + one line in METHODS.

    cfg = load_config("lagm_ray/configs/quickstart.yaml", ["train.method=datasetgan"])
    trainer = build_trainer(cfg)     # instead of Trainer(cfg)
    result = trainer.fit(callbacks)
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from ..config import SHARED_SECTIONS, build, flatten, layered, set_dotted
from ..errors import ConfigError
from ..trainer import Trainer
from .datasetgan import DatasetGANTrainer
from .ganorcon import GANORCONTrainer
from .lagm_baselines import InversionTrainer, MAMLTrainer, PseudoLabelTrainer
from .layermatch import LayerMatchTrainer
from .repurposegan import RepurposeGANTrainer
from .true_masks import TrueMasksTrainer

METHODS: dict[str, type[Trainer]] = {
    "lagm": Trainer,
    "supervised": Trainer,
    "pseudo_label": PseudoLabelTrainer,
    "inversion": InversionTrainer,
    "maml": MAMLTrainer,
    "datasetgan": DatasetGANTrainer,
    "repurposegan": RepurposeGANTrainer,
    "ganorcon": GANORCONTrainer,
    "layermatch": LayerMatchTrainer,
    "true_masks": TrueMasksTrainer,  # the embedded world's ceiling
}


class _ConfigMethods:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"train.K": 1, ...}``: the form MLflow params and sweep spaces use."""
        return flatten(self.to_dict())

    def replace(self, overrides: dict[str, Any] | None = None, source: str = "overrides") -> Config:
        """A validated copy with dotted keys set, e.g. ``{"train.K": 5}``."""
        data = self.to_dict()
        for key, value in (overrides or {}).items():
            set_dotted(data, key, value, source)
        return from_dict(data, source)


def _config_class() -> type:
    """``Config``: a pydantic dataclass with one field per shared section, then one per method section."""
    sections = {**SHARED_SECTIONS, **{c.section: c.Settings for c in METHODS.values() if c.section is not None}}
    namespace = {"__module__": __name__, "__qualname__": "Config", "__annotations__": sections,
                 **{name: field(default_factory=cls) for name, cls in sections.items()}}
    return dataclass(type("Config", (_ConfigMethods,), namespace), config=ConfigDict(extra="forbid"))


Config = _config_class()


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """YAML file (optional) plus overrides (``["train.K=5"]`` or ``{"train.K": 5}``) -> Config."""
    return from_dict(*layered(Config().to_dict(), path, overrides))


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """A checked Config: every section's keys (pydantic), ``train.method`` (the registry), then the method's
    checks across sections (``Trainer.check`` and its subclass's)."""
    cfg = build(Config, data, source)
    cls = trainer_class(cfg.train.method, source)
    try:
        cls.check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def trainer_class(method: str, source: str = "config") -> type[Trainer]:
    try:
        return METHODS[method]
    except KeyError:
        raise ConfigError(f"{source}: train.method must be one of {', '.join(METHODS)}, got {method!r}") from None


def build_trainer(cfg: Config, **kwargs: Any) -> Trainer:
    """The Trainer (or baseline subclass) for ``cfg.train.method``; kwargs as for Trainer."""
    return trainer_class(cfg.train.method)(cfg, **kwargs)
