"""What a training run tells the layers around it: the callback protocol and the result.

Torch-free, so tracking (MLflow), progress bars and the Ray layers implement it without importing the
trainer; the trainer calls these hooks and never imports any of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Callback:
    """Hooks the outer layers implement; every method is optional. ``trainer`` is the running
    lagm_ray.trainer.Trainer (not imported here, so this module stays torch-free)."""

    wants_pictures = False  # True where on_eval shows its pictures: only then does fit draw them

    def on_start(self, trainer: Any) -> None: ...
    def on_log(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float], pictures: dict[str, Any]) -> None: ...
    def on_checkpoint(self, step: int, trainer: Any) -> None: ...
    def on_end(self, result: "TrainResult") -> None: ...
    # The run stops with ``error`` after ``step`` steps: KeyboardInterrupt (Ctrl-C, or SIGTERM where the
    # caller turns it into one) is an interruption, anything else a failure. ``fit`` re-raises it after.
    def on_abort(self, step: int, error: BaseException) -> None: ...


def is_interruption(error: BaseException) -> bool:
    """Stopped from outside (Ctrl-C, SIGTERM, a Ray cancellation) rather than failed by itself."""
    return isinstance(error, (KeyboardInterrupt, SystemExit))


@dataclass
class TrainResult:
    metrics: dict[str, float]  # test metrics at the best validation step, plus bookkeeping
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)
