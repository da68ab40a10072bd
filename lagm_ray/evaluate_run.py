"""`lagm evaluate`: score a run's checkpoint on the test split, optionally with Table 1's protocol."""

from __future__ import annotations

from pathlib import Path

from .config import from_dict, load_config, parse_override
from .io import load_checkpoint
from .metrics import drop_per_class
from .methods import build_trainer
from .trainer import BEST_FORMAT, CHECKPOINT_FORMAT


def evaluate_checkpoint(path: str | Path, config: str | Path | None = None, overrides: list[str] | None = None,
                        downstream: bool = False) -> dict[str, float]:
    """Metrics of a ``best.pt`` (best validation step) or ``last.pt`` (resume state) checkpoint.

    The run's own config (stored in the checkpoint) is used unless ``config`` is given; ``overrides``
    apply on top (e.g. ``eval.downstream_images=2000``)."""
    path = Path(path)
    state = load_checkpoint(path)
    fmt = state.get("format")
    if fmt not in (BEST_FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{path}: not a lagm_ray run checkpoint (format {fmt!r}); expected best.pt or last.pt")
    if config is not None:
        cfg = load_config(config, overrides or [])
    else:
        cfg = from_dict(state["config"], source=f"{path} (stored config)")
        if overrides:
            cfg = cfg.replace(dict(parse_override(o) for o in overrides), source="--set")
    trainer = build_trainer(cfg)
    if fmt == CHECKPOINT_FORMAT:
        trainer.load_state_dict(state)
    else:
        trainer.segmentor.load_state_dict(state["segmentor"])
        if trainer.annotator is not None and state.get("annotator") is not None:
            trainer.annotator.load_state_dict(state["annotator"])
        trainer.step = int(state["step"])
    trainer.best = {"step": trainer.step, "metric": -1.0, "metrics": {}}  # score these weights, not a stored best
    metrics, _ = trainer.evaluate(pictures=False)
    metrics = drop_per_class(metrics)
    metrics["step"] = float(trainer.step)
    if downstream:
        metrics.update(trainer.downstream(use_best=False))
    return metrics
