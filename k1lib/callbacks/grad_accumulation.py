"""``GradAccumulation``: one optimizer step per ``n`` training batches, as if they were one batch.

The loop's optimizer step (``k1lib/_step.py``) does the work; this callback tells it ``n``.
Each training batch's gradient enters the backward pass divided by ``n`` (``l.loss`` itself is
not changed, so ``Loss`` records each batch's loss as computed), the gradients add up in
``.grad``, and the step and ``zero_grad`` wait until ``n`` batches have been through the
backward pass (``startStep`` / ``startZeroGrad`` still fire every batch). With a loss that is a
mean over the batch and batches of equal size, the step equals one step on a batch ``n`` times
as big.

A last group of ``k < n`` batches (the epoch's training batches ran out, or the epoch was
cancelled) is stepped before the validation batches start (or before ``endEpoch``), its
gradient rescaled by ``n / k``: the mean over those ``k`` batches, as one batch of their
samples. It goes through the same step (unscale, clip, step, scaler update); callbacks'
``startStep`` handlers do not see it. A run that ends mid-group drops the partial gradients
(``zero_grad``), so the next run starts clean.

Under DDP every batch all-reduces its gradients, as DDP does by default; its ``no_sync``
would cross the ranks once a group instead, but a forward whose batch is then cancelled
leaves DDP expecting a backward, and the next batch under ``no_sync`` would all-reduce on
some ranks only (a hang). No host syncs: the counting is in Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .callback import Callback

if TYPE_CHECKING:
    from .._step import OptimizerStep

__all__ = ["GradAccumulation"]


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

    def startRun(self) -> None:
        self.pending = 0

    def configure_step(self, step: OptimizerStep) -> None:
        step.accumulation = self
