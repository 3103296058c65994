"""``ProgressBar``: one line of progress, updated in place; sparse lines in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .callback import Callback
from .metrics import latest

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Prints ``Progress:  20%, epoch:  1/10, batch: 152/157, elapsed:    1.2s``, then the
    latest epoch's published quantities (``train loss: 0.31, valid accuracy: 0.9``; see
    ``k1lib.callbacks.metrics.latest``).

    On a terminal or in Jupyter the line is redrawn in place (at most ``refresh`` times a
    second); when output goes to a file or a CI log, a full line is printed at most every
    ``logEvery`` seconds and once at the end, never thousands of carriage returns. With
    several processes only rank 0 prints."""

    def __init__(self, refresh: float = 10.0, logEvery: float = 10.0, stream: TextIO | None = None) -> None:  # noqa: N803
        super().__init__()
        self.refresh = refresh
        self.logEvery = logEvery
        self.stream = stream
        self._start = 0.0
        self._last = 0.0
        self._interactive = False
        self._done = False

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def startRun(self) -> None:
        self._start = self._last = time.perf_counter()
        self._done = self.learner.rank != 0  # other ranks print nothing
        out = self._out()
        self._interactive = bool(getattr(out, "isatty", lambda: False)()) or "ipykernel" in sys.modules

    def line(self) -> str:
        """The current progress line."""
        learner = self.learner
        batches = learner.batches or 1
        progress = (learner.epoch + min(learner.batch, batches) / batches) / max(learner.epochs, 1)
        learner.progress = progress
        elapsed = time.perf_counter() - self._start
        # the latest epoch's losses and metrics (k1lib.callbacks.metrics.latest): host floats
        # recorded once an epoch, so showing them costs no device sync
        values = "".join(f", {name}: {value:.4g}" for name, value in latest(learner.cbs).items())
        return (
            f"Progress: {round(progress * 100):3}%, epoch: {learner.epoch:2}/{learner.epochs}, "
            f"batch: {learner.batch:3}/{learner.batches}, elapsed: {elapsed:6.1f}s{values}  "
        )

    def endBatch(self) -> None:
        if self._done:
            return
        now = time.perf_counter()
        every = 1 / self.refresh if self._interactive else self.logEvery
        if now - self._last < every:
            return
        self._last = now
        self._write()

    def _write(self) -> None:
        out = self._out()
        if self._interactive:
            out.write("\r" + self.line())
        else:
            out.write(self.line().rstrip() + "\n")
        out.flush()

    def cancelRun(self) -> None:
        # the last line comes before the learner's "Run cancelled: ..." message
        if not self._done:
            self._write()
        self._done = True

    def endRun(self) -> None:
        if not self._done:
            self._write()
