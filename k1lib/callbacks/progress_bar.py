"""``ProgressBar``: a live progress line with the time left, and one line per epoch."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import torch

from .._live import Live, duration
from .callback import Callback
from .metrics import quantities

if TYPE_CHECKING:
    from .._loop import Loop

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """While an epoch runs: ``Progress:  20%, epoch:  1/10, batch: 152/157, elapsed:    1.2s,
    left:    4.8s``; after each epoch a permanent line with what the callbacks recorded for it
    (``epoch  1/10  train loss 0.3123  valid loss 0.3541  valid accuracy 0.91  1.21s  52.3k
    samples/s``; samples/s counts training samples over the training part of the epoch).

    In Jupyter it is one display updated in place; on a terminal the live line is redrawn with
    ``\\r`` (at most ``refresh`` times a second); in a file or a CI log the live line is printed
    at most every ``logEvery`` seconds and at the end. With several processes only rank 0
    prints (samples/s is then rank 0's share). It reads no tensor: the epoch's values are
    host floats recorded once an epoch."""

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
        self._runs: list[_Run] = []  # the runs going on, innermost last (ParamFinder inside a run)

    def startRun(self) -> None:
        # runs that ended while the bar was suspended (it got no endRun) are over
        self._runs = [run for run in self._runs if run.loop is not None and run.loop.running]
        run = _Run(time.perf_counter(), _lengths(self.learner), loop=self.learner._loop)
        if self.learner.rank == 0 and not self.suspended:  # other ranks print nothing
            run.live = Live(self.stream, self.refresh, self.logEvery)
        self._runs.append(run)

    def startEpoch(self) -> None:
        if not self._runs:
            return
        run = self._runs[-1]
        self._print_pending(run)
        run.epoch_start = time.perf_counter()
        run.samples, run.train_seconds, run.epoch_ended = 0, None, False

    def endBatch(self) -> None:
        if not self._runs:
            return
        run, learner = self._runs[-1], self.learner
        if learner.training:
            run.samples += _count(learner.xb)
        if run.live is not None and run.live.due():
            run.live.show(self.line(), learner.progress)  # line() sets learner.progress

    def startValidBatches(self) -> None:
        if self._runs:
            self._runs[-1].train_seconds = time.perf_counter() - self._runs[-1].epoch_start

    def endEpoch(self) -> None:
        # the epoch's values are recorded by callbacks that come later (Loss, the metrics):
        # the line is printed at the next startEpoch, or as the run ends
        if not self._runs:
            return
        run = self._runs[-1]
        seconds = time.perf_counter() - run.epoch_start
        train = run.train_seconds if run.train_seconds is not None else seconds
        rate = run.samples / train if run.samples and train > 0 else None
        run.pending, run.epoch_ended = (self.learner.epoch, seconds, rate), True

    def cancelRun(self) -> None:
        self._finish()  # before the learner's "Run cancelled: ..." message

    def endRun(self) -> None:
        self._finish()

    def suspendChanged(self) -> None:  # noqa: N802
        """Suspended: the live line ends where it is; restored: a new one starts."""
        for run in self._runs:
            if self.suspended and run.live is not None:
                run.live.close()
                run.live = None
        if self.suspended or not self._runs:
            return
        last = self._runs[-1]
        if last.live is None and last.loop is not None and last.loop.running and self.learner.rank == 0:
            last.live = Live(self.stream, self.refresh, self.logEvery)

    def _finish(self) -> None:
        # once per run: cancelRun then endRun both come here; a run inside a run (ParamFinder
        # from a callback) finishes its own line and leaves the outer one going
        if not self._runs or self._runs[-1].loop is not self.learner._loop:
            return
        run = self._runs[-1]
        self._print_pending(run)
        if run.live is not None:
            text = self.line(final=True)
            run.live.close(text, self.learner.progress)
            run.live = None
        self._runs.pop()

    # ---- the lines -------------------------------------------------------------------------------
    def line(self, final: bool = False) -> str:
        """The live line (``final``: as the run ends, with no time left). A loader without a
        length (``l.batches`` 0) gives progress by whole epochs and the batch count alone."""
        learner = self.learner
        run = self._runs[-1] if self._runs else _Run(time.perf_counter(), {})
        batches = learner.batches
        if batches:
            within = min(learner.batch, batches) / batches
            count = f"{learner.batch:3}/{batches}"
        else:
            within = 1.0 if run.epoch_ended else 0.0
            count = f"{learner.batch:3}"
        progress = (learner.epoch + within) / max(learner.epochs, 1)
        learner.progress = progress
        elapsed = time.perf_counter() - run.start
        going = 0 < progress < 1 and not final
        left = f", left: {duration(elapsed / progress - elapsed):>6}" if going else ""
        return (
            f"Progress: {round(progress * 100):3}%, epoch: {learner.epoch:2}/{learner.epochs}, "
            f"batch: {count}, elapsed: {duration(elapsed):>6}{left}"
        )

    def _print_pending(self, run: _Run) -> None:
        """The line of an ended epoch, with the values recorded for it since the last line."""
        if run.pending is None:
            return
        epoch, seconds, rate = run.pending
        run.pending = None
        learner = self.learner
        parts = [f"epoch {epoch:{len(str(learner.epochs))}}/{learner.epochs}"]
        for name, values in quantities(learner.cbs).items():
            if len(values) > run.seen.get(name, 0):
                parts.append(f"{name} {values[-1]:<8.4g}")
            run.seen[name] = len(values)
        parts.append(f"{duration(seconds):>6}")
        if rate is not None:
            parts.append(f"{_rate(rate)} samples/s")
        if run.live is not None:
            run.live.line("  ".join(parts))


@dataclass
class _Run:
    """What the bar keeps of one run."""

    start: float
    seen: dict[str, int]  # how many values each quantity had at the last epoch line
    live: Live | None = None
    loop: Loop | None = None  # the learner's run this is
    epoch_start: float = 0.0
    samples: int = 0  # training samples of this epoch so far
    train_seconds: float | None = None  # of this epoch, once validation starts
    epoch_ended: bool = False
    pending: tuple[int, float, float | None] | None = None  # an ended epoch's line to print


def _lengths(learner: Any) -> dict[str, int]:
    return {name: len(values) for name, values in quantities(learner.cbs).items()}


def _count(xb: Any) -> int:
    """Samples in a batch's inputs: the first dimension of its first tensor that has one (no
    device sync)."""
    if isinstance(xb, torch.Tensor):
        return int(xb.shape[0]) if xb.dim() else 1
    if isinstance(xb, Mapping):
        xb = list(xb.values())
    if isinstance(xb, (list, tuple)):
        tensors = [item for item in xb if isinstance(item, torch.Tensor)]
        batched = next((t for t in tensors if t.dim()), None)  # a scalar entry is not the batch
        return int(batched.shape[0]) if batched is not None else 1 if tensors else 0
    return 0


def _rate(per_second: float) -> str:
    """``812``, ``52.3k``, ``1.21M``."""
    if per_second < 1000:
        return f"{per_second:.0f}"
    if per_second < 1e6:
        return f"{per_second / 1e3:.1f}k"
    return f"{per_second / 1e6:.2f}M"
