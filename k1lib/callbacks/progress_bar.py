"""``ProgressBar``: a live progress line with the time left, and one line per epoch."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TextIO

import torch

from .._live import Live, duration
from .callback import Callback
from .metrics import quantities

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """While an epoch runs: ``Progress:  20%, epoch:  1/10, batch: 152/157, elapsed:    1.2s,
    left:    4.8s``; after each epoch a permanent line with what the callbacks recorded for it
    (``epoch  1/10  train loss 0.3123  valid loss 0.3541  valid accuracy 0.91  1.21s  52.3k
    samples/s``; samples/s counts training samples over the training part of the epoch).

    In Jupyter it is one display updated in place; on a terminal the live line is redrawn with
    ``\\r`` (at most ``refresh`` times a second); in a file or a CI log the live line is printed
    at most every ``logEvery`` seconds and at the end. With several processes only rank 0
    prints. It reads no tensor: the epoch's values are host floats recorded once an epoch."""

    # before the callbacks of the default order (10): its final line is drawn before their
    # endRun messages ("Saved to ...") also when the bar was added after them
    order = 9
    doc = """
- cb.line(): the current live line
"""

    def __init__(self, refresh: float = 10.0, logEvery: float = 10.0, stream: TextIO | None = None) -> None:  # noqa: N803
        super().__init__()
        self.refresh = refresh
        self.logEvery = logEvery
        self.stream = stream
        self._live: Live | None = None
        self._start = self._epoch_start = 0.0
        self._samples = 0  # training samples of this epoch so far
        self._train_seconds: float | None = None  # of this epoch, once validation starts
        self._pending: tuple[int, float, float | None] | None = None  # an ended epoch's line to print
        self._seen: dict[str, int] = {}  # how many values each quantity had at the last line

    def startRun(self) -> None:
        self._start = self._epoch_start = time.perf_counter()
        self._pending = None
        self._seen = _lengths(self.learner)
        if self.learner.rank == 0:  # other ranks print nothing
            self._live = Live(self.stream, self.refresh, self.logEvery)

    def startEpoch(self) -> None:
        self._print_pending()
        self._epoch_start = time.perf_counter()
        self._samples, self._train_seconds = 0, None

    def endBatch(self) -> None:
        learner = self.learner
        if learner.training:
            self._samples += _count(learner.xb)
        if self._live is not None and self._live.due():
            self._live.show(self.line(), learner.progress)  # line() sets learner.progress

    def startValidBatches(self) -> None:
        self._train_seconds = time.perf_counter() - self._epoch_start

    def endEpoch(self) -> None:
        # the epoch's values are recorded by callbacks that come later (Loss, the metrics):
        # the line is printed at the next startEpoch, or as the run ends
        seconds = time.perf_counter() - self._epoch_start
        train = self._train_seconds if self._train_seconds is not None else seconds
        rate = self._samples / train if self._samples and train > 0 else None
        self._pending = (self.learner.epoch, seconds, rate)

    def cancelRun(self) -> None:
        self._finish()  # before the learner's "Run cancelled: ..." message

    def endRun(self) -> None:
        self._finish()

    def _finish(self) -> None:
        self._print_pending()
        if self._live is not None:
            text = self.line(final=True)
            self._live.close(text, self.learner.progress)
            self._live = None

    # ---- the lines -------------------------------------------------------------------------------
    def line(self, final: bool = False) -> str:
        """The live line (``final``: as the run ends, with no time left)."""
        learner = self.learner
        batches = learner.batches or 1
        progress = (learner.epoch + min(learner.batch, batches) / batches) / max(learner.epochs, 1)
        learner.progress = progress
        elapsed = time.perf_counter() - self._start
        going = 0 < progress < 1 and not final
        left = f", left: {duration(elapsed / progress - elapsed):>7}" if going else ""
        return (
            f"Progress: {round(progress * 100):3}%, epoch: {learner.epoch:2}/{learner.epochs}, "
            f"batch: {learner.batch:3}/{learner.batches}, elapsed: {elapsed:6.1f}s{left}"
        )

    def _print_pending(self) -> None:
        """The line of an ended epoch, with the values recorded for it since the last line."""
        if self._pending is None:
            return
        epoch, seconds, rate = self._pending
        self._pending = None
        learner = self.learner
        parts = [f"epoch {epoch:{len(str(learner.epochs))}}/{learner.epochs}"]
        for name, values in quantities(learner.cbs).items():
            if len(values) > self._seen.get(name, 0):
                parts.append(f"{name} {values[-1]:<8.4g}")
            self._seen[name] = len(values)
        parts.append(f"{duration(seconds):>6}")
        if rate is not None:
            parts.append(f"{_rate(rate)} samples/s")
        if self._live is not None:
            self._live.line("  ".join(parts))


def _lengths(learner: Any) -> dict[str, int]:
    return {name: len(values) for name, values in quantities(learner.cbs).items()}


def _count(xb: Any) -> int:
    """Samples in a batch's inputs: the first dimension of its first tensor (no device sync)."""
    if isinstance(xb, torch.Tensor):
        return int(xb.shape[0]) if xb.dim() else 1
    if isinstance(xb, Mapping):
        xb = list(xb.values())
    if isinstance(xb, (list, tuple)):
        for item in xb:
            if isinstance(item, torch.Tensor):
                return int(item.shape[0]) if item.dim() else 1
    return 0


def _rate(per_second: float) -> str:
    """``812``, ``52.3k``, ``1.21M``."""
    if per_second < 1000:
        return f"{per_second:.0f}"
    if per_second < 1e6:
        return f"{per_second / 1e3:.1f}k"
    return f"{per_second / 1e6:.2f}M"
