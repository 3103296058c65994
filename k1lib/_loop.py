"""The training loop, written once: one routine for a run, an epoch and a batch, in one process
and in several.

What differs between one process and several sits behind ``Group`` (``k1lib/_group.py``):
one process, where nothing needs agreeing (what a callback raises is raised at once), or
``_distributed.Session``, a rank of several, where what a rank raises is *held* until the
next agreement point and then raised on every rank. The loop calls ``hold`` where a callback
or the user's code may raise and ``agree`` at the agreement points; in one process both are
no-ops.

One behaviour for both (see the README's event list):
- events outside batches (``startRun``, ``startEpoch``, ``startValidBatches``, ``endEpoch``,
  ``endRun``, ``cancelEpoch``, ``cancelRun``) run every handler, then raise the first
  exception;
- inside a batch, the first exception ends the batch: a ``CancelBatchException`` fires
  ``cancelBatch`` and ``endBatch``, anything else leaves the batch (no ``endBatch``);
- ``startStep`` and ``startZeroGrad`` run every handler; the step is taken unless one returned
  True, and what they raised comes after it (a cancel then ends the batch after the step).

The phase is the learner's: ``l.training`` is True from ``startEpoch`` to the end of the
training batches, False for validation. ``model.train()`` / ``model.eval()`` are called at
each change, but a callback may switch the model's mode inside a batch without changing what
the loop does. The optimizer step is ``k1lib/_step.py``'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._batch import check_backward, forward, loss_of, split
from ._group import Group
from ._live import say
from ._step import OptimizerStep
from .callbacks.callback import CancelBatchException, CancelEpochException, CancelRunException

if TYPE_CHECKING:
    from ._learner import Learner
    from .callbacks.callbacks import Callbacks

__all__ = ["Loop"]


class Loop:
    """One run of ``learner`` (``Learner.run`` makes one; callbacks reach its ``Group`` as
    ``l.group``)."""

    def __init__(self, learner: Learner, group: Group) -> None:
        assert learner.model is not None and learner.opt is not None
        self.learner = learner
        self.group = group
        self.step = OptimizerStep(learner.opt)
        group.watch(self.step)
        self._version = -1  # of the callbacks the step was configured from
        self.running = False  # from startRun until after endRun

    def run(self, epochs: int, limit: int | None) -> None:
        learner, group = self.learner, self.group
        self.running = True
        try:
            try:
                group.fire(learner.cbs, "startRun")
                group.wrap()
                for learner.epoch in range(epochs):
                    self._epoch(limit)
            except CancelRunException as cancelled:
                group.fire(learner.cbs, "cancelRun")  # the progress bar writes its last line here
                if learner.rank == 0:
                    say(f"Run cancelled: {cancelled}.")
            except BaseException:
                self.step.drop(failed=True)
                raise
            finally:
                self.step.drop()
                group.fire(learner.cbs, "endRun")
        finally:
            self.running = False
            group.unwrap()

    def _configure(self) -> None:
        """Ask the callbacks how to take the optimizer step: at the first step, and again
        whenever they changed (``Callbacks.version``)."""
        cbs = self.learner.cbs
        if self._version == cbs.version:
            return
        step = self.step
        step.accumulation = step.clipping = step.scaling = None
        for cb in cbs:
            if not cb.suspended:
                cb.configure_step(step)
        self._version = cbs.version

    def _epoch(self, limit: int | None) -> None:
        learner, group = self.learner, self.group
        assert learner.model is not None
        learner.batch = 0
        try:
            learner.training = True
            group.fire(learner.cbs, "startEpoch")
            learner.model.train()
            self._batches(learner.data.train, limit)
            self._flush()
            learner.training = False
            learner.model.eval()
            group.fire(learner.cbs, "startValidBatches")
            self._batches(learner.data.valid, limit)
        except CancelEpochException:
            group.fire(learner.cbs, "cancelEpoch")
        learner.training = False
        self._flush()
        group.fire(learner.cbs, "endEpoch")

    def _flush(self) -> None:
        """Step a last incomplete accumulation group (an error is held: the next event agrees)."""
        try:
            self._configure()
            self.step.flush()
        except BaseException as e:
            self.group.hold(e, f"stepping the last accumulation group of epoch {self.learner.epoch}")

    def _batches(self, loader: Iterable[Any], limit: int | None) -> None:
        learner, group = self.learner, self.group
        source = group.batches(loader, learner.epoch)
        count = 0
        while True:
            batch: Any = None
            ended = False
            if group.held is None:  # else: something to agree on first (several processes)
                if limit is not None and count >= limit:
                    ended = True
                else:
                    try:
                        batch = next(source)
                    except StopIteration:
                        ended = True
                    except BaseException as e:
                        group.hold(e, f"fetching batch {learner.batch} of epoch {learner.epoch}")
            if not self._batch(batch, ended):
                return
            if group.held is None:  # else the next turn agrees on it, in this batch's place
                learner.batch += 1
                count += 1

    def _batch(self, batch: Any, ended: bool) -> bool:
        """One batch, or (``ended``) this rank's turn of one that some rank has no data for;
        False when the loader ended (on any rank)."""
        learner, group, cbs = self.learner, self.group, self.learner.cbs
        started = not ended and group.held is None
        skip = False
        try:
            if started:
                try:
                    learner.xb, learner.yb = split(batch)
                    cbs("startBatch")
                    cbs("startPass")
                except BaseException as e:
                    group.hold(e)
            if group.agrees_before_forward():
                ended = group.agree("startPass", ended=ended)[1]
            if started and not ended and group.held is None:
                try:
                    skip = self._forward(cbs)
                except BaseException as e:
                    group.hold(e)
            ready = started and not ended and not skip and group.held is None
            skip, ended, done = group.agree_before_backward(skip, ended, self._backward if ready else None)
            if ended:  # some rank's loader ran out: this batch is dropped
                if started:
                    self._close(cbs, cancelled=True)
                return False
            if group.held is None:
                self._step(cbs, skip or done)
            if group.held is not None:  # held for the next agreement: no endBatch
                return True
        except CancelBatchException as e:
            if getattr(e, "_k1lib_escapes", False):
                raise
            self._close(cbs, cancelled=True)
            return True
        self._close(cbs, cancelled=False)
        return True

    def _forward(self, cbs: Callbacks) -> bool:
        """Forward pass and loss; returns whether to skip the backward pass."""
        learner = self.learner
        assert learner.model is not None
        learner.y = forward(learner.model, learner.xb)
        cbs("endPass")
        cbs("startLoss")
        lossF = learner.lossF  # noqa: N806
        learner.loss = lossF(learner.y, learner.yb) if lossF else loss_of(None, learner.y, learner.yb)
        cbs("endLoss")
        skip = cbs("startBackward")
        if not skip:
            check_backward(learner.loss)  # before the ranks agree: a rank alone in backward hangs
        return skip

    def _backward(self) -> None:
        """The backward pass of the batch (with the step's scaling)."""
        self._configure()
        self.step.backward(self.learner.loss)

    def _step(self, cbs: Callbacks, skip_backward: bool) -> None:
        """The optimizer step of the batch, after its backward pass (unless ``skip_backward``:
        skipped, or run already while the ranks agreed)."""
        learner, step = self.learner, self.step
        try:
            self._configure()
            if not skip_backward:
                step.backward(learner.loss)
            skip, raised = cbs.collect("startStep")
            if not skip:
                step.step()
            skip, also = cbs.collect("startZeroGrad")
            step.zero_grad(not skip)
            if raised or also:
                raise raised or also  # type: ignore[misc]
        except CancelBatchException:
            raise  # the step was taken on every rank: the cancel needs no agreement
        except BaseException as e:
            self.group.hold(e, f"in batch {learner.batch} of epoch {learner.epoch}, after backward")

    def _close(self, cbs: Callbacks, cancelled: bool) -> None:
        """``cancelBatch`` (when ``cancelled``) and ``endBatch``. A CancelBatchException from
        them has no batch left to cancel: it ends the run."""
        try:
            if cancelled:
                cbs("cancelBatch")
            cbs("endBatch")
        except BaseException as e:
            if isinstance(e, CancelBatchException):
                e._k1lib_escapes = True  # type: ignore[attr-defined]
            learner = self.learner
            where = "cancelBatch or endBatch" if cancelled else "endBatch"
            self.group.hold(e, f"in batch {learner.batch} of epoch {learner.epoch}, in {where}")
