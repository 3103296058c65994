"""``Learner``: the training loop, driven by events that callbacks hook into.

Set ``model``, ``data``, ``opt`` and ``lossF``, then ``run(epochs)``; the loop itself is
``k1lib/_loop.py``. ``run`` (and ``load``) refuse an ``opt`` that holds tensors other than
``model``'s parameters: one built before ``model`` was set again trains nothing.

During a run the state is on the learner for callbacks to read and change:
``epoch``, ``epochs``, ``batch``, ``batches``, ``xb``, ``yb``, ``y``, ``loss``, ``progress``,
and ``training`` (the phase: callbacks read it, never ``model.training``).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import modsel

from . import _act_checkpoint, _distributed, _fsdp
from ._group import Group
from ._loop import Loop
from ._module_selector import ModuleSelector
from ._record import record
from ._unwrap import unwrap
from .callbacks.callback import Callback
from .callbacks.callbacks import Callbacks

if TYPE_CHECKING:
    from ._predict import Predictions

__all__ = ["Learner"]

_INDENT = "    "
_FIELDS = ("epoch", "epochs", "batch", "batches", "xb", "yb", "y", "loss", "progress", "training")
_ALONE = Group()  # the group outside runs and in one process


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
        self.training = False  # the phase: True in training batches (set by the loop)
        self.ddpKwargs: dict[str, Any] = {}
        self._strategy = "ddp"
        self.fsdpKwargs: dict[str, Any] = {}
        self.fsdpInit: Callable[[nn.Module], Any] | None = None
        self._loop: Loop | None = None

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
        their parameters frozen during ``run`` and get their flags back afterwards. Modules
        given the prop ``checkpoint`` (by name: ``"SkipBlock: checkpoint"``) recompute their
        forward in backward during ``run`` (activation checkpointing: less activation memory,
        one more forward of them a batch, the same gradients); the outermost one wins when
        they nest, validation under ``no_grad`` is not affected, and their ``forward`` is
        theirs again afterwards (``k1lib.checkpointed`` does the same in a plain loop)."""
        return self._css

    @css.setter
    def css(self, css: str) -> None:
        modsel.parse(css)  # a bad stylesheet fails here, with the caret, not during a run
        self._css = css

    @property
    def strategy(self) -> str:
        """How several processes (``torchrun``) train: ``"ddp"`` (the default: each rank holds
        the whole model, ``DistributedDataParallel``, options in ``l.ddpKwargs``) or ``"fsdp"``
        (FSDP2: each rank holds a shard of the parameters, gradients and optimizer state; the
        modules ``l.css`` gives the prop ``shard`` are the units gathered one at a time, e.g.
        ``l.css = "LlamaDecoderLayer: shard, checkpoint"``; ``fully_shard`` options in
        ``l.fsdpKwargs``, the initialisation of a model built on ``meta`` in ``l.fsdpInit``;
        see ``k1lib/_fsdp.py``). In one process neither changes anything."""
        return self._strategy

    @strategy.setter
    def strategy(self, strategy: str) -> None:
        self._strategy = _fsdp.check_strategy(strategy)

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

    def check_ready(self) -> None:
        """Raise naming what ``run`` needs and is not set (``lossF`` may stay None for a model
        whose output carries its loss)."""
        missing = [
            (name, how)
            for name, how in (
                ("model", "l.model = Network()"),
                ("data", "l.data = k1lib.data.Data.fromDataset(dataset, batchSize=64)"),
                ("opt", "l.opt = optim.Adam(l.model.parameters(), lr=1e-3)"),
                ("lossF", "l.lossF = lambda y, yb: ((y - yb) ** 2).mean()  # or a model that returns .loss"),
            )
            if getattr(self, name) is None
        ]
        if [name for name, _ in missing] == ["lossF"]:
            missing = []  # the output may carry its own loss: found out at the first batch
        if missing:
            lines = "\n".join(f"  {how}" for _, how in missing)
            names = ", ".join(name for name, _ in missing)
            raise RuntimeError(f"Learner.run: {names} not set; set them first, e.g.\n{lines}")
        self.check_optimizer("Learner.run")

    def check_optimizer(self, doing: str = "Learner.run") -> None:
        """Raise ``RuntimeError`` when ``l.opt`` holds tensors that are not parameters of
        ``l.model``: an optimizer built before ``l.model`` was set again (a notebook cell run
        twice) steps the old model's tensors, and the run would train nothing, silently. An
        optimizer over some of the model's parameters is fine, and so is a model wrapped by
        ``torch.compile`` or DDP after ``l.opt`` was built (the wrapper holds the same
        parameters). ``doing`` starts the message. One set of ids: microseconds a run."""
        opt, model = self.opt, self.model
        if opt is None or model is None:
            return
        ours = {id(p) for p in model.parameters()}
        held = [p for group in opt.param_groups for p in group["params"]]
        foreign = sum(id(p) not in ours for p in held)
        if not foreign:
            return
        if foreign == len(held):
            raise RuntimeError(
                f"{doing}: none of the {len(held)} tensors l.opt optimizes is a parameter of l.model: "
                "l.opt was built for another model (was l.model set again after l.opt?), so the run "
                "would leave l.model untrained. Rebuild it after setting l.model, e.g. "
                "l.opt = optim.Adam(l.model.parameters(), lr=1e-3)"
            )
        raise RuntimeError(
            f"{doing}: {foreign} of the {len(held)} tensors l.opt optimizes are not parameters of "
            "l.model. A tensor trained alongside the model (a learnable loss weight or temperature) "
            "must be registered on it, e.g. l.model.temperature = nn.Parameter(...), so that "
            "checkpoints save it; otherwise l.opt was built for another model: rebuild it after "
            "setting l.model"
        )

    # ---- the loop (k1lib/_loop.py) ---------------------------------------------------------------
    @property
    def group(self) -> Group:
        """The processes of the current run, for callbacks: ``several``, ``average``, ``mean``
        agree across ranks under DDP and are identities in one process (and outside runs)."""
        return self._loop.group if self._loop is not None else _ALONE

    def run(self, epochs: int, batches: int | None = None) -> None:
        """Train for ``epochs`` epochs (``batches``: at most this many batches an epoch).

        Returns None, so a notebook cell ending in ``l.run(...)`` shows only the progress.
        Afterwards the model's train/eval mode is as before; after an exception in a callback,
        ``endRun`` has run and the exception names the callback and the event."""
        self._run(epochs, batches, local=False)

    def _run(self, epochs: int, batches: int | None, local: bool) -> Learner:
        self.check_ready()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"Learner.run: epochs must be an int, 0 or more, got {epochs!r}")
        if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 0):
            raise ValueError(f"Learner.run: batches must be an int, 0 or more, or None, got {batches!r}")
        assert self.model is not None
        _fsdp.check_initialised(self.model)
        _fsdp.reshard(self.model)  # after a forward outside a run (predict): the shards again
        model, was_training, phase = self.model, self.model.training, self.training
        group = _distributed.group_for(self, local=local) or _ALONE
        if group.several:
            self._shard_agreed(group)
        outer, self._loop = self._loop, Loop(self, group)
        try:
            self.epochs = epochs
            self.batches = group.batches_an_epoch(self.data, batches)
            checkpointed = self.css_checkpointed()
            _act_checkpoint.warn_if_none(checkpointed, self._css, "l.css")
            frozen = self._freeze_selected()  # from here on, the finally below gives them back
            try:
                with _act_checkpoint.wrapping(checkpointed):  # forwards back on the way out
                    self._loop.run(epochs, batches)
            finally:
                for param, flag in frozen:
                    param.requires_grad_(flag)
        finally:
            self._loop = outer
            self.training = phase
            model.train(was_training)
            _fsdp.reshard(model)  # FSDP keeps the root unit gathered after validation
        return self

    def _shard_agreed(self, group: Group) -> None:
        """``shard`` on every rank, then agree: a rank that failed (its ``fsdpInit`` raised)
        stops every rank, before the run. Warn when the model is sharded already along other
        units than ``l.css`` gives now (they stay as they are)."""
        if self._strategy == "fsdp" and _fsdp.is_sharded(self.model):
            assert self.model is not None
            now = sorted(path for path, _ in _fsdp.shard_units(self))
            if now != sorted(_fsdp.sharded_paths(self.model)):
                from ._warn import warn

                warn(
                    "l.strategy = 'fsdp': l.model was sharded in an earlier run along other units than "
                    f"l.css gives now ({now}); a sharded model keeps its units: build it again to change them"
                )
        try:
            self.shard()
        except BaseException as e:
            group.hold(e, "sharding l.model")
        try:
            group.agree("startRun")
        except BaseException:
            if _fsdp.is_sharded(self.model):  # changed here, failed somewhere: on every rank
                assert self.model is not None
                _fsdp.mark_broken(self.model)
            raise

    def shard(self) -> bool:
        """With ``l.strategy = "fsdp"`` in several processes: shard ``l.model`` now (``run``
        and ``load`` do it when needed; a model built on ``meta`` is materialised here) and
        move ``l.opt`` onto the shards; True when it did. A collective: call it on every rank."""
        if self._strategy != "fsdp" or self.model is None or _fsdp.is_sharded(self.model):
            return False
        _distributed.init_from_environment()
        if self.worldSize == 1:
            return False
        self.check_optimizer("sharding l.model")
        return _fsdp.shard(self)

    def _freeze_selected(self) -> list[tuple[nn.Parameter, bool]]:
        """Freeze ``css_frozen()`` for the run; returns what to restore afterwards."""
        saved = [(param, param.requires_grad) for param in self.css_frozen()]
        for param, _ in saved:
            param.requires_grad_(False)
        return saved

    def css_frozen(self) -> list[nn.Parameter]:
        """The parameters ``run`` freezes: those of modules whose props name ``frozen``
        (explicitly: ``all`` does not count here), each once. Outside a run their
        ``requires_grad`` is the user's; LossLandscape leaves them out of "trainable"."""
        if "frozen" not in self._css or self.model is None:
            return []
        found: dict[int, nn.Parameter] = {}
        covered: set[int] = set()  # nodes at or below a frozen one: their parameters are in
        for node in self.moduleSelector.modules():  # pre-order: a node's parent comes first
            if id(node.parent) in covered:
                covered.add(id(node))
            elif "frozen" in node.props:
                covered.add(id(node))
                for param in node.parameters():  # modsel's walk: no recursion on deep models
                    found.setdefault(id(param), param)
        return list(found.values())

    def css_checkpointed(self) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of the modules ``run`` checkpoints: those whose props name
        ``checkpoint`` (explicitly: ``all`` does not count) and that are inside no other such
        module, each once (see ``k1lib/_act_checkpoint.py``)."""
        if _act_checkpoint.PROP not in self._css or self.model is None:
            return []
        return _act_checkpoint.checkpointed_modules(self.moduleSelector)

    def record(self, epochs: int, batchesPerEpoch: int) -> tuple[list[Any], list[Any], list[Any]]:  # noqa: N803
        """Run without training and return the batches seen and the outputs: ``xbs, ybs, ys``.
        Callbacks that record (Loss, ...) are suspended; the learner is as before afterwards.
        Under DDP too, each rank runs all batches on its own."""
        return record(self, lambda: self._run(epochs, batchesPerEpoch, local=True))

    def fields(self) -> dict[str, Any]:
        """The run's fields (``epoch``, ``batch``, ``xb``, ``loss``, ``training``, ...), for a
        callback that runs the learner itself (ParamFinder) to put them back afterwards."""
        return {k: getattr(self, k) for k in _FIELDS}

    def restore_fields(self, fields: dict[str, Any]) -> None:
        """Put back what ``fields`` returned."""
        for k, v in fields.items():
            setattr(self, k, v)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint: the state_dicts of the model, the optimizer and each callback, the
        css and the epoch (``torch.save`` to a temporary file, renamed into place).

        A model sharded by FSDP (``l.strategy = "fsdp"``, after its first run): call it on
        EVERY rank (called on rank 0 alone it waits for the others until the process group's
        timeout); it writes a directory, each rank its shards (``k1lib/_sharded_checkpoint.py``),
        which loads on any number of ranks, or in one process into the plain model, and of
        which ``k1lib.consolidate`` makes one file of the model's weights. Otherwise, with
        several processes only rank 0 writes (call it on rank 0 alone or on every rank); to
        ``load`` on the others, wait for the file first (``torch.distributed.barrier()``)."""
        from ._checkpoint import checkpoint_of, write

        if _fsdp.is_sharded(self.model):
            from . import _sharded_checkpoint

            _sharded_checkpoint.save(self, path)
            return
        if Path(path).is_dir():
            from ._checkpoint import CheckpointError

            raise CheckpointError(
                f"{os.fspath(path)!r} is a directory (a sharded checkpoint?); l.model is not sharded, "
                "so l.save writes one file: give a file name"
            )
        checkpoint = checkpoint_of(self)
        if self.rank == 0:
            write(checkpoint, path)

    def load(self, path: str | os.PathLike[str]) -> Learner:
        """Restore what ``save`` wrote (``torch.load(weights_only=True)``): a resumed run
        continues as the saved one would have. A sharded checkpoint (a directory) loads on any
        number of ranks: with ``l.strategy = "fsdp"`` under torchrun the model is sharded first
        (a collective: call it on every rank; a model built on ``meta`` is materialised), else
        into the plain model. A single file loads into a model not sharded yet (before the
        first run; the run then shards it, the optimizer's state too)."""
        from . import _sharded_checkpoint
        from ._checkpoint import CheckpointError, load

        name = os.fspath(path)
        if _sharded_checkpoint.is_checkpoint(path):
            _fsdp.check_initialised(self.model)
            _fsdp.reshard(self.model)
            self.shard()
            self._check_not_meta(name, sharded=True)
            _sharded_checkpoint.load(self, path)
            return self
        self._check_not_meta(name, sharded=False)
        if _fsdp.is_sharded(self.model) and not Path(path).exists():
            raise CheckpointError(f"{name!r} does not exist")
        if _fsdp.is_sharded(self.model):
            raise CheckpointError(
                f"{os.fspath(path)!r} is one file, and l.model is sharded (FSDP): load a sharded "
                "checkpoint (a directory l.save wrote under FSDP), or load this file before the "
                "first run (l.run shards the model and the optimizer's state then)"
            )
        load(self, path)
        return self

    def _check_not_meta(self, name: str, sharded: bool) -> None:
        """Refuse to load into a model on the meta device that is not sharded (it would load
        nothing into it); ``sharded``: whether ``name`` is a sharded checkpoint."""
        from ._checkpoint import CheckpointError

        model = self.model
        if model is None or _fsdp.is_sharded(model):
            return
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return
        if not sharded and not Path(name).exists():
            raise CheckpointError(f"{name!r} does not exist")
        if not sharded and self._strategy == "fsdp" and self.worldSize > 1:
            raise CheckpointError(
                f"loading {name!r}: it is one file, and l.model is on the meta device: a model on meta "
                "loads a sharded checkpoint (a directory l.save wrote under FSDP), which l.load shards "
                "and materialises it for; to load a file, build the model on the CPU"
            )
        raise CheckpointError(
            f"loading {name!r}: l.model is on the meta device (no memory to load into). Under "
            "torchrun with l.strategy = 'fsdp', l.load of a sharded checkpoint shards and "
            "materialises it first; in one process, build the model on the CPU"
        )

    def predict(self, loader: Iterable[Any] | None = None) -> Predictions:
        """The model's outputs and the targets over ``loader`` (default: the validation loader),
        in eval mode without autograd, each batch shaped as in training (Device, DType,
        ModifyBatch, ModifyOutput, Autocast) and nothing recorded (Loss, HookModule, ... are
        suspended): ``outputs, targets = l.predict()``, tensors concatenated along dim 0 (see
        ``k1lib._predict.Predictions``). The learner, the model's mode and the random
        generators are as before afterwards, also after an exception."""
        from ._predict import predict

        return predict(self, loader)

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
