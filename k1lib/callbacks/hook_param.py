"""``HookParam``: mean, std, min and max of selected parameters after every training step.

The parameters are those of the modules that ``l.css`` gives the prop ``HookParam`` (or
``all``), with their subtrees. The callback is a ``ParamRecord`` (what is recorded and how to
read it) that drives a ``ParamCapture`` at the end of each training batch, after the step.
Statistics are computed on the parameters' device in a few kernels per batch (parameters of
one shape are reduced together), kept in preallocated device buffers and copied to the host
once an epoch: no host sync per batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .._unwrap import unwrap
from ._param_capture import ParamCapture
from ._param_record import ParamRecord, ParamStats, usage
from ._selection import selected_parameters
from .callback import Callback

__all__ = ["HookParam", "ParamStats"]


class HookParam(ParamRecord, Callback):
    """Records mean, std, min and max of each selected parameter after each training batch."""

    doc: ClassVar[str] = usage("cb")

    def __init__(self) -> None:
        super().__init__()  # ParamRecord's, then Callback's
        self._capture: ParamCapture | None = None  # during a run
        self._fixed = False  # a slice of another HookParam: its parameters are chosen by name
        self._warnedFor: str | None = None

    # ---- recording --------------------------------------------------------------------------------
    def startRun(self) -> None:
        learner = self.learner
        assert learner.model is not None  # check_ready: set for every run
        if self._fixed:
            named = dict(unwrap(learner.model).named_parameters())
            missing = [n for n in self.names if n not in named]
            if missing:
                raise KeyError(f"HookParam: the model has no parameters {missing}")
            found = [(n, named[n]) for n in self.names]
        else:
            warn = self._warnedFor != learner.css
            found = selected_parameters(learner, "HookParam", warn=warn)
            if not found:
                self._warnedFor = learner.css
        self.begin([n for n, _ in found])
        self._capture = ParamCapture(found, self) if found else None

    def startEpoch(self) -> None:
        if self._capture is None:
            return
        try:
            expected: int | None = len(self.learner.data.train)
        except TypeError:
            expected = None
        self._capture.start(expected)

    def endBatch(self) -> None:
        if self._capture is not None and self.learner.training:
            self._capture.end_batch()

    def endEpoch(self) -> None:
        self.flush()

    def endRun(self) -> None:
        self.flush()
        self._capture = None

    # ---- reading and display ------------------------------------------------------------------------
    def __getitem__(self, index: int | slice) -> Any:
        part = super().__getitem__(index)
        if isinstance(part, HookParam):
            part._fixed = True  # it records its own parameters, by name, in a later run
        return part

    def __repr__(self) -> str:
        lines = self.summary()
        lines[0] = f"Callback `{self.name}`: {lines[0]}"
        use = Callback.__repr__(self).split("\n", 1)[1]
        return "\n".join(lines) + "\n\nUse...\n" + use
