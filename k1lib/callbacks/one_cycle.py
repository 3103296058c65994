"""``OneCycle``: the 1cycle learning-rate policy: a warmup from ``maxLr / divFactor`` to
``maxLr`` over the first ``pctStart`` of the steps, then a cosine annealing down to
``maxLr / divFactor / finalDivFactor``: torch's ``OneCycleLR``, built as the run starts, when
the number of optimizer steps is known.

The cycle's length in optimizer steps is ``epochs * ceil(trainingBatches / n)``: the run's
training batches an epoch (``l.run(epochs, batches)``'s limit applied), ``n`` from
``GradAccumulation`` (1 without it; the last incomplete group is a step too). By default each
run is one cycle (``epochs`` = the run's epochs), as fastai's ``fit_one_cycle``. Give
``epochs`` to spread one cycle over several runs (``l.run(2)`` then ``l.run(3)`` for
``epochs=5``): a run continues the cycle in progress, the lr stays at its last value once the
cycle is done, and the next run after that starts a new one. ``totalSteps`` gives the length
in steps directly (needed for loaders without a length). Stepping follows ``Scheduler``: once
per optimizer step taken, so steps a ``GradScaler`` or ``startStep`` skipped leave the end of
the cycle untaken.

``maxLr`` is a number, a list (one per param group), or ``"suggested"``: the ParamFinder's
last suggestion (``l.ParamFinder.run()`` or ``.plot()`` first), read when a cycle starts, for
every param group. ``cycleMomentum`` (False by default, unlike torch) also cycles the
momentum (or Adam's beta1) between ``baseMomentum`` and ``maxMomentum``; off, the optimizer's
momentum is left alone. The checkpoint holds the cycle: with ``epochs=`` (one cycle over
several runs), ``l.load`` then ``l.run`` continues it where the saved learner was, also from a
checkpoint written mid-run. Without ``epochs=`` each run is its own cycle, so a run after
``l.load`` starts a new one, even from a checkpoint written in the middle of a cycle.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .scheduler import Scheduler

__all__ = ["OneCycle"]

_ANNEAL = ("cos", "linear")


class OneCycle(Scheduler):
    """The 1cycle lr policy over each run (or over ``epochs`` epochs; see the module docstring)."""

    doc = """
