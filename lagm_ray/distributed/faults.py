"""Fault drills: a trainer callback that kills its own process once, right after a checkpoint.

Tests and operators pass it to a sweep or a Ray Train run (``extra_callbacks``) to see a trial or a
worker die and come back from its last checkpoint; nothing in the production path knows about it."""

from __future__ import annotations

import os
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
