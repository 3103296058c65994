"""``EarlyStopping``: end a run when a recorded quantity stops improving.

It watches one of the per-epoch quantities the callbacks publish (``"valid loss"``, ``"train
loss"``, ``"valid accuracy"``, any metric with its phase: ``k1lib.callbacks.metrics``) and
raises ``CancelRunException`` at the end of the epoch that makes ``patience`` epochs in a row
without improvement. Under DDP the quantities are already agreed across ranks (Loss and the
metrics average over the ranks before recording), so every rank decides the same.
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any

from .callback import Callback, CancelRunException
from .metrics import quantities

if TYPE_CHECKING:
    from .callbacks import Callbacks

__all__ = ["EarlyStopping"]


class _Monitor:
    """One published quantity, watched for improvement (shared with ``BestCheckpoint``): its
    best value, and how many of its values were seen (a new one each epoch that records it)."""

    def __init__(self, owner: str, monitor: str, mode: str, minDelta: float = 0.0) -> None:  # noqa: N803
        if not isinstance(monitor, str):
            raise TypeError(f"{owner}: monitor must be a quantity's name (a str), got {monitor!r:.60}")
        if mode not in ("min", "max"):
            raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
        if not isinstance(minDelta, int | float) or isinstance(minDelta, bool) or not minDelta >= 0:
            raise ValueError(f"{owner}: minDelta must be a number of 0 or more, got {minDelta!r}")
        self.owner, self.monitor, self.mode, self.min_delta = owner, monitor, mode, float(minDelta)
        self.best: float | None = None
        self.seen = 0

    def check(self, cbs: Callbacks) -> None:
        """Raise ``KeyError`` naming the available quantities when ``monitor`` is not one."""
        known = quantities(cbs)
        if self.monitor in known:
            return
        close = difflib.get_close_matches(self.monitor, list(known), n=3)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        available = ", ".join(map(repr, known)) or "none (add Loss or a metric: l.cbs.withAccuracy())"
        raise KeyError(
            f"{self.owner}: no recorded quantity {self.monitor!r}; {hint}the quantities are: {available}"
        )

    def new_value(self, cbs: Callbacks) -> float | None:
        """The quantity's value recorded since the last call, or None when there is none."""
        values = quantities(cbs).get(self.monitor, [])
        if len(values) <= self.seen:
            self.seen = min(self.seen, len(values))  # the history was cleared: follow it
            return None
        self.seen = len(values)
        return float(values[-1])

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best by more than ``minDelta`` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.seen = int(state["seen"])


class EarlyStopping(Callback):
    """Ends the run (``CancelRunException``, at the end of an epoch) once ``monitor`` has not
    improved for ``patience`` epochs in a row: with ``mode="min"`` an improvement is a value
    below the best by more than ``minDelta``, with ``"max"`` above it. Epochs that record no
    value of ``monitor`` (no validation batches) do not count. An unknown ``monitor`` fails as
    the run starts, listing the quantities there are.

    Its state (the best value, the epochs waited) is in checkpoints and kept from run to run,
    so a resumed run continues counting; ``cb.reset()`` starts afresh."""

    order = 40  # after Loss and the metrics have recorded the epoch
    doc = """
- cb.best: the best value of the monitored quantity so far
- cb.wait: epochs since it last improved
- cb.reset(): to forget both
"""

    def __init__(
        self,
        monitor: str = "valid loss",
        patience: int = 3,
        mode: str = "min",
        minDelta: float = 0.0,  # noqa: N803 - camelCase as the seed's arguments
    ) -> None:
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an int of 1 or more, got {patience!r}")
        self._monitor = _Monitor("EarlyStopping", monitor, mode, minDelta)
        self.monitor, self.patience, self.mode, self.minDelta = monitor, patience, mode, minDelta
        self.wait = 0

    @property
    def best(self) -> float | None:
        """The best value of the monitored quantity so far (None before any)."""
        return self._monitor.best

    def reset(self) -> None:
        """Forget the best value and the epochs waited (values recorded so far stay seen)."""
        self._monitor.best, self.wait = None, 0

    def startRun(self) -> None:
        assert self.cbs is not None
        self._monitor.check(self.cbs)

    def endEpoch(self) -> None:
        assert self.cbs is not None
        value = self._monitor.new_value(self.cbs)
        if value is None:
            return
        if self._monitor.improves(value):
            self._monitor.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            best = "no value" if self.best is None else f"{self.best:.6g}"
            raise CancelRunException(
                f"Early stopping: {self.monitor} has not improved on {best} for {self.wait} epochs"
            )

    def state_dict(self) -> dict[str, Any]:
        return {**self._monitor.state_dict(), "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._monitor.load_state_dict(state)
        self.wait = int(state["wait"])
