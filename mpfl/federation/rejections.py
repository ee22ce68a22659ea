"""Rejected messages, logged without letting a flood write the log.

A hostile or broken client can send thousands of bad messages a second; one log line
each would fill a device's disk and hide everything else. :class:`RejectionLog` writes
the first rejection of each reason at once (with its detail: the one worth reading), then
only a summary of the further ones, at most once per ``interval`` seconds. Counting stays
exact; only the lines are rate-limited.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping

SUMMARY_INTERVAL_S = 60.0


class RejectionLog:
    def __init__(
        self,
        emit: Callable[[str], None],
        who: str,
        interval: float = SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit = emit
        self.who = who
        self.interval = interval
        self.clock = clock
        self.totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()  # since the last line
        self._observed: Counter[str] = Counter()
        self._last_summary = clock()

    def note(self, reason: str, where: str = "", detail: str = "", count: int = 1) -> None:
        """``count`` more rejections for ``reason`` (on topic ``where``); logs the first
        of each reason with its detail."""
        if count <= 0:
            return
        first = reason not in self.totals
        self.totals[reason] += count
        if first:
            on = f" on {where}" if where else ""
            text = f": {detail}" if detail else ""
            self.emit(f"{self.who}: dropped a message{on} ({reason}){text}; further drops "
                      f"are summarized every {self.interval:g}s")
            count -= 1
        self._pending[reason] += count
        self.flush()

    def note_counted(self, reason: str, where: str = "", detail: str = "") -> None:
        """One rejection that a counter :meth:`observe` reads already holds (the gate adds
        it to the server's): noted here with its topic and detail, and not again by the
        next ``observe``, so each rejection is counted and logged once."""
        self._observed[reason] += 1
        self.note(reason, where, detail)

    def observe(self, counts: Mapping[str, int]) -> None:
        """Note what a counter kept elsewhere gained since the last call."""
        for reason, total in counts.items():
            gained = total - self._observed[reason]
            if gained > 0:
                self._observed[reason] = total
                self.note(reason, count=gained)

    def baseline(self, counts: Mapping[str, int]) -> None:
        """Counts already seen (a resumed run's): not logged again."""
        self._observed = Counter(counts)

    def flush(self, force: bool = False) -> None:
        """The summary line, if drops are pending and it is time (or ``force``)."""
        pending = +self._pending
        if not pending or (not force and self.clock() - self._last_summary < self.interval):
            return
        self._last_summary = self.clock()
        self._pending.clear()
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(pending.items()))
        self.emit(f"{self.who}: dropped {pending.total()} more message(s): {counts}")
