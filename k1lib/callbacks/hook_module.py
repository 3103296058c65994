"""``HookModule``: statistics of the outputs of selected modules, and of the gradients of those
outputs, on every training batch.

The modules are those that ``l.css`` gives the prop ``HookModule`` (or ``all``). The callback is
a ``ModuleRecord`` (what is recorded and how to read it) that drives a ``ModuleCapture`` (the
hooks and the per-batch policy, ``_module_capture.py``) through the run's events; it adds only
when hooks exist. A forward hook on each module takes its output; for the backward side a
tensor hook on that output sees its gradient (much cheaper than
``register_full_backward_hook``). Small outputs are kept until the end of the batch and
reduced together, shape by shape; large ones are reduced in the hook, so nothing large is
held. Results stay in preallocated device buffers and reach the host once an epoch.

Hooks exist only while training batches run: they are added at the start of each epoch, removed
before validation, at the end of the run (whatever ended it) and when the callback is suspended.
Only training batches are recorded. A module whose output is a tuple, list, dict or dataclass
(Hugging Face's ``ModelOutput``) is summarised by its first tensor (``modsel._grad``, which
``modsel.hooks(backward=...)`` uses too); one with no tensor output records NaN.

With a float16 GradScaler (``withAutocast(torch.float16)``) the gradients seen here are the
scaled ones (times the loss scale, and 1/n with ``withGradAccumulation(n)``).

Under ``torch.compile`` the hooks fire (dynamo traces them, splitting the graph where they
read autograd state), so ``fullgraph=True`` fails while HookModule selects modules: leave it
out of ``l.css`` or compile without ``fullgraph``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

import modsel

from .._unwrap import unwrap
from ._module_capture import ModuleCapture
from ._module_record import ModuleRecord, ModuleStats, Stats, usage
from ._selection import selected_modules
from .callback import Callback

__all__ = ["HookModule", "ModuleStats", "Stats"]


class HookModule(ModuleRecord, Callback):
    """Records statistics of the selected modules' outputs and output gradients per training
    batch: means and stds by default (see ``withMinRecorder``, ``withHook``, ...)."""

    doc: ClassVar[str] = usage("cb")

    def __init__(self) -> None:
        super().__init__()  # ModuleRecord's, then Callback's
        self._capture: ModuleCapture | None = None  # during a run
        self._fixed = False  # a slice of another HookModule: modules are chosen by path
        self._warnedFor: str | None = None
        self._undone: int | None = None  # the loop's undone backward passes at startBatch

    def _install(self) -> None:
        if self._capture is not None and not self.suspended:
            self._capture.install()

    def _uninstall(self) -> None:
        if self._capture is not None:
            self._capture.remove()

    def suspendChanged(self) -> None:  # noqa: N802
        if self.suspended:
            self._uninstall()
            self.end()  # it may miss endRun: adding recorders is allowed again

    # ---- events -------------------------------------------------------------------------------------
    def startRun(self) -> None:
        learner = self.learner
        assert learner.model is not None  # check_ready: set for every run
        if self._fixed:
            model = unwrap(learner.model)
            found = [(path, model.get_submodule(path)) for path in self.names]
        else:
            warn = self._warnedFor != learner.css
            found = selected_modules(learner, "HookModule", warn=warn)
            if not found:
                self._warnedFor = learner.css
        self.begin([path for path, _ in found], [modsel.type_name(m) for _, m in found])
        home = next(learner.model.parameters(), torch.empty(0)).device
        self._capture = ModuleCapture(found, self, home) if found else None

    def startEpoch(self) -> None:
        self._install()

    def startBatch(self) -> None:
        if self._capture is None:
            return
        if not self._capture.installed and self.learner.training:
            self._install()  # restored from a suspension mid-epoch
        if self._capture.installed:
            self._capture.start_batch()
        self._undone = self._undone_passes()

    def _undone_passes(self) -> int | None:
        """How many backward passes the run's loop undid so far (None outside runs)."""
        loop = self.learner._loop
        return loop.step.undone if loop is not None else None

    def startValidBatches(self) -> None:
        self._uninstall()

    def endBatch(self) -> None:
        if self._capture is not None:
            if self._undone_passes() != self._undone:
                # this batch's backward pass was undone (DDP: the ranks agreed after it to
                # cancel the batch): its gradients are not recorded, as without that pass
                self._capture.forget_backward()
            self._capture.end_batch()  # nothing when not installed (validation)

    def endEpoch(self) -> None:
        self._uninstall()
        self.flush()

    def endRun(self) -> None:
        self._uninstall()
        self._capture = None
        self.end()

    # ---- reading and display ------------------------------------------------------------------------
    def __getitem__(self, index: int | slice) -> Any:
        part = super().__getitem__(index)
        if isinstance(part, HookModule):
            part._fixed = True  # it records its own modules, by path, in a later run
        return part

    def __repr__(self) -> str:
        lines = self.summary()
        lines[0] = f"Callback `{self.name}`: {lines[0]}"
        use = Callback.__repr__(self).split("\n", 1)[1]
        return "\n".join(lines) + "\n\nUse...\n" + use
