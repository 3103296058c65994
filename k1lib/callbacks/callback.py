"""The callback base class, the training events and the cancel exceptions.

A ``Callback`` implements any of the events in ``EVENTS`` as methods without arguments (the
base class documents each as a no-op); the ``Learner``'s loop (``k1lib/_loop.py``) fires them
in loop order through its ``Callbacks``. Returning ``True`` from ``startBackward``,
``startStep`` or ``startZeroGrad`` skips that step. Raising one of the cancel exceptions ends
the batch, epoch or run early (control flow, not an error).
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .._learner import Learner
    from .._step import OptimizerStep
    from .callbacks import Callbacks

__all__ = [
    "EVENTS",
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelException",
    "CancelRunException",
]

# in the order a run fires them; the cancel* events fire when the matching exception is caught
EVENTS: tuple[str, ...] = (
    "startRun",
    "startEpoch",
    "startBatch",
    "startPass",
    "endPass",
    "startLoss",
    "endLoss",
    "startBackward",
    "startStep",
    "startZeroGrad",
    "endBatch",
    "startValidBatches",
    "endEpoch",
    "endRun",
    "cancelBatch",
    "cancelEpoch",
    "cancelRun",
)
_EVENT_SET = frozenset(EVENTS)
_EVENT_LIKE = re.compile(r"(start|end|cancel)[A-Z]")


class CancelException(Exception):  # noqa: N818 - named like the README's CancelRunException
    """Base of the cancel exceptions: control flow that ends part of a run early."""

    __module__ = "k1lib.callbacks"  # the public name, in tracebacks and for pickle


class CancelBatchException(CancelException):
    """Skip the rest of this batch (fires ``cancelBatch``)."""

    __module__ = "k1lib"  # the public name, in tracebacks and for pickle


class CancelEpochException(CancelException):
    """Skip the rest of this epoch (fires ``cancelEpoch``)."""

    __module__ = "k1lib"  # the public name, in tracebacks and for pickle


class CancelRunException(CancelException):
    """End the run (fires ``cancelRun``); the Learner prints its message."""

    __module__ = "k1lib"  # the public name, in tracebacks and for pickle


class Callback:
    """Base class of callbacks. Subclasses implement events (see ``EVENTS``) as methods.

    Inside a callback, ``self.learner`` is the Learner and a name the callback does not have
    falls through to it (``self.epoch``, ``self.loss``); a name found in neither raises
    ``AttributeError`` with close matches. Callbacks run in ascending ``order``.
    """

    order: ClassVar[int] = 10
    # makes batches, outputs or their precision what training sees (ModifyBatch, DType, Device,
    # ...): kept running when Learner.record, ParamFinder and LossLandscape suspend the others
    shapes_batch: ClassVar[bool] = False
    # exchanges with the other ranks (torch.distributed collectives) inside batch events: under
    # DDP every rank then runs every batch's events (ParamFinder's range test)
    exchanges_in_batches: ClassVar[bool] = False
    # extra help lines for the repr (after "Callback `Name`, use...")
    doc: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if callable(value) and _EVENT_LIKE.match(name) and name not in _EVENT_SET:
                close = difflib.get_close_matches(name, EVENTS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the events are {', '.join(EVENTS)}"
                raise TypeError(f"{cls.__name__}.{name} looks like an event but is not one{hint}")

    def __init__(self) -> None:
        self.cbs: Callbacks | None = None
        self.name: str = type(self).__name__
        self.suspended = False

    @property
    def learner(self) -> Learner:
        """The Learner this callback's Callbacks belong to."""
        if self.cbs is None or self.cbs.learner is None:
            raise AttributeError(f"callback {self.name!r} is not attached to a Learner")
        return self.cbs.learner

    @property
    def l(self) -> Learner:  # noqa: E743 - the 2021 name, kept for callbacks written against it
        """Short for ``learner``."""
        return self.learner

    # ---- the events: no-ops here (the dispatcher skips them), overridden by subclasses --------
    def startRun(self) -> None:
        """Once, as ``l.run`` starts (before DDP wraps the model; ``l.epochs``, ``l.batches`` set)."""

    def startEpoch(self) -> None:
        """At each epoch's start (``l.epoch`` set, ``l.training`` True, before ``model.train()``)."""

    def startBatch(self) -> None:
        """A batch was fetched: ``l.xb``, ``l.yb`` hold it (training and validation batches)."""

    def startPass(self) -> None:
        """Just before the forward pass ``l.y = model(l.xb)``."""

    def endPass(self) -> None:
        """After the forward pass: ``l.y`` holds the output."""

    def startLoss(self) -> None:
        """Just before ``l.loss = l.lossF(l.y, l.yb)``."""

    def endLoss(self) -> None:
        """After the loss: ``l.loss`` holds it (as computed, never scaled)."""

    def startBackward(self) -> bool:
        """Before the backward pass; return True to skip it."""
        return False

    def startStep(self) -> bool:
        """Before the optimizer step; return True to skip it. Every handler runs: a cancel
        raised here ends the batch after the step."""
        return False

    def startZeroGrad(self) -> bool:
        """Before ``zero_grad``; return True to keep the gradients. Every handler runs."""
        return False

    def endBatch(self) -> None:
        """The batch is done (also after a cancelled one, after ``cancelBatch``)."""

    def startValidBatches(self) -> None:
        """The training batches are done; ``l.training`` is False from here, model in eval."""

    def endEpoch(self) -> None:
        """The epoch is done (also after a cancelled one, after ``cancelEpoch``)."""

    def endRun(self) -> None:
        """The run is done, however it ended (also after an exception): clean up here."""

    def cancelBatch(self) -> None:
        """A ``CancelBatchException`` ended the batch early."""

    def cancelEpoch(self) -> None:
        """A ``CancelEpochException`` ended the epoch early."""

    def cancelRun(self) -> None:
        """A ``CancelRunException`` ended the run early."""

    def configure_step(self, step: OptimizerStep) -> None:
        """Not an event: called as a run starts (after ``startRun``) and when the callbacks
        change mid-run, for callbacks that take part in the optimizer step to register with
        it (``GradAccumulation``, ``GradClipping``, ``Autocast``; see ``k1lib/_step.py``)."""

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: fall through to the learner (public names
        # only: private and dunder probes, like IPython's _repr_*_, fail at once)
        if name.startswith("_") or name in ("cbs", "name", "suspended"):
            raise AttributeError(name)
        cbs = self.__dict__.get("cbs")
        learner = cbs.learner if cbs is not None else None
        if learner is not None:
            try:
                return getattr(learner, name)
            except AttributeError:
                pass
        known = (
            set(dir(type(self))) | set(self.__dict__) | (set(dir(learner)) if learner is not None else set())
        )
        close = difflib.get_close_matches(name, [k for k in known if not k.startswith("_")], n=3)
        where = "or its learner " if learner is not None else ""
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AttributeError(f"callback {type(self).__name__!r} {where}has no attribute {name!r}{hint}")

    def withCheckpoint(self, checkpoint: str, f: Any) -> Callback:  # noqa: N802 - README name
        """Run ``f(self)`` at event ``checkpoint`` (after this class's own handler, if any)."""
        if checkpoint not in _EVENT_SET:
            close = difflib.get_close_matches(checkpoint, EVENTS, n=1)
            raise ValueError(
                f"unknown event {checkpoint!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            )
        old = getattr(type(self), checkpoint, None)

        def handler() -> Any:
            result = old(self) if old is not None else None
            return f(self) or result

        setattr(self, checkpoint, handler)
        if self.cbs is not None:
            self.cbs._rebuild()
        return self

    def detach(self) -> Callback:
        """Remove this callback from its Callbacks."""
        if self.cbs is not None:
            self.cbs.remove(self.name)
        return self

    def suspendChanged(self) -> None:  # noqa: N802
        """Called after ``cbs.suspend`` / ``cbs.restore`` changed ``self.suspended`` (a
        callback holding hooks removes or reinstalls them here)."""

    def state_dict(self) -> dict[str, Any]:
        """This callback's own small state, for checkpoints (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        lines = [f"Callback `{self.name}`, use..."]
        if self.doc:
            lines.extend(self.doc.strip("\n").splitlines())
        lines += [
            '- cb.something: to get specific attribute "something" from learner if not available',
            "- cb.withCheckpoint(checkpoint, f): to quickly insert an event handler",
            "- cb.detach(): to remove itself from its parent Callbacks",
        ]
        return "\n".join(lines)
