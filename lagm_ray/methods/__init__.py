"""Every method the runner trains, one ``train.method`` value each, through the same Trainer loop.

``lagm`` and ``supervised`` live in lagm_ray/trainer.py; each baseline is one module here whose
Trainer subclass overrides the hooks (build, method_step, method_state). The module is imported
only when its method is asked for.

    trainer = build_trainer(cfg)     # instead of Trainer(cfg)
    result = trainer.fit(callbacks)
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import Config
from ..errors import ConfigError

# method -> "module:Class"
METHODS: dict[str, str] = {
    "lagm": "lagm_ray.trainer:Trainer",
    "supervised": "lagm_ray.trainer:Trainer",
    "datasetgan": "lagm_ray.methods.datasetgan:DatasetGANTrainer",
    "repurposegan": "lagm_ray.methods.repurposegan:RepurposeGANTrainer",
    "ganorcon": "lagm_ray.methods.ganorcon:GANORCONTrainer",
    "layermatch": "lagm_ray.methods.layermatch:LayerMatchTrainer",
    "pseudo_label": "lagm_ray.methods.lagm_baselines:PseudoLabelTrainer",
    "inversion": "lagm_ray.methods.lagm_baselines:InversionTrainer",
    "maml": "lagm_ray.methods.lagm_baselines:MAMLTrainer",
    "true_masks": "lagm_ray.methods.true_masks:TrueMasksTrainer",  # the embedded world's ceiling
}


def trainer_class(method: str) -> type:
    try:
        module, cls = METHODS[method].split(":")
    except KeyError:
        raise ConfigError(f"train.method: unknown method {method!r}; available: {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(module), cls)


def build_trainer(cfg: Config, **kwargs: Any):
    """The Trainer (or baseline subclass) for ``cfg.train.method``; kwargs as for Trainer."""
    return trainer_class(cfg.train.method)(cfg, **kwargs)
