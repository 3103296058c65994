"""``GradAccumulation``: one optimizer step per ``n`` training batches, as if they were one batch.

Each training batch's gradient enters the backward pass divided by ``n`` (a hook on the loss:
``l.loss`` itself is not changed, so ``Loss`` records each batch's loss as computed), the
gradients add up in ``.grad``, and ``startStep`` / ``startZeroGrad`` are skipped until ``n``
batches have been through the backward pass. With a loss that is a mean over the batch and
batches of equal size, the step equals one step on a batch ``n`` times as big.

A last group of ``k < n`` batches (the epoch's training batches ran out) is stepped when the
validation batches start (or at ``endEpoch`` when the epoch was cancelled before), its gradient
rescaled by ``n / k``: the mean over those ``k`` batches, as one batch of their samples. That
step goes through ``GradClipping`` and the ``Autocast`` scaler like the others; other
callbacks' ``startStep`` handlers do not see it. A run that is cancelled mid-group drops the
partial gradients (``zero_grad``), so the next run starts clean.

Under DDP every batch all-reduces its gradients, as DDP does by default; its ``no_sync``
would cross the ranks once a group instead, but a forward whose batch is then cancelled
leaves DDP expecting a backward, and the next batch under ``no_sync`` would all-reduce on
some ranks only (a hang). No host syncs: the counting is in Python.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from .callback import Callback

__all__ = ["GradAccumulation", "accumulating"]

_C = TypeVar("_C", bound=Callback)


def active(learner: Any, kind: type[_C]) -> list[_C]:
    """The learner's callbacks of class ``kind`` that are not suspended."""
    return [cb for cb in learner.cbs if isinstance(cb, kind) and not cb.suspended]


def accumulating(learner: Any) -> bool:
    """True when a ``GradAccumulation`` will skip this batch's optimizer step (its group is
    not complete): ``GradClipping`` and ``Autocast`` then leave the gradients alone."""
    return any(cb.pending < cb.n for cb in active(learner, GradAccumulation))


class GradAccumulation(Callback):
    """Steps the optimizer once per ``n`` training batches (see the module docstring)."""

    order = 60
    doc = """
- cb.n: training batches per optimizer step
- cb.pending: batches through the backward pass since the last step
"""

    def __init__(self, n: int) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"withGradAccumulation: n must be an int >= 1 (batches per step), got {n!r}")
        self.n = n
        self.pending = 0

    def startRun(self) -> None:  # noqa: N802
        self.pending = 0

    def startBackward(self) -> bool:  # noqa: N802
        loss = self.learner.loss
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.register_hook(self._scale)  # type: ignore[no-untyped-call]
        return False

    def _scale(self, grad: torch.Tensor) -> torch.Tensor | None:
        # runs only when the backward pass does
        self.pending += 1
        return grad / self.n if self.n > 1 else None

    def startStep(self) -> bool:  # noqa: N802
        return self.pending < self.n

    def startZeroGrad(self) -> bool:  # noqa: N802
        if self.pending < self.n:
            return True
        self.pending = 0
        return False

    def startValidBatches(self) -> None:  # noqa: N802
        self._flush()

    def endEpoch(self) -> None:  # noqa: N802
        self._flush()

    def cancelRun(self) -> None:  # noqa: N802
        self._drop()

    def endRun(self) -> None:  # noqa: N802
        self._drop()

    def _drop(self) -> None:
        if self.pending:
            self.learner.opt.zero_grad()
            self.pending = 0

    def _flush(self) -> None:
        """Step on a last, incomplete group: rescaled to its mean, then clipped and stepped
        (through the scaler when there is one)."""
        from .autocast import Autocast
        from .grad_clipping import GradClipping

        k = self.pending
        if not 0 < k < self.n:
            return
        learner = self.learner
        opt: torch.optim.Optimizer = learner.opt
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, self.n / k)
        self.pending = self.n  # the group is complete: clipping and the scaler act
        try:
            with torch.no_grad():
                for clipping in active(learner, GradClipping):
                    clipping.clip()
                stepped = [cb.step() for cb in active(learner, Autocast)]
                if not any(stepped):
                    opt.step()
                opt.zero_grad()
        finally:
            self.pending = 0
