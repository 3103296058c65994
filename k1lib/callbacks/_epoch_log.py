"""``EpochLogger``: what ``TensorBoard`` and ``CSVLogger`` share: once an epoch, the values
the callbacks recorded since the logger last looked, numbered by an epoch count of its own.

The values are the published quantities (``k1lib.callbacks.metrics.quantities``: ``"train
loss"``, ``"valid accuracy"``, ...) and the learning rates: each optimizer step's from a
``Scheduler`` (or ``OneCycle``), else the optimizer's param groups' at the epoch's end. All
are host floats the callbacks hold already, so reading them costs no device sync (but an lr
held in a tensor, read once an epoch).

The epoch count (``cb.logged``: epochs written so far, the next epoch's number) goes on from
run to run and is in checkpoints, so a resumed learner writes on from the checkpoint's epoch.
A run that ends mid-epoch (cancelled, or failed) writes that epoch too when some quantity has
a value for it (Loss records what it saw). Only rank 0 writes; every rank counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .callback import Callback
from .metrics import quantities
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .callbacks import Callbacks

__all__ = ["EpochLogger", "lr_names", "split_phase"]

# (optimizer step or epoch, the lr of each param group)
Lrs = list[tuple[int, list[float]]]


def lr_names(groups: int) -> list[str]:
    """``["lr"]`` for one param group, ``["lr/group0", "lr/group1", ...]`` for several."""
    return ["lr"] if groups == 1 else [f"lr/group{i}" for i in range(groups)]


def split_phase(name: str) -> tuple[str, str]:
    """``"train loss"`` -> ``("train", "loss")``; a name without a phase -> ``("", name)``."""
    phase, _, rest = name.partition(" ")
    return (phase, rest) if phase in ("train", "valid") and rest else ("", name)


def _scheduler(cbs: Callbacks) -> Scheduler | None:
    return next((cb for cb in cbs if isinstance(cb, Scheduler) and not cb.suspended), None)


class EpochLogger(Callback):
    """Base of the loggers: calls ``write_epoch`` at each epoch's end with what is new (see
    the module docstring); subclasses write it somewhere."""

    order = 50  # after Loss, the metrics (20), EarlyStopping (40) and BestCheckpoint (45)

    def __init__(self) -> None:
        super().__init__()
        self.logged = 0
        self._seen: dict[str, int] = {}  # values of each quantity read so far
        self._lr_seen = 0  # steps of the scheduler's cb.lrs read so far
        self._running = False
        self._writes = False  # rank 0

    # ---- what subclasses do --------------------------------------------------------------------
    def begin(self) -> None:
        """A run starts (on rank 0)."""

    def write_epoch(self, epoch: int, values: dict[str, float], lrs: Lrs) -> None:
        """Write epoch ``epoch`` (rank 0): ``values`` holds the quantities with a new value,
        ``lrs`` the lrs of the epoch's optimizer steps from a scheduler (none when it took no
        step), or without one ``[(epoch, the optimizer's lrs now)]``."""

    def finish(self) -> None:
        """The run ended, however it ended (every rank): close files."""

    # ---- events ----------------------------------------------------------------------------------
    def startRun(self) -> None:
        cbs = self._callbacks()
        self._seen = {name: len(values) for name, values in quantities(cbs).items()}
        sched = _scheduler(cbs)
        self._lr_seen = len(sched.lrs) if sched is not None else 0
        self._writes = self.learner.rank == 0
        self._running = True
        if self._writes:
            self.begin()

    def endEpoch(self) -> None:
        self._epoch(partial=False)

    def endRun(self) -> None:
        try:
            self._epoch(partial=True)  # the values of an epoch the run left midway
        finally:
            self._running = False
            self.finish()

    def _epoch(self, partial: bool) -> None:
        cbs = self._callbacks()
        values = self._take(cbs)
        if partial and not values:
            return
        epoch, self.logged = self.logged, self.logged + 1
        sched = _scheduler(cbs)
        seen, self._lr_seen = self._lr_seen, len(sched.lrs) if sched is not None else 0
        if not self._writes:
            return
        if sched is not None:
            lrs = [(seen + i, list(step)) for i, step in enumerate(sched.lrs[seen:])]
        else:
            lrs = [(epoch, self.optimizer_lrs())]
        self.write_epoch(epoch, values, lrs)

    def _take(self, cbs: Callbacks) -> dict[str, float]:
        """The newest value of each quantity recorded since the last look."""
        out: dict[str, float] = {}
        for name, values in quantities(cbs).items():
            if len(values) > self._seen.get(name, 0):
                out[name] = float(values[-1])
            self._seen[name] = len(values)  # shorter: the history was cleared, follow it
        return out

    def _pending(self) -> bool:
        """Whether a quantity has a value this logger has not written yet (during a run)."""
        if not self._running or self.cbs is None:
            return False
        return any(len(v) > self._seen.get(name, 0) for name, v in quantities(self.cbs).items())

    def optimizer_lrs(self) -> list[float]:
        """The lr of each of the optimizer's param groups now."""
        opt = self.learner.opt
        return [] if opt is None else [float(group["lr"]) for group in opt.param_groups]

    def _callbacks(self) -> Callbacks:
        if self.cbs is None:
            raise AttributeError(f"callback {self.name!r} is not attached to a Learner")
        return self.cbs

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # a checkpoint taken after the callbacks recorded an epoch but before this one wrote
        # it (BestCheckpoint at endEpoch, Autosave at endRun) counts that epoch as written:
        # the resumed learner's next epoch follows it
        return {"logged": self.logged + self._pending()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        logged = state.get("logged")
        if isinstance(logged, bool) or not isinstance(logged, int) or logged < 0:
            raise ValueError(f"{self.name}: 'logged' should be an int of 0 or more, got {logged!r:.60}")
        self.logged = logged
