"""The optimizer step of a run, in one place: backward -> accumulate -> unscale -> clip -> step ->
scaler update -> zero_grad.

The loop owns one ``OptimizerStep`` per run. The callbacks that shape the step do not act on
it themselves: they register with it (``Callback.configure_step``) and it calls them in this
order. ``GradAccumulation`` gives how many batches make one step, ``GradClipping`` clips the
unscaled gradients, ``Autocast`` (float16) gives the ``GradScaler`` and counts the steps it
skipped. None of them knows about the others.

- ``backward(loss)``: the gradient entering the backward pass is divided by the group size
  and multiplied by the scaler's scale; ``l.loss`` itself is not changed (Loss and
  CancelOnExplosion see the loss as computed).
- ``step()``: when the group is complete (always, without accumulation): unscale (when
  clipping), clip, step through the scaler (or the optimizer alone) and update the scale.
- ``zero_grad(wanted)``: ends a complete group, zeroing the gradients unless a callback asked
  not to.
- ``flush()``: a last incomplete group of ``k < n`` batches (the epoch's training batches ran
  out) is rescaled to its mean (``n / k``) and goes through the same ``step``.
- ``drop()``: a run that ends mid-group forgets the partial gradients.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["Accumulating", "Clipping", "OptimizerStep", "Scaling"]


class Accumulating(Protocol):
    """What ``GradAccumulation`` gives: ``n`` batches a step, ``pending`` of them done."""

    n: int
    pending: int


class Clipping(Protocol):
    """What ``GradClipping`` gives: clips the (unscaled) gradients of ``params``."""

    def clip(self, params: list[torch.Tensor]) -> torch.Tensor: ...


class Scaling(Protocol):
    """What ``Autocast`` with a scaler gives: the scaler, and where to count a skipped step."""

    scaler: torch.amp.GradScaler | None

    def count_skipped(self, opt: torch.optim.Optimizer) -> None: ...


class OptimizerStep:
    """One run's optimizer step (see the module docstring)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.accumulation: Accumulating | None = None
        self.clipping: Clipping | None = None
        self.scaling: Scaling | None = None
        self.backwards = 0  # backward passes since the last step
        self.undone = 0  # backward passes undone (``unwind``), ever
        self.taken = 0  # optimizer steps and zero_grads taken (ranks compare it under DDP)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return None if self.scaling is None else self.scaling.scaler

    def backward(self, loss: torch.Tensor) -> None:
        acc, scaling = self.accumulation, self.scaling
        if acc is not None and acc.n > 1:
            loss = loss / acc.n
        if scaling is not None and scaling.scaler is not None:
            loss = scaling.scaler.scale(loss)
        self.backwards += 1  # before: a backward stopped halfway (Ctrl-C) left gradients too
        loss.backward()  # type: ignore[no-untyped-call]
        if acc is not None:
            acc.pending += 1

    def unwind(self) -> None:
        """Forget the last ``backward`` (its gradients were put back as they were before it:
        under DDP, the ranks agreed afterwards that the batch does not train)."""
        self.backwards -= 1
        self.undone += 1
        if self.accumulation is not None:
            self.accumulation.pending -= 1

    def step(self) -> None:
        acc = self.accumulation
        if acc is None or acc.pending >= acc.n:
            self._step()

    def _step(self) -> None:
        opt = self.opt
        scaler = self.scaler if self.backwards else None  # nothing scaled since the last step
        if self.clipping is not None:
            if scaler is not None:
                scaler.unscale_(opt)
            params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
            self.clipping.clip(params)
        self.taken += 1  # counted before trying: a step that fails on one rank is that rank's error
        if scaler is not None:
            assert self.scaling is not None
            scaler.step(opt)
            self.scaling.count_skipped(opt)
            scaler.update()
        else:
            opt.step()
        self.backwards = 0

    def zero_grad(self, wanted: bool) -> None:
        acc = self.accumulation
        if acc is not None and acc.pending < acc.n:
            return
        if wanted:
            self.taken += 1
            self.opt.zero_grad()
        if acc is not None:
            acc.pending = 0

    def flush(self) -> None:
        acc = self.accumulation
        if acc is None or not 0 < acc.pending < acc.n:
            return
        grads = [p.grad for group in self.opt.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, acc.n / acc.pending)
        try:
            with torch.no_grad():
                self._step()
                self.opt.zero_grad()
        finally:
            acc.pending = 0

    def drop(self, failed: bool = False) -> None:
        """At the end of a run: forget a partial accumulation group; after a run that ``failed``
        (an exception), also gradients of a backward pass never stepped, and the scaler's
        half-done step (``unscale_`` without ``update``), so the next run starts clean."""
        acc = self.accumulation
        if (acc is not None and acc.pending) or (failed and self.backwards):
            self.opt.zero_grad()
        if acc is not None:
            acc.pending = 0
        scaler = self.scaler
        if failed and scaler is not None and hasattr(scaler, "_per_optimizer_states"):
            scaler._per_optimizer_states.pop(id(self.opt), None)  # what update() would reset
        self.backwards = 0
