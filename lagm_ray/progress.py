"""Progress bars for long work (rich), as a trainer callback and a plain step counter."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .callbacks import Callback, TrainResult

console = Console(stderr=True)


def make_progress(transient: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, transient=transient)


class ProgressCallback(Callback):
    def __init__(self, description: str = "train"):
        self.description = description
        self.progress: Progress | None = None
        self.task = None
        self.info = ""

    def on_start(self, trainer: Any) -> None:
        self.progress = make_progress()
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=trainer.total_steps,
                                           completed=trainer.step, info="")

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("loss/gm", metrics.get("loss/segmentor"))
        self.progress.update(self.task, completed=step, info=f"loss {loss:.4f} {self.info}" if loss is not None else "")

    def on_eval(self, step: int, metrics: dict[str, float], pictures: dict[str, Any]) -> None:
        self.info = f"val FG-mIoU {100 * metrics['val/fg_miou']:.1f}"
        self.progress.update(self.task, completed=step, info=self.info)

    def on_end(self, result: TrainResult) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[0].total)
        self.progress.stop()


class QueueProgress(Callback):
    """A training in a worker process reports its steps through ``queue`` as ``(key, step, total, info)``
    tuples, so the parent's progress bar moves with every log step, not only when a training ends."""

    def __init__(self, queue: Any, key: Any):
        self.queue, self.key, self.info = queue, key, ""

    def on_start(self, trainer: Any) -> None:
        self.queue.put((self.key, trainer.step, trainer.total_steps, "started"))

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("loss/gm", metrics.get("loss/segmentor"))
        self.queue.put((self.key, step, None, (f"loss {loss:.4f} " if loss is not None else "") + self.info))

    def on_eval(self, step: int, metrics: dict[str, float], pictures: dict[str, Any]) -> None:
        self.info = f"val FG-mIoU {100 * metrics['val/fg_miou']:.1f}"
        self.queue.put((self.key, step, None, self.info))
