"""``Callbacks``: the ordered set of callbacks of a Learner, and the event dispatcher.

Dispatch is precomputed: for each event, the bound handlers of the callbacks that implement it
(rebuilt when callbacks are added, removed, suspended or restored), so firing an event with no
handler costs a dict lookup. Every ``withX`` builder is declared here.
"""

from __future__ import annotations

import difflib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .callback import _EVENT_SET, EVENTS, Callback, CancelException

if TYPE_CHECKING:
    import os

    import torch

    from .._learner import Learner

__all__ = ["Callbacks", "Timings"]


class Timings:
    """Seconds spent per event and per callback (``cbs.timings``)."""

    def __init__(self, seconds: dict[tuple[str, str], float]) -> None:
        self.seconds = dict(seconds)

    def by_callback(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (name, _), s in self.seconds.items():
            out[name] += s
        return dict(out)

    def by_event(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (_, event), s in self.seconds.items():
            out[event] += s
        return dict(out)

    def __repr__(self) -> str:
        from tabulate import tabulate

        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        table = tabulate([(n, e, f"{s:.4f}") for (n, e), s in rows], headers=["callback", "event", "seconds"])
        return f"Callback timings:\n{table}\n\nUse...\n- t.plot(): to see seconds per callback as bars"

    def plot(self) -> Any:
        """A bar chart of seconds per callback (returns the matplotlib Figure)."""
        import matplotlib.pyplot as plt

        per = self.by_callback()
        fig, ax = plt.subplots(figsize=(6, 0.4 * max(len(per), 2) + 1))
        names = sorted(per, key=per.__getitem__)
        ax.barh(names, [per[n] for n in names])
        ax.set_xlabel("seconds")
        ax.set_title("time per callback")
        fig.tight_layout()
        plt.close(fig)
        return fig


class _Suspension:
    """What ``cbs.suspend(...)`` returns: also a context manager that restores on exit."""

    def __init__(self, cbs: Callbacks) -> None:
        self._cbs = cbs

    def __enter__(self) -> Callbacks:
        return self._cbs

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cbs.restore()


class Callbacks:
    """The callbacks of a Learner, sorted by ``order`` (ties keep insertion order)."""

    def __init__(self) -> None:
        self._cbs: list[Callback] = []
        self._suspensions: list[list[Callback]] = []
        self._handlers: dict[str, list[tuple[Callback, Callable[[], Any]]]] = {}
        self._seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.learner: Learner | None = None
        # bumped whenever the handlers change (the loop then asks the callbacks again how to
        # take the optimizer step)
        self.version = 0

    # ---- membership -----------------------------------------------------------------------------
    def append(self, cb: Callback, name: str | None = None) -> Callbacks:
        """Add ``cb`` (under ``name``, default its class name); names are unique."""
        if not isinstance(cb, Callback):
            raise TypeError(f"expected a k1lib.Callback, got {type(cb).__name__}: {cb!r:.80}")
        name = name or cb.name
        if any(c.name == name for c in self._cbs):
            raise ValueError(
                f"a callback named {name!r} is already there; pass another name: append(cb, name)"
            )
        cb.name = name
        cb.cbs = self
        position = len(self._cbs)
        while position > 0 and self._cbs[position - 1].order > cb.order:
            position -= 1
        self._cbs.insert(position, cb)
        self._rebuild()
        return self

    def remove(self, name: str) -> Callback:
        """Take the callback called ``name`` out and return it (KeyError if there is none)."""
        cb = self._get(name)
        self._cbs.remove(cb)
        cb.cbs = None
        self._rebuild()
        return cb

    def _get(self, name: str) -> Callback:
        for cb in self._cbs:
            if cb.name == name:
                return cb
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; there are: {', '.join(self.names()) or 'none'}"
        )
        raise KeyError(f"no callback named {name!r}{hint}")

    def names(self) -> list[str]:
        return [cb.name for cb in self._cbs]

    def __getitem__(self, name: str) -> Callback:
        return self._get(name)

    def __getattr__(self, name: str) -> Callback:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._get(name)
        except KeyError as e:
            raise AttributeError(e.args[0]) from None

    def __contains__(self, name: object) -> bool:
        return any(cb.name == name for cb in self._cbs)

    def __iter__(self) -> Iterator[Callback]:
        return iter(list(self._cbs))

    def __len__(self) -> int:
        return len(self._cbs)

    # ---- suspension -------------------------------------------------------------------------------
    def suspend(self, names: Sequence[str]) -> _Suspension:
        """Stop firing events in the named callbacks until ``restore()`` (or the end of a
        ``with`` block). Suspensions stack."""
        if isinstance(names, str):
            names = [names]
        cbs = [self._get(n) for n in names]
        newly = [cb for cb in cbs if not cb.suspended]
        for cb in newly:
            cb.suspended = True
        self._suspensions.append(newly)
        self._rebuild()
        for cb in newly:
            cb.suspendChanged()
        return _Suspension(self)

    def restore(self) -> None:
        """Undo the latest ``suspend``."""
        if not self._suspensions:
            raise RuntimeError("cbs.restore(): nothing is suspended")
        back = self._suspensions.pop()
        for cb in back:
            cb.suspended = False
        self._rebuild()
        for cb in back:
            cb.suspendChanged()

    # ---- dispatch ---------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        handlers: dict[str, list[tuple[Callback, Callable[[], Any]]]] = {}
        for event in EVENTS:
            found = []
            for cb in self._cbs:
                if cb.suspended:
                    continue
                if event in cb.__dict__ or any(
                    event in vars(k) for k in type(cb).__mro__ if k is not Callback
                ):
                    found.append((cb, getattr(cb, event)))
            handlers[event] = found
        self._handlers = handlers
        self.version += 1

    def __call__(self, event: str) -> bool:
        """Fire ``event`` in every (non-suspended) callback, in order; True when any handler
        returned True (which skips a step, for startBackward / startStep / startZeroGrad).
        A handler's exception is raised at once, except at ``endRun`` (see ``collect``)."""
        if self._handlers.get(event) == []:  # nothing handles it: the common case, made cheap
            return False
        answer, failed = self._fire(event, finish=event == "endRun")
        if failed is not None:
            raise failed
        return answer

    def collect(self, event: str) -> tuple[bool, BaseException | None]:
        """Fire ``event`` in every handler, even after one raised; return the answer and the
        first exception, not raised. The loop fires every event outside batches this way (an
        exchange between ranks inside a handler, as Loss averaging at ``endEpoch``, is then
        never skipped on one rank), and ``startStep`` / ``startZeroGrad`` (whether to skip the
        step must not depend on a handler that raised before it)."""
        if self._handlers.get(event) == []:
            return False, None
        return self._fire(event, finish=True)

    def _fire(self, event: str, finish: bool) -> tuple[bool, BaseException | None]:
        try:
            handlers = self._handlers[event]
        except KeyError:
            if event in _EVENT_SET:
                self._rebuild()
                handlers = self._handlers[event]
            else:
                close = difflib.get_close_matches(event, EVENTS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown event {event!r}{hint}") from None
        answer = False
        clock = time.perf_counter
        seconds = self._seconds
        failed: BaseException | None = None
        for cb, handler in handlers:
            start = clock()
            try:
                if handler():
                    answer = True
            except BaseException as e:
                control = isinstance(e, CancelException)
                if control and not finish:
                    raise
                if isinstance(e, Exception) and not control and not getattr(e, "_k1lib_named", False):
                    e._k1lib_named = True  # type: ignore[attr-defined]
                    note = f"(raised in callback {cb.name!r} during event {event!r})"
                    if hasattr(e, "add_note"):
                        e.add_note(note)
                if not finish:
                    raise
                # endRun cleans up (hooks, no_grad, files): every callback gets it, then the
                # first failure is raised
                failed = failed or e
            finally:
                seconds[(cb.name, event)] += clock() - start
        return answer, failed

    def withCheckpoint(  # noqa: N802 - the README's name
        self, checkpoint: str, f: Callable[[Callback], Any], name: str | None = None
    ) -> Callbacks:
        """Add a callback that runs ``f(cb)`` at event ``checkpoint``."""
        cb = Callback()
        cb.withCheckpoint(checkpoint, f)
        return self.append(cb, name or f"Checkpoint{len(self._cbs)}")

    @property
    def timings(self) -> Timings:
        """Seconds spent in each callback for each event, since this object was made."""
        return Timings(self._seconds)

    # ---- builders (one per built-in callback) ----------------------------------------------------
    def withProgressBar(self) -> Callbacks:  # noqa: N802
        from .progress_bar import ProgressBar

        return self.append(ProgressBar())

    def withAutosave(self, directory: str = ".", keep: int = 3) -> Callbacks:  # noqa: N802
        from .autosave import Autosave

        return self.append(Autosave(directory, keep))

    def withLossLandscape(self) -> Callbacks:  # noqa: N802
        from .loss_landscape import LossLandscape

        return self.append(LossLandscape())

    def withHookModule(self) -> Callbacks:  # noqa: N802
        from .hook_module import HookModule

        return self.append(HookModule())

    def withHookParam(self) -> Callbacks:  # noqa: N802
        from .hook_param import HookParam

        return self.append(HookParam())

    def withParamFinder(self) -> Callbacks:  # noqa: N802
        from .param_finder import ParamFinder

        return self.append(ParamFinder())

    def withLoss(self) -> Callbacks:  # noqa: N802
        from .loss import Loss

        return self.append(Loss())

    def withMetric(self, name: str, f: Callable[[Any, Any], torch.Tensor]) -> Callbacks:  # noqa: N802
        """Record ``f(y, yb)`` per epoch as ``"train {name}"`` / ``"valid {name}"`` (``Metric``)."""
        from .metrics import Metric

        return self.append(Metric(name, f))

    def withAccuracy(  # noqa: N802
        self,
        topk: int = 1,
        name: str | None = None,
        ignoreIndex: int | None = -100,  # noqa: N803
    ) -> Callbacks:
        """Record the (top-k) accuracy per epoch (``Accuracy``: ``"valid accuracy"``, ...)."""
        from .metrics import Accuracy

        return self.append(Accuracy(topk, name, ignoreIndex))

    def withEarlyStopping(  # noqa: N802
        self,
        monitor: str = "valid loss",
        patience: int = 3,
        mode: str = "min",
        minDelta: float = 0.0,  # noqa: N803
    ) -> Callbacks:
        from .early_stopping import EarlyStopping

        return self.append(EarlyStopping(monitor, patience, mode, minDelta))

    def withBestCheckpoint(  # noqa: N802
        self,
        path: str | os.PathLike[str],
        monitor: str = "valid loss",
        mode: str = "min",
        restoreBest: bool = False,  # noqa: N803
    ) -> Callbacks:
        from .best_checkpoint import BestCheckpoint

        return self.append(BestCheckpoint(path, monitor, mode, restoreBest))

    def withTensorBoard(  # noqa: N802
        self, logdir: str | os.PathLike[str], histograms: bool = False
    ) -> Callbacks:
        """Write the published quantities, the lr and HookModule / HookParam statistics (and,
        with ``histograms``, parameter histograms) to ``logdir`` once an epoch, for TensorBoard
        (``TensorBoard``; needs the ``tensorboard`` package)."""
        from .tensorboard import TensorBoard

        return self.append(TensorBoard(logdir, histograms))

    def withCSV(self, path: str | os.PathLike[str]) -> Callbacks:  # noqa: N802
        """Write a CSV row per epoch to ``path``: the epoch, the published quantities, the lr
        and the seconds trained (``CSVLogger``)."""
        from .csv_logger import CSVLogger

        return self.append(CSVLogger(path))

    def withDontTrainValid(self) -> Callbacks:  # noqa: N802
        from .dont_train_valid import DontTrainValid

        return self.append(DontTrainValid())

    def withDontTrain(self) -> Callbacks:  # noqa: N802
        from .dont_train import DontTrain

        return self.append(DontTrain())

    def withCancelOnExplosion(self, limit: float = 1e6, every: int = 1) -> Callbacks:  # noqa: N802
        from .cancel_on_explosion import CancelOnExplosion

        return self.append(CancelOnExplosion(limit, every))

    def withCancelOnLowLoss(self, loss: float, epochMode: bool = False) -> Callbacks:  # noqa: N802, N803
        from .cancel_on_low_loss import CancelOnLowLoss

        return self.append(CancelOnLowLoss(loss, epochMode))

    def withBatchLimit(self, limit: int) -> Callbacks:  # noqa: N802
        from .batch_limit import BatchLimit

        return self.append(BatchLimit(limit))

    def withEpochLimit(self, limit: int) -> Callbacks:  # noqa: N802
        from .epoch_limit import EpochLimit

        return self.append(EpochLimit(limit))

    def withModifyBatch(self, f: Callable[[Any, Any], tuple[Any, Any]]) -> Callbacks:  # noqa: N802
        from .modify_batch import ModifyBatch

        return self.append(ModifyBatch(f))

    def withModifyOutput(self, f: Callable[[Any], Any]) -> Callbacks:  # noqa: N802
        from .modify_output import ModifyOutput

        return self.append(ModifyOutput(f))

    def withDType(self, dtype: torch.dtype) -> Callbacks:  # noqa: N802
        from .dtype import DType

        return self.append(DType(dtype))

    def withDevice(self, device: str | int | torch.device) -> Callbacks:  # noqa: N802
        from .device import Device

        return self.append(Device(device))

    def withCuda(self) -> Callbacks:  # noqa: N802
        """``withDevice("cuda")``, named ``Cuda`` as in 2021."""
        from .device import Device

        return self.append(Device("cuda"), "Cuda")

    def withAutocast(  # noqa: N802
        self, dtype: torch.dtype | None = None, scaler: bool | torch.amp.GradScaler | None = None
    ) -> Callbacks:
        """Mixed precision (default ``torch.bfloat16``); a gradient scaler for float16."""
        import torch

        from .autocast import Autocast

        return self.append(Autocast(torch.bfloat16 if dtype is None else dtype, scaler))

    def withGradAccumulation(self, n: int) -> Callbacks:  # noqa: N802
        from .grad_accumulation import GradAccumulation

        return self.append(GradAccumulation(n))

    def withGradClipping(self, maxNorm: float, normType: float = 2.0) -> Callbacks:  # noqa: N802, N803
        from .grad_clipping import GradClipping

        return self.append(GradClipping(maxNorm, normType))

    def withScheduler(self, sched: Any, every: str = "batch") -> Callbacks:  # noqa: N802
        """Step ``sched`` (a ``torch.optim.lr_scheduler`` scheduler on ``l.opt``) after each
        optimizer step taken (``every="batch"``) or at each training epoch's end (``"epoch"``)."""
        from .scheduler import Scheduler

        return self.append(Scheduler(sched, every))

    def withOneCycle(  # noqa: N802
        self,
        maxLr: float | list[float] | str,  # noqa: N803
        pctStart: float = 0.25,  # noqa: N803
        divFactor: float = 25.0,  # noqa: N803
        finalDivFactor: float = 1e4,  # noqa: N803
        annealStrategy: str = "cos",  # noqa: N803
        cycleMomentum: bool = False,  # noqa: N803
        baseMomentum: float = 0.85,  # noqa: N803
        maxMomentum: float = 0.95,  # noqa: N803
        epochs: int | None = None,
        totalSteps: int | None = None,  # noqa: N803
    ) -> Callbacks:
        """The 1cycle lr policy (warmup, then cosine annealing) over each run; ``maxLr`` may be
        ``"suggested"``: the ParamFinder's suggestion."""
        from .one_cycle import OneCycle

        return self.append(
            OneCycle(
                maxLr,
                pctStart,
                divFactor,
                finalDivFactor,
                annealStrategy,
                cycleMomentum,
                baseMomentum,
                maxMomentum,
                epochs,
                totalSteps,
            )
        )

    def withInspectBatch(self, f: Callable[[Any, Any], Any]) -> Callbacks:  # noqa: N802
        from .inspect_batch import InspectBatch

        return self.append(InspectBatch(f))

    def withInspectLoss(self, f: Callable[[Any], Any]) -> Callbacks:  # noqa: N802
        from .inspect_loss import InspectLoss

        return self.append(InspectLoss(f))

    def withInspectOutput(self, f: Callable[[Any], Any]) -> Callbacks:  # noqa: N802
        from .inspect_output import InspectOutput

        return self.append(InspectOutput(f))

    # ---- display --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        names = "\n".join(f"- {n}" for n in self.names())
        return (
            f"Callbacks:\n{names}\n\nUse...\n"
            "- cbs.append(cb[, name]): to add a callback with a name\n"
            '- cbs("startRun"): to trigger a specific event\n'
            "- cbs.Loss: to get a specific callback\n"
            "- cbs.timings: to get callback execution times\n"
            '- cbs.suspend(["Loss", "Cuda"]): to temporarily prevent triggering events in\n'
            "    specific callbacks. Can be used multiple times before restoring\n"
            "- cbs.restore(): to restore latest temporary suspension"
        )
