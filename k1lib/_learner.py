"""``Learner``: the training loop, driven by events that callbacks hook into.

Set ``model``, ``data``, ``opt`` and ``lossF``, then ``run(epochs)``. During a run the state is
on the learner for callbacks to read and change: ``epoch``, ``epochs``, ``batch``, ``batches``,
``xb``, ``yb``, ``y``, ``loss``, ``progress``.

Host syncs: the loop itself never reads a tensor on the host (``.item()``, ``.cpu()``,
``float()``) per batch. Built-in callbacks that do: CancelOnLowLoss (one per training batch
unless ``epochMode``), ParamFinder (one per batch, only during its test), Autocast with a
float16 GradScaler (torch's ``GradScaler.step`` reads one inf flag per step).
CancelOnExplosion reads each loss on the CPU, but on CUDA only a non-blocking copy, once it
has landed (one wait an epoch). Loss, HookModule and HookParam copy to the host once an
epoch; Device, GradAccumulation, GradClipping and bf16 Autocast never.

Several processes (``torchrun``, or any initialised process group of more than one): the run
trains a ``DistributedDataParallel`` of the model on each rank's share of the batches, with
cancels agreed between ranks; only rank 0 prints and writes checkpoints (see ``_distributed``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

import modsel

from . import _distributed
from ._module_selector import ModuleSelector
from ._unwrap import unwrap
from .callbacks.callback import Callback, CancelBatchException, CancelEpochException, CancelRunException
from .callbacks.callbacks import Callbacks
from .callbacks.dont_train import DontTrain

__all__ = ["Learner"]

_INDENT = "    "


def _default_callbacks() -> Callbacks:
    cbs = Callbacks()
    cbs.withProgressBar().withDontTrainValid().withAutosave().withLossLandscape()
    cbs.withHookModule().withHookParam().withLoss().withCancelOnExplosion().withParamFinder()
    return cbs


class Learner:
    """Trains ``model`` on ``data`` with ``opt`` and ``lossF``, firing events in ``cbs``."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.data: Any = None
        self.opt: torch.optim.Optimizer | None = None
        self.lossF: Callable[[Any, Any], torch.Tensor] | None = None
        self._css = "*"
        self._cbs = _default_callbacks()
        self._cbs.learner = self
        self.epoch = self.epochs = self.batch = self.batches = 0
        self.xb: Any = None
        self.yb: Any = None
        self.y: Any = None
        self.loss: Any = None
        self.progress = 0.0
        self.ddpKwargs: dict[str, Any] = {}
        self._sync: _distributed.Session | None = None
        self._recording = False

    # ---- configuration --------------------------------------------------------------------------
    @property
    def cbs(self) -> Callbacks:
        """The callbacks (``k1lib.Callbacks``)."""
        return self._cbs

    @cbs.setter
    def cbs(self, cbs: Callbacks) -> None:
        if not isinstance(cbs, Callbacks):
            raise TypeError(f"l.cbs must be a k1lib.Callbacks, got {type(cbs).__name__}")
        self._cbs.learner = None
        cbs.learner = self
        self._cbs = cbs

    @property
    def css(self) -> str:
        """The stylesheet that selects modules for the callbacks (modsel syntax); ``*`` selects
        every module with the prop ``all``. Modules given the prop ``frozen`` (by name) keep
        their parameters frozen during ``run`` and get their flags back afterwards."""
        return self._css

    @css.setter
    def css(self, css: str) -> None:
        modsel.parse(css)  # a bad stylesheet fails here, with the caret, not during a run
        self._css = css

    @property
    def moduleSelector(self) -> ModuleSelector:  # noqa: N802 - README name
        """The annotated module tree of ``model`` for ``css`` (with ``freeze()``, ``hookF()``,
        ``hookB()`` acting on what the css selected). A model wrapped by ``torch.compile`` or
        DDP is seen through: the tree and its paths are the original module's."""
        if self.model is None:
            raise AttributeError("l.moduleSelector needs a model: set l.model = ... first")
        tree = modsel.select(unwrap(self.model), self._css, node_class=ModuleSelector)
        assert isinstance(tree, ModuleSelector)
        return tree

    def __getattr__(self, name: str) -> Callback:
        # only reached for names the learner lacks: a callback of that name (l.Loss)
        if name.startswith("_"):
            raise AttributeError(name)
        cbs = self.__dict__.get("_cbs")
        if cbs is not None and name in cbs:
            callback: Callback = cbs[name]
            return callback
        known = [n for n in dir(type(self)) if not n.startswith("_")] + list(self.__dict__)
        known += cbs.names() if cbs is not None else []
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AttributeError(f"Learner has no attribute or callback {name!r}{hint}")

    @property
    def rank(self) -> int:
        """This process's rank among those training together (0 in one process)."""
        return _distributed.rank()

    @property
    def worldSize(self) -> int:  # noqa: N802
        """How many processes train together (1 without torch.distributed)."""
        return _distributed.world_size()

    def _check_ready(self) -> None:
        missing = [
            (name, how)
            for name, how in (
                ("model", "l.model = Network()"),
                ("data", "l.data = k1lib.data.Data.fromDataset(dataset, batchSize=64)"),
                ("opt", "l.opt = optim.Adam(l.model.parameters(), lr=1e-3)"),
                ("lossF", "l.lossF = lambda y, yb: ((y - yb) ** 2).mean()"),
            )
            if getattr(self, name) is None
        ]
        if missing:
            lines = "\n".join(f"  {how}" for _, how in missing)
            names = ", ".join(name for name, _ in missing)
            raise RuntimeError(f"Learner.run: {names} not set; set them first, e.g.\n{lines}")

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, epochs: int, batches: int | None = None) -> Learner:
        """Train for ``epochs`` epochs (``batches``: at most this many batches an epoch).

        Afterwards the model's train/eval mode is as before; after an exception in a callback,
        ``endRun`` has run and the exception names the callback and the event."""
        self._check_ready()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"Learner.run: epochs must be an int, 0 or more, got {epochs!r}")
        if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 0):
            raise ValueError(f"Learner.run: batches must be an int, 0 or more, or None, got {batches!r}")
        assert self.model is not None
        was_training = self.model.training
        model = self.model
        sync = _distributed.Session.begin(self, local=self._recording)
        self._sync = sync
        self.epochs = epochs
        try:
            self.batches = self._count_batches(batches)
        except BaseException:
            self._sync = None
            raise
        frozen = self._freeze_selected()  # last: from here on, the finally below gives them back
        cancelled: CancelRunException | None = None
        try:
            try:
                self._fire("startRun")
                if sync is not None:
                    sync.wrap()
                for self.epoch in range(epochs):
                    self._epoch(batches)
            except CancelRunException as e:
                cancelled = e
                self._fire("cancelRun")  # the progress bar writes its last line here
                if self.rank == 0:
                    print(f"Run cancelled: {cancelled}.")
            finally:
                self._fire("endRun")
        finally:
            if sync is not None:
                sync.unwrap()
            self._sync = None
            model.train(was_training)
            for param, flag in frozen:
                param.requires_grad_(flag)
        return self

    def _fire(self, event: str) -> bool:
        """``cbs(event)``; with several processes, agreed between them (see ``_distributed``),
        and every handler runs even after one raised (as in ``endRun``): a handler that
        exchanges with the other ranks (Loss averaging at ``endEpoch``) is never skipped on
        one rank only."""
        sync = self._sync
        if sync is None:
            return self.cbs(event)
        try:
            answer = self.cbs._dispatch(event, finish=True)
        except BaseException as e:  # agreed, then raised on every rank
            sync.settle(e, event)
        return sync.settle(None, event, answer)[0]

    def _freeze_selected(self) -> list[tuple[nn.Parameter, bool]]:
        """Freeze the parameters of modules whose props name ``frozen`` (explicitly: ``all``
        does not count here) for the run; returns what to restore afterwards."""
        if "frozen" not in self._css or self.model is None:
            return []
        saved: dict[int, tuple[nn.Parameter, bool]] = {}
        for node in self.moduleSelector.modules():
            if "frozen" in node.props:
                for param in node.module.parameters():
                    saved.setdefault(id(param), (param, param.requires_grad))
        for param, _ in saved.values():
            param.requires_grad_(False)
        return list(saved.values())

    def _count_batches(self, limit: int | None) -> int:
        """Batches an epoch (training and validation), with ``limit`` per loader; 0 when a
        loader has no length (a plain iterator)."""
        total = 0
        for loader in (self.data.train, self.data.valid):
            try:
                size = len(loader) if self._sync is None else _distributed.batches_per_rank(loader)
            except TypeError:
                return 0
            total += size if limit is None else min(size, limit)
        return total

    def _epoch(self, limit: int | None) -> None:
        assert self.model is not None
        self.batch = 0
        try:
            self._fire("startEpoch")
            self.model.train()
            self._loader(self.data.train, limit)
            self.model.eval()
            self._fire("startValidBatches")
            self._loader(self.data.valid, limit)
        except CancelEpochException:
            self._fire("cancelEpoch")
        self._fire("endEpoch")

    def _loader(self, loader: Iterable[Any], limit: int | None) -> None:
        if self._sync is not None:
            self._agreed_loader(self._sync, loader, limit)
            return
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            self._batch(batch)
            self.batch += 1

    def _agreed_loader(self, sync: _distributed.Session, loader: Iterable[Any], limit: int | None) -> None:
        """``_loader`` for one rank of several (see ``_distributed``): its share of the
        batches. What any rank raised since the last agreement, a failed fetch or a loader at
        its end is settled for all just before the forward pass (DDP's forward may have
        collectives of its own) or, when the forward has none, just before backward."""
        batches = sync.batches(loader, self.epoch)
        count = 0
        carried: BaseException | None = None  # raised after the last agreement of a batch
        where = ""
        while True:
            batch: Any = None
            ended, held = False, carried
            if held is None:
                if limit is not None and count >= limit:
                    ended = True
                else:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        ended = True
                    except BaseException as e:  # agreed below, then raised on every rank
                        held, where = e, f"fetching batch {self.batch} of epoch {self.epoch}"
            started = held is None and not ended
            if started:
                try:
                    self.xb, self.yb = batch
                    self.cbs("startBatch")
                    self.cbs("startPass")
                except BaseException as e:
                    held = e
            if not sync.quiet_forward():
                try:
                    ended = sync.settle(held, "startPass", ended=ended, where=where)[1]
                except CancelBatchException as e:
                    if _escapes(e):
                        raise
                    carried, where = self._agreed_close(cancelled=True)
                    self.batch += 1
                    count += 1
                    continue
                held, where = None, ""
            outcome = self._agreed_batch(sync, started, held, ended, where)
            if outcome is None:  # a loader ran out
                return
            carried, where = outcome
            self.batch += 1
            count += 1

    def _agreed_batch(
        self, sync: _distributed.Session, started: bool, held: BaseException | None, ended: bool, where: str
    ) -> tuple[BaseException | None, str] | None:
        """The rest of a batch: forward to ``endBatch``, with what this rank ``held`` or
        whether its loader ``ended`` still to agree on (when no agreement came before the
        forward: then a rank with either skips its forward). Returns None when some rank's
        loader ran out, else what was raised after the last agreement in the batch (and
        where), which the next agreement settles. Under DDP every rank must take the same
        optimizer step: a cancel raised in ``startStep`` or ``startZeroGrad`` ends the batch
        after it, and every handler of those events runs."""
        assert self.model is not None and self.opt is not None and self.lossF is not None
        cbs = self.cbs
        training = torch.is_grad_enabled()  # validation (no autograd) has no backward to agree on
        skip = False
        local: BaseException | None = None
        try:
            if held is not None:
                raise held
            if not ended:
                self.y = self.model(self.xb)
                cbs("endPass")
                cbs("startLoss")
                self.loss = self.lossF(self.y, self.yb)
                cbs("endLoss")
                skip = cbs("startBackward")
        except BaseException as e:  # agreed below (training) or at the next batch
            local = e
        if training:  # no rank goes into backward's all-reduce alone
            try:
                skip, ended = sync.settle(local, "startBackward", skip, ended, where)
            except CancelBatchException as e:  # any other agreed exception leaves the loader
                if _escapes(e):
                    raise
                return self._agreed_close(cancelled=True)
        elif isinstance(local, CancelBatchException):
            return self._agreed_close(cancelled=True)  # validation: cancelled on this rank alone
        elif local is not None:
            return local, f"in validation batch {self.batch} of epoch {self.epoch}"
        if ended:  # some rank's loader ran out: this batch is dropped
            if started:
                cbs("cancelBatch")
                cbs("endBatch")
            return None
        try:
            if not skip:
                self.loss.backward()
            skip, raised = cbs._collect("startStep")
            if not skip:
                self.opt.step()
            skip, also = cbs._collect("startZeroGrad")
            if not skip:
                self.opt.zero_grad()
            raised = raised or also
            if raised is not None:
                raise raised
        except CancelBatchException:
            return self._agreed_close(cancelled=True)
        except BaseException as e:
            return e, f"in batch {self.batch} of epoch {self.epoch}, after backward"  # no endBatch
        return self._agreed_close(cancelled=False)

    def _agreed_close(self, cancelled: bool) -> tuple[BaseException | None, str]:
        """``cancelBatch`` (when ``cancelled``) and ``endBatch``; what they raise is returned
        for the next agreement. A CancelBatchException from them has no batch left to cancel:
        it ends the run, as it does in one process."""
        try:
            if cancelled:
                self.cbs("cancelBatch")
            self.cbs("endBatch")
        except BaseException as e:
            if isinstance(e, CancelBatchException):
                e._k1lib_escapes = True  # type: ignore[attr-defined]
            return (
                e,
                f"in batch {self.batch} of epoch {self.epoch}, in {'cancelBatch or ' * cancelled}endBatch",
            )
        return None, ""

    def _batch(self, batch: Any) -> None:
        assert self.model is not None and self.opt is not None and self.lossF is not None
        cbs = self.cbs
        try:
            self.xb, self.yb = batch
            cbs("startBatch")
            cbs("startPass")
            self.y = self.model(self.xb)
            cbs("endPass")
            cbs("startLoss")
            self.loss = self.lossF(self.y, self.yb)
            cbs("endLoss")
            if not cbs("startBackward"):
                self.loss.backward()
            if not cbs("startStep"):
                self.opt.step()
            if not cbs("startZeroGrad"):
                self.opt.zero_grad()
        except CancelBatchException:
            cbs("cancelBatch")
        cbs("endBatch")

    def record(self, epochs: int, batchesPerEpoch: int) -> tuple[list[Any], list[Any], list[Any]]:  # noqa: N803
        """Run without training and return the batches seen and the outputs: ``xbs, ybs, ys``.
        Callbacks that record (Loss, ...) are suspended; the learner is as before afterwards."""
        xbs: list[Any] = []
        ybs: list[Any] = []
        ys: list[Any] = []
        recorder = _Recorder(xbs, ybs, ys)
        quiet = [cb.name for cb in self.cbs if not cb.shapes_batch]
        state = self._state()
        with self.cbs.suspend(quiet):
            self.cbs.append(recorder, "_Recorder")
            self._recording = True  # under DDP too, each rank runs all batches on its own
            try:
                with torch.no_grad():
                    self.run(epochs, batchesPerEpoch)
            finally:
                self._recording = False
                self.cbs.remove("_Recorder")
                self._restore(state)
        return xbs, ybs, ys

    def _state(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("epoch", "epochs", "batch", "batches", "xb", "yb", "y", "loss", "progress")
        }

    def _restore(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint: the state_dicts of the model, the optimizer and each callback, the
        css and the epoch (``torch.save`` to a temporary file, renamed into place). With
        several processes only rank 0 writes (call it on rank 0 alone or on every rank); to
        ``load`` on the others, wait for the file first (``torch.distributed.barrier()``)."""
        from ._checkpoint import checkpoint_of, write

        checkpoint = checkpoint_of(self)
        if self.rank == 0:
            write(checkpoint, path)

    def load(self, path: str | os.PathLike[str]) -> Learner:
        """Restore what ``save`` wrote (``torch.load(weights_only=True)``): a resumed run
        continues as the saved one would have."""
        from ._checkpoint import load

        load(self, path)
        return self

    def evaluate(self) -> None:
        """Show how the model does (set your own: ``l.evaluate = partial(f, l)``)."""
        raise NotImplementedError("set l.evaluate = partial(yourFunction, l) to define how to evaluate")

    # ---- display --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        def block(title: str, obj: object, lines: int) -> str:
            text = repr(obj).splitlines() or [""]
            shown = text[:lines] + (["....."] if len(text) > lines else [])
            return f"{title}:\n" + "\n".join(_INDENT + line for line in shown)

        return "\n".join(
            [
                block("l.model", self.model, 10),
                block("l.opt", self.opt, 10),
                block("l.cbs", self.cbs, 10),
                "Use...",
                "- l.model = ...: to specify a nn.Module object",
                "- l.data = ...: to specify data object",
                "- l.opt = ...: to specify an optimizer",
                "- l.lossF = ...: to specify a loss function",
                "- l.css = ...: to select modules using CSS",
                "- l.cbs = ...: to use a custom `Callbacks` object",
                "- l.moduleSelector: to get the modules selected by `l.css`",
                "- l.run(epochs): to run the network",
                '- l.Loss: to get a specific callback, this case "Loss"',
            ]
        )


def _escapes(error: BaseException) -> bool:
    """Whether a CancelBatchException was raised where no batch is left to cancel."""
    return bool(getattr(error, "_k1lib_escapes", False))


class _Recorder(DontTrain):
    """Collects each batch and output for ``Learner.record``; as a DontTrain, it skips every
    training step."""

    order = 100

    def __init__(self, xbs: list[Any], ybs: list[Any], ys: list[Any]) -> None:
        super().__init__()
        self._lists = (xbs, ybs, ys)

    def endPass(self) -> None:  # noqa: N802
        learner = self.learner
        xbs, ybs, ys = self._lists
        xbs.append(learner.xb)
        ybs.append(learner.yb)
        ys.append(learner.y)
