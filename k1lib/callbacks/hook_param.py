"""``HookParam``: mean, std, min and max of selected parameters after every training step.

The parameters are those of the modules that ``l.css`` gives the prop ``HookParam`` (or
``all``), with their subtrees. The callback is a ``ParamRecord`` (what is recorded and how to
read it) that drives a ``ParamCapture`` at the end of each training batch, after the step.
Statistics are computed on the parameters' device in a few kernels per batch (parameters of
one shape are reduced together), kept in preallocated device buffers and copied to the host
once an epoch: no host sync per batch.

Parameters sharded by FSDP2 (``fully_shard``: ``DTensor`` shards) are recorded whole: each rank
reduces its shards every batch and the ranks put their rows together at ``endEpoch`` and
``endRun``, which every rank reaches (``ShardedParamCapture``: a one-number all_reduce and one
all_gather of every row, per mesh). Reading the record never makes a collective: mid-epoch it
shows the rows up to the last epoch's end.
Suspend HookParam on every rank or on none: a rank whose HookParam skips ``endEpoch`` leaves the
others waiting in its collective.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .._fsdp import reshard
from .._unwrap import unwrap
from ._param_capture import ParamCapture
from ._param_record import ParamRecord, ParamStats, usage
from ._selection import selected_parameters
from ._sharded_params import param_capture
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
        reshard(learner.model)  # FSDP2: select the shards, not a gathered copy
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
        self._capture = param_capture(found, self) if found else None

    def startEpoch(self) -> None:
        if self._capture is None:
            return
        try:
            expected: int | None = len(self.learner.data.train)
        except TypeError:
            expected = None
        self._capture.start(expected)

    def endBatch(self) -> None:
        learner = self.learner
        if self._capture is not None and learner.training:
            self._capture.end_batch(learner.batch)

    def endEpoch(self) -> None:
        self._combine()
        self.flush()

    def endRun(self) -> None:
        try:
            self._combine()
            self.flush()
        finally:
            if self._capture is not None:
                self._capture.stop()
            self._capture = None

    def _combine(self) -> None:
        """Sharded parameters: the ranks put their rows together (a collective, where every
        rank is), unless the ranks are out of step (the run makes no more collectives then)."""
        group = self.learner.group
        if self._capture is None or group.broken:
            return
        if self._capture.exchanges():
            group.align("combine")  # ranks out of step raise here instead of hanging below
        self._capture.combine()

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