- cb.sched: torch's OneCycleLR of the current cycle (None before the first run)
- cb.totalSteps: the cycle's length in optimizer steps (once it started)
- cb.lrs: the lr of each param group at each optimizer step (a list per step)
- cb.plot(): to plot the lr against the optimizer step
"""

    def __init__(
        self,
        maxLr: float | list[float] | str,  # noqa: N803 - the builders' camelCase
        pctStart: float = 0.25,  # noqa: N803
        divFactor: float = 25.0,  # noqa: N803
        finalDivFactor: float = 1e4,  # noqa: N803
        annealStrategy: str = "cos",  # noqa: N803
        cycleMomentum: bool = False,  # noqa: N803
        baseMomentum: float = 0.85,  # noqa: N803
        maxMomentum: float = 0.95,  # noqa: N803
        epochs: int | None = None,
        totalSteps: int | None = None,  # noqa: N803
    ) -> None:
        _check_max_lr(maxLr)
        if isinstance(pctStart, bool) or not isinstance(pctStart, int | float) or not 0 < pctStart < 1:
            raise ValueError(f"withOneCycle: pctStart must be a number in (0, 1), got {pctStart!r}")
        for name, value in (("divFactor", divFactor), ("finalDivFactor", finalDivFactor)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"withOneCycle: {name} must be a positive number, got {value!r}")
        if annealStrategy not in _ANNEAL:
            raise ValueError(
                f'withOneCycle: annealStrategy must be "cos" or "linear", got {annealStrategy!r}'
            )
        for name, count in (("epochs", epochs), ("totalSteps", totalSteps)):
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
                raise ValueError(f"withOneCycle: {name} must be an int >= 1 or None, got {count!r}")
        if epochs is not None and totalSteps is not None:
            raise ValueError("withOneCycle: give epochs or totalSteps, not both")
        # Scheduler.__init__ checks a scheduler object; this one is built at startRun
        super(Scheduler, self).__init__()
        self._start(None, "batch")
        self.maxLr = maxLr
        self.pctStart, self.divFactor, self.finalDivFactor = (
            float(pctStart),
            float(divFactor),
            float(finalDivFactor),
        )
        self.annealStrategy, self.cycleMomentum = annealStrategy, bool(cycleMomentum)
        self.baseMomentum, self.maxMomentum = baseMomentum, maxMomentum
        self.epochs, self.totalSteps = epochs, totalSteps
        self._saved: dict[str, Any] | None = None  # a cycle loaded before the optimizer was there
        self.cycleSteps = 0  # optimizer steps taken in the current cycle

    # ---- the cycle -------------------------------------------------------------------------------
    def prepare(self) -> Any:
        learner = self.learner
        opt = learner.opt
        assert opt is not None  # check_ready: set for every run
        if self._saved is not None:  # a cycle from a checkpoint: rebuilt on this optimizer
            saved, self._saved = self._saved, None
            # the peak lrs are in the optimizer's param groups (torch keeps them there)
            groups = opt.param_groups
            max_lrs = [g["max_lr"] for g in groups] if all("max_lr" in g for g in groups) else None
            self.sched = self._build(opt, int(saved["total_steps"]), max_lrs)
            self.sched.load_state_dict(saved)
            for group, lr in zip(opt.param_groups, self.sched.get_last_lr(), strict=True):
                _set_lr(group, lr)  # the lr of the next step (building reset it to the first one)
        if self.sched is not None and self.sched.optimizer is opt and self._in_cycle():
            return self.sched  # continuing a cycle over several runs
        total = self.totalSteps or self._steps(learner.epochs if self.epochs is None else self.epochs)
        self.sched, self.cycleSteps = self._build(opt, total, None), 0
        return self.sched

    def _in_cycle(self) -> bool:
        sched = self.sched
        return (
            sched is not None
            and (self.epochs is not None or self.totalSteps is not None)
            and 0 < self.cycleSteps < sched.total_steps
        )

    def _steps(self, epochs: int) -> int:
        """Optimizer steps in ``epochs`` epochs of this run."""
        learner = self.learner
        from .grad_accumulation import GradAccumulation

        try:
            train = learner.group.batches_in(learner.data.train)
            valid = learner.group.batches_in(learner.data.valid)
        except TypeError:
            raise RuntimeError(
                f"{self.name}: the loaders have no length, so the cycle's number of steps is unknown; "
                "give it: withOneCycle(maxLr, totalSteps=...)"
            ) from None
        train = _limited(train, valid, learner.batches)
        n = max([cb.n for cb in learner.cbs if isinstance(cb, GradAccumulation) and not cb.suspended] or [1])
        total = epochs * math.ceil(train / n)
        if total < 1:
            raise RuntimeError(
                f"{self.name}: a cycle of {epochs} epoch(s) of {train} training batch(es) has no optimizer "
                "step; run at least one epoch, or give totalSteps"
            )
        return total

    def _build(
        self, opt: torch.optim.Optimizer, total: int, max_lrs: Any
    ) -> torch.optim.lr_scheduler.OneCycleLR:
        if self.pctStart * total <= 1:  # torch would divide by zero, or warm up backwards
            raise ValueError(
                f"{self.name}: a cycle of {total} optimizer steps is too short for pctStart={self.pctStart}: "
                f"the warmup needs more than one step (at least {math.floor(1 / self.pctStart) + 1} steps)"
            )
        max_lr = max_lrs if max_lrs is not None else self._max_lr()
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=max_lr,
            total_steps=total,
            pct_start=self.pctStart,
            anneal_strategy=self.annealStrategy,  # type: ignore[arg-type]
            cycle_momentum=self.cycleMomentum,
            base_momentum=self.baseMomentum,
            max_momentum=self.maxMomentum,
            div_factor=self.divFactor,
            final_div_factor=self.finalDivFactor,
        )

    def _max_lr(self) -> float | list[float]:
        if self.maxLr != "suggested":
            assert not isinstance(self.maxLr, str)
            return self.maxLr
        from .param_finder import ParamFinder

        finders = [cb for cb in self.learner.cbs if isinstance(cb, ParamFinder)]
        suggestion = next((f.suggestion for f in finders if f.suggestion is not None), None)
        if suggestion is None:
            why = "has not run" if finders else "is not among l.cbs (cbs.withParamFinder())"
            raise RuntimeError(
                f'{self.name}: maxLr="suggested" takes the ParamFinder\'s suggestion, but the finder {why}; '
                "run l.ParamFinder.run() (or .plot()) first, or give maxLr as a number"
            )
        return float(suggestion)

    def advance(self) -> None:
        sched = self.sched
        assert sched is not None
        self.cycleSteps += 1
        # the lr of the cycle's last step stays after it (torch's would rise again, then raise)
        if sched.last_epoch < sched.total_steps - 1:
            sched.step()

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.sched is None and self._saved is not None:
            state["scheduler"] = self._saved
        state["cycleSteps"] = self.cycleSteps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        steps = state.get("cycleSteps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{self.name}: 'cycleSteps' should be an int >= 0, got {steps!r}")
        super().load_state_dict(state)
        self.cycleSteps = steps

    def load_scheduler(self, state: Any) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("total_steps"), int):
            raise ValueError(f"{self.name}: 'scheduler' should be a OneCycleLR state dict with total_steps")
        self._saved, self.sched = dict(state), None


def _check_max_lr(max_lr: object) -> None:
    def number(v: object) -> bool:
        return not isinstance(v, bool) and isinstance(v, int | float) and 0 < v < math.inf

    if max_lr == "suggested" or number(max_lr):
        return
    if isinstance(max_lr, list | tuple) and max_lr and all(number(v) for v in max_lr):
        return
    raise ValueError(
        f"withOneCycle: maxLr must be a positive number, a list of them (one per param group) or "
        f'"suggested", got {max_lr!r}'
    )


def _limited(train: int, valid: int, batches: int) -> int:
    """The training batches an epoch once ``l.run(epochs, limit)``'s limit is applied, from the
    run's ``l.batches`` (``min(train, limit) + min(valid, limit)``): the smallest limit that
    gives it fixes ``min(train, limit)``."""
    if batches >= train + valid:
        return train
    for limit in range(batches + 1):
        if min(train, limit) + min(valid, limit) == batches:
            return min(train, limit)
    return train


def _set_lr(group: dict[str, Any], lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr
