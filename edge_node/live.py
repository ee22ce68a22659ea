"""The edge agent's view in a terminal: a progress bar of the local epochs of the round
it trains. Log lines scroll above it (one shared console, ``mpfl.logs.console``)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from mpfl.logs import console
from mpfl.wire.protocol import Progress as EpochProgress


class EpochBar:
    def __init__(self) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("epochs"), TimeElapsedColumn(),
                             console=console(), auto_refresh=False, transient=False)
        self._round = 0
        self._task: TaskID | None = None

    def show(self, progress: EpochProgress) -> None:
        if self._task is None:
            self._bar.start()
        if progress.round != self._round or self._task is None:
            if self._task is not None:
                self._bar.stop_task(self._task)
            self._task = self._bar.add_task(f"round {progress.round}", total=progress.epochs)
            self._round = progress.round
        self._bar.update(self._task, completed=progress.epoch, refresh=True)

    def stop(self) -> None:
        if self._task is not None:
            self._bar.stop()
