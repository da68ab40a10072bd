"""Fault drills: trainer callbacks that kill their own process once, right after a checkpoint, or raise.

Tests and operators pass them to a sweep or a Ray Train run (``extra_callbacks``) to see a trial or a
worker die and come back from its last checkpoint, or a trial fail; nothing in the production path
knows about them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..callbacks import Callback


class KillAfterCheckpoint(Callback):
    """Exit the process (status 1, no clean-up, as a crash would) after the checkpoint of ``step``,
    once: ``marker`` is written first, so the restarted process runs on."""

    def __init__(self, step: int, marker: str | os.PathLike):
        self.step, self.marker = step, Path(marker)

    def on_checkpoint(self, step: int, trainer: Any) -> None:
        if step == self.step and trainer.rank == 0 and not self.marker.exists():
            self.marker.write_text(str(step))
            os._exit(1)


class RaiseAtStart(Callback):
    """Raise ``error`` as a training whose config has ``key`` = ``value`` starts, appending a line to
    ``attempts`` each time: a deterministic error inside one trial of a sweep, its attempts counted."""

    def __init__(self, error: BaseException, key: str, value: Any, attempts: str | os.PathLike):
        self.error, self.key, self.value, self.attempts = error, key, value, Path(attempts)

    def on_start(self, trainer: Any) -> None:
        if trainer.cfg.flat().get(self.key) == self.value:
            # Every worker of a Ray Train run raises; rank 0 records the attempt, at once, and the others a
            # moment later, so that an attempt is counted once however fast Train tears the group down.
            if trainer.rank == 0:
                with self.attempts.open("a") as f:
                    f.write(f"{self.key}={self.value}\n")
            else:
                time.sleep(2)
            raise self.error
