"""``Scheduler``: steps a learning-rate scheduler at the right time, and records the lr.

``cbs.withScheduler(sched, every="batch")`` steps any ``torch.optim.lr_scheduler`` scheduler
(or any object with ``step()``, ``state_dict()`` and ``load_state_dict()``) built on ``l.opt``:

- ``every="batch"``: once after each optimizer step that was actually taken. The step is seen
  through the optimizer's own step post-hook (``Optimizer.register_step_post_hook``), so the
  rules of the loop's optimizer step (``k1lib/_step.py``) hold without this callback knowing
  them: under ``GradAccumulation(n)`` one scheduler step per group of ``n`` batches (the last
  incomplete group of an epoch included), and no scheduler step when the step is skipped,
  either by a callback returning True from ``startStep`` or by a float16 ``GradScaler`` that
  found an inf or NaN gradient (as Hugging Face's ``accelerate`` does: the schedule follows the
  updates the weights really got, and a schedule with a fixed length, such as OneCycle, may
  then end a few steps short of its last value).
- ``every="epoch"``: once at the end of each epoch (``endEpoch``) whose training phase took
  at least one optimizer step.

Only steps of the training phase count (from ``startEpoch`` to ``startValidBatches``; a model
that trains in validation batches, without ``DontTrainValid``, does not move the schedule).
A scheduler whose ``optimizer`` is not ``l.opt`` is refused as the run starts.

The lr each optimizer step used (each param group's) is kept in ``cb.lrs``, one list per
step: Python floats, so no device sync (an lr held in a tensor is copied on its device and
read once an epoch). ``cb.plot()`` draws it against the step. The callback's ``state_dict``
holds the scheduler's and the lrs so far: ``l.save`` / ``l.load`` resume the schedule
exactly. ``ReduceLROnPlateau`` (which steps on a metric) is not supported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .callback import Callback

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

__all__ = ["Scheduler"]

EVERY = ("batch", "epoch")


def check_every(every: object, builder: str) -> str:
    if every not in EVERY:
        raise ValueError(f'{builder}: every must be "batch" or "epoch", got {every!r}')
    assert isinstance(every, str)
    return every


def check_scheduler(sched: object) -> None:
    """Raise ``TypeError`` unless ``sched`` can be stepped and checkpointed."""
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TypeError(
            "withScheduler: ReduceLROnPlateau steps on a metric (step(metrics)), which this callback "
            "does not give; use a scheduler that steps without arguments (StepLR, CosineAnnealingLR, ...)"
        )
    missing = [
        name for name in ("step", "state_dict", "load_state_dict") if not callable(getattr(sched, name, None))
    ]
    if missing:
        raise TypeError(
            "withScheduler: expected a torch.optim.lr_scheduler scheduler (or an object with step(), "
            f"state_dict() and load_state_dict()), got {type(sched).__name__} without {', '.join(missing)}"
        )


class Scheduler(Callback):
    """Steps ``sched`` after each optimizer step (``every="batch"``) or at the end of each
    training epoch (``every="epoch"``) and records the lr (see the module docstring)."""

    doc = """
- cb.sched: the scheduler
- cb.every: "batch" (after each optimizer step taken) or "epoch"
- cb.lrs: the lr of each param group at each optimizer step (a list per step)
- cb.plot(): to plot the lr against the optimizer step
"""

    def __init__(self, sched: Any, every: str = "batch") -> None:
        super().__init__()
        check_scheduler(sched)
        self._start(sched, check_every(every, "withScheduler"))

    def _start(self, sched: Any, every: str) -> None:
        self.every = every
        self.sched: Any = sched
        self.lrs: list[list[float]] = []
        self._pending: list[list[Any]] = []  # lrs not read on the host yet (this epoch's)
        self._handle: RemovableHandle | None = None
        self._training = False  # in the training phase of an epoch
        self._stepped = False  # the optimizer stepped in this epoch's training phase

    # ---- what subclasses change ------------------------------------------------------------------
    def prepare(self) -> Any:
        """The scheduler for this run (called at ``startRun``); OneCycle builds its own here."""
        return self.sched

    def advance(self) -> None:
        """One scheduler step."""
        self.sched.step()

    # ---- events ----------------------------------------------------------------------------------
    def startRun(self) -> None:
        opt = self.learner.opt
        assert opt is not None  # check_ready: set for every run
        sched = self.prepare()
        other = getattr(sched, "optimizer", opt)
        if other is not opt:
            raise RuntimeError(
                f"{self.name}: the scheduler steps another optimizer than l.opt (was it built before "
                "l.opt was set again?); build it on l.opt, e.g. "
                "torch.optim.lr_scheduler.StepLR(l.opt, step_size=1)"
            )
        self._remove_hook()
        self._handle = opt.register_step_post_hook(self._after_step)
        self._training = self._stepped = False

    def startEpoch(self) -> None:
        self._training, self._stepped = True, False

    def startValidBatches(self) -> None:
        self._training = False

    def _after_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.suspended or not self._training:
            return
        self._pending.append([_copy(group["lr"]) for group in opt.param_groups])
        self._stepped = True
        if self.every == "batch":
            self.advance()

    def endEpoch(self) -> None:
        self._training = False
        if self.every == "epoch" and self._stepped:
            self.advance()
        self._stepped = False
        self._flush()

    def endRun(self) -> None:
        self._remove_hook()
        self._training = False
        self._flush()

    def _remove_hook(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.remove()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self.lrs.extend([float(lr) for lr in step] for step in pending)

    # ---- display ---------------------------------------------------------------------------------
    def plot(self) -> Any:
        """The lr of each param group against the optimizer step (a ``SliceablePlot``; slices
        pick a range of steps)."""
        from ..viz import SliceablePlot, indices

        self._flush()
        lrs = [list(step) for step in self.lrs]

        def draw(sl: slice) -> None:
            import matplotlib.pyplot as plt

            start, stop, _ = indices(sl, len(lrs))
            ax = plt.gca()
            groups = max((len(step) for step in lrs[start:stop]), default=0)
            for g in range(groups):
                steps = [i for i in range(start, stop) if g < len(lrs[i])]
                ax.plot(steps, [lrs[i][g] for i in steps], label=f"param group {g}")
            if groups > 1:  # outside the axes: the curves stay visible
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("lr")

        return SliceablePlot(draw)

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._flush()
        state: dict[str, Any] = {"lrs": [list(step) for step in self.lrs]}
        if self.sched is not None:
            state["scheduler"] = self.sched.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lrs = state.get("lrs", [])
        if not isinstance(lrs, list) or not all(isinstance(step, list) for step in lrs):
            raise ValueError(
                f"{self.name}: 'lrs' should be a list of lists of floats, got {type(lrs).__name__}"
            )
        if "scheduler" in state:
            self.load_scheduler(state["scheduler"])
        self.lrs, self._pending = [list(step) for step in lrs], []

    def load_scheduler(self, state: Any) -> None:
        self.sched.load_state_dict(state)


def _copy(lr: Any) -> Any:
    # schedulers update a tensor lr in place: keep this step's value (no sync: a device copy)
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr
