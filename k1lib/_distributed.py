"""Training in several processes with ``torch.distributed``: what ``Learner.run`` does when a
process group of more than one process is there (or ``torchrun``'s environment asks for one).

- The model is wrapped in ``DistributedDataParallel`` for the run (``l.ddpKwargs`` go to it;
  a model the user wrapped already is used as it is), and unwrapped afterwards.
- Each epoch's batches are dealt out: of every ``world`` consecutive batches a loader gives,
  rank ``r`` trains on the ``r``-th; a last incomplete group is dropped, so every rank runs the
  same number of batches (DDP's all-reduce needs that). A loader whose sampler is a
  ``DistributedSampler`` is already a shard: it gets ``set_epoch`` instead. Shuffled k1lib
  ``DataLoader``s and torch samplers that draw from a ``generator`` (``RandomSampler``,
  ``SubsetRandomSampler``, ``WeightedRandomSampler``) draw their order from a seed rank 0
  draws each epoch and sends to all: a new order every epoch, the same on every rank. Other
  loaders must give the same batches in the same order on every rank.
- Cancels and errors are agreed. A callback that cancels (or fails) on one rank must not leave
  the others waiting in DDP's all-reduce, so what each rank raised is held until the next
  *agreement point* and exchanged there: the most serious one (batch < epoch < run < error)
  is raised on every rank at once, with the message of the rank that raised it. The points:
  each event outside batches (``startRun``, ``startEpoch``, ..., whose handlers then all run
  even after one raised, so an exchange inside one, as Loss averaging at ``endEpoch``, is
  never skipped on one rank); just before ``backward`` in training; and just before the
  forward pass (after the batch is fetched and ``startBatch`` / ``startPass`` ran) when
  DDP's forward has collectives of its own (buffers to broadcast, the bucket rebuild early
  in a run, validation). Without those, a rank with something to settle (raised since the
  last agreement, a failed fetch, a loader at its end) skips its forward and meets the others
  before backward, who have run their forward and loss. One exchange of five integers a
  batch (two with buffers), on a CPU ``gloo`` group of their own: no device sync. This class
  is the loop's ``Group`` (``k1lib/_group.py``): the loop (``k1lib/_loop.py``) is the same
  code in one process, where holding raises at once and agreeing does nothing.
- Every exchange starts with the same header (what it is for, and how many optimizer steps
  and ``zero_grad``s this rank took), so ranks that are out of step (one at ``endRun``, one
  before ``backward``; one that skipped a step the others took) see it and raise a clear error
  instead of pairing unrelated collectives, hanging or drifting apart; the session then makes
  no more collectives.

What cannot be agreed: a failure inside a collective itself (an out-of-memory error in
``backward`` on one rank) leaves the other ranks in DDP's all-reduce until its timeout;
``torchrun`` ends the other processes when one exits with an error.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from ._group import Group
from .callbacks.callback import (
    EVENTS,
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelRunException,
)

if TYPE_CHECKING:
    from ._learner import Learner
    from ._step import OptimizerStep
    from .callbacks.callbacks import Callbacks

__all__ = [
    "OutOfStepError",
    "Session",
    "batches_per_rank",
    "group_for",
    "init_from_environment",
    "rank",
    "world_size",
]

_LEVELS: tuple[type[CancelException], ...] = (CancelBatchException, CancelEpochException, CancelRunException)
_ERROR = len(_LEVELS) + 1
# what an exchange is for (its header's kind): the events, drawing an epoch's order and
# averaging losses
_KINDS = {name: i + 1 for i, name in enumerate((*EVENTS, "seed", "average"))}
_KIND_NAMES = {kind: name for name, kind in _KINDS.items()}
# where an error was raised, by agreement point
_PHRASES = {
    "startPass": "starting the batch",
    "startBackward": "in the batch (before backward)",
}
_UNUSED = "k1lib: under DDP every parameter that requires a gradient must take part in the loss. "
_UNUSED_OURS = (
    _UNUSED + "Let DDP look for unused ones each step (slower) with "
    "l.ddpKwargs = {'find_unused_parameters': True}, or freeze the unused modules for the run "
    '(l.css = "#spare: frozen", with your module\'s name).'
)
_UNUSED_YOURS = (
    _UNUSED + "l.model is a DistributedDataParallel you made: make it with "
    "find_unused_parameters=True, or let the Learner wrap the plain model (l.model = model; "
    "l.ddpKwargs = {'find_unused_parameters': True}); l.css frozen props must be set before DDP is made."
)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the default group; before one is initialised, what ``torchrun`` asks for
    (``WORLD_SIZE``), else 1."""
    if _initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (``RANK`` before the group is initialised; 0 in one process)."""
    if _initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def group_for(learner: Learner, local: bool = False) -> Session | None:
    """A session for a run when this process is one of several, else None (also when
    ``local``: ``Learner.record`` trains nothing and runs each rank on its own)."""
    if local:
        return None
    init_from_environment()
    if not _initialized() or dist.get_world_size() == 1:
        return None
    return Session(learner)


def batches_per_rank(loader: Any) -> int:
    """The batches each rank runs from ``loader`` an epoch (TypeError when it has no length)."""
    size = len(loader)
    return size if _is_sharded(loader) else size // max(world_size(), 1)


def init_from_environment() -> bool:
    """Initialise the default process group when ``torchrun`` (or anything that sets its
    variables) asks for more than one process and none is initialised; True if it did.
    CUDA processes use ``nccl`` for CUDA tensors (on ``cuda:LOCAL_RANK``) and ``gloo`` for CPU
    ones; others ``gloo``."""
    if _initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 asks for several processes, but this torch has no torch.distributed"
        )
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for several processes, but {', '.join(missing)} "
            "is not set; launch with torchrun (torchrun --standalone --nproc_per_node=N script.py)"
        )
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if _initialized():
        dist.destroy_process_group()


# the control group of the current default group: made once, by every rank (new_group is a
# collective), the first time a run needs it
_control: tuple[Any, Any] | None = None


def _control_group() -> Any:
    global _control
    world = dist.group.WORLD
    if _control is None or _control[0] is not world:
        _control = (world, dist.new_group(backend="gloo"))
    return _control[1]


def _level(error: BaseException | None) -> int:
    if error is None:
        return 0
    if getattr(error, "_k1lib_escapes", False):
        return _ERROR  # a batch cancel raised where no batch is left (endBatch): ends the run
    for i, kind in enumerate(_LEVELS):
        if isinstance(error, kind):
            return i + 1
    return _ERROR


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class OutOfStepError(RuntimeError):
    """The ranks reached different exchanges: they run different code (one more epoch, a
    ParamFinder on rank 0 alone, ...)."""


class Session(Group):
    """One run's distributed state (see the module docstring): the loop's ``Group`` when this
    process is one of several."""

    several = True

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.held: BaseException | None = None
        self._where = ""
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.control = _control_group()
        self.broken = False  # after an out-of-step error: no more collectives
        self._buffers: bool | None = None  # whether the DDP model has buffers (found once)
        self._original: nn.Module | None = None
        self.steps: OptimizerStep | None = None

    # ---- the model ------------------------------------------------------------------------------
    def wrap(self) -> None:
        """Put the model in DDP for the run (its constructor sends rank 0's weights to all)."""
        learner = self.learner
        model = learner.model
        assert model is not None
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return
        if not any(p.requires_grad for p in model.parameters()):
            return  # nothing trains, nothing to all-reduce (and DDP refuses such a model)
        devices = {p.device for p in model.parameters()}
        single = next(iter(devices)) if len(devices) == 1 else None
        ids = [single] if single is not None and single.type != "cpu" else None
        self._original = model
        learner.model = nn.parallel.DistributedDataParallel(model, device_ids=ids, **learner.ddpKwargs)

    def unwrap(self) -> None:
        if self._original is not None:
            self.learner.model = self._original
            self._original = None

    def quiet_forward(self) -> bool:
        """Whether the next forward pass makes no collective, so that a training batch needs
        no agreement before it (the one before backward is enough: a rank with a cancel
        skips its forward). DDP's forward broadcasts buffers (BatchNorm's, unless
        ``broadcast_buffers=False``) and rebuilds its buckets once, after the first backward
        (the second with ``static_graph``): those need one. So does a callback that exchanges
        with the other ranks inside batches (``Callback.exchanges_in_batches``: ParamFinder's
        test), which every rank must reach."""
        learner = self.learner
        if not torch.is_grad_enabled():
            return False
        if any(cb.exchanges_in_batches and not cb.suspended for cb in learner.cbs):
            return False
        model = learner.model
        if isinstance(model, nn.parallel.DistributedDataParallel):
            if not getattr(model, "_has_rebuilt_buckets", False):
                return False  # not rebuilt yet (or a torch without the flag: assume not)
            if self._buffers is None:  # walks the module tree: once, not every batch
                self._buffers = any(True for _ in model.module.buffers())
            return not (model.broadcast_buffers and self._buffers)
        return True

    # ---- the loop's agreement points (``Group``) ---------------------------------------------
    def hold(self, error: BaseException, where: str = "") -> None:
        """Keep ``error`` (raised on this rank) for the next agreement; the loop does nothing
        more in this batch meanwhile."""
        if self.held is None:
            self.held, self._where = error, where

    def _take(self) -> tuple[BaseException | None, str]:
        held, where = self.held, self._where
        self.held, self._where = None, ""
        return held, where

    def agree(self, at: str, value: bool = False, ended: bool = False) -> tuple[bool, bool]:
        held, where = self._take()
        return self.settle(held, at, value, ended, where)

    def agrees_before_forward(self) -> bool:
        return not self.quiet_forward()

    def agree_before_backward(self, skip: bool, ended: bool) -> tuple[bool, bool]:
        """Training (autograd on): no rank goes into backward's all-reduce alone. Validation:
        a batch cancel held here is this rank's alone; anything else waits for the next
        agreement (the next batch's start, or the next event)."""
        if torch.is_grad_enabled():
            return self.agree("startBackward", skip, ended)
        if isinstance(self.held, CancelBatchException) and not getattr(self.held, "_k1lib_escapes", False):
            raise self._take()[0]  # type: ignore[misc]
        return skip, ended

    def fire(self, cbs: Callbacks, event: str) -> None:
        """Every handler runs (one may exchange with the other ranks), then what any rank
        raised, here or held before, is agreed and raised on every rank."""
        failed = cbs.collect(event)[1]
        held, where = self._take()
        self.settle(held or failed, event, where=where if held is not None else "")

    def batches_in(self, loader: Any) -> int:
        return batches_per_rank(loader)

    def watch(self, steps: OptimizerStep) -> None:
        self.steps = steps

    # ---- agreement ------------------------------------------------------------------------------
    def _header(
        self, kind: int, level: int = 0, value: int = 0, ended: bool = False
    ) -> tuple[int, int, bool]:
        """Exchange (level, value, ended, kind, optimizer steps) with every rank: the largest
        level and value, and whether any rank ended; an ``OutOfStepError`` when the ranks are
        at different kinds of exchange or have taken different optimizer steps."""
        taken = self.steps.taken if self.steps is not None else 0
        t = torch.tensor([level, value, int(ended), kind, -kind, taken, -taken], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        top, most, any_ended, high, negative_low, most_taken, negative_fewest = t.tolist()
        if high != -negative_low:
            self._out_of_step(kind)
        if most_taken != -negative_fewest and top < _ERROR:  # an error says more: it goes first
            self.broken = True
            raise OutOfStepError(
                f"the ranks took different optimizer steps ({-negative_fewest} to {most_taken} steps "
                "and zero_grads on some rank): a startStep or startZeroGrad handler returned True on "
                "some ranks only, so their models no longer match; under DDP, skip on every rank or none"
            )
        return int(top), int(most), bool(any_ended)

    def _out_of_step(self, kind: int) -> None:
        in_flight = sys.exc_info()[1]
        where = f"{_KIND_NAMES[kind]!r} ({self._position()})"
        if in_flight is not None:
            where += f" after {_describe(in_flight)}"
        seen: list[Any] = [None] * self.world
        dist.all_gather_object(seen, where, group=self.control)
        self.broken = True
        lines = "\n".join(f"  rank {r}: at {w}" for r, w in enumerate(seen))
        raise OutOfStepError(
            "the ranks are out of step: every rank must make the same calls in the same order "
            "(l.run with the same epochs, ParamFinder.run, callbacks that exchange with the other "
            f"ranks). Where each was:\n{lines}"
        )

    def _position(self) -> str:
        learner = self.learner
        return f"epoch {learner.epoch}, batch {learner.batch}"

    def settle(
        self, held: BaseException | None, at: str, value: bool = False, ended: bool = False, where: str = ""
    ) -> tuple[bool, bool]:
        """Agree at ``at`` (an event) on what each rank ``held`` (raised since the last
        agreement): raise the most serious on every rank, or return whether any rank's
        ``value`` is set (``startBackward`` asking to skip ``backward``) and whether any
        rank's loader ``ended``. ``where`` says where ``held`` was raised, for the others'
        message (default: before ``at``, in the current batch)."""
        if self.broken:
            if held is not None:
                raise held
            return value, ended
        level = _level(held)
        if level == _ERROR and "find_unused_parameters" in str(held):
            held.add_note(_UNUSED_OURS if self._original is not None else _UNUSED_YOURS)  # type: ignore[union-attr]
        top, most, any_ended = self._header(_KINDS[at], level, int(value), ended)
        if top == _ERROR:  # the run ends: a step it broke off (on some rank) is not a divergence
            self.steps = None
        if top == 0 or (top == 1 and any_ended):  # a batch cancel of a batch dropped anyway
            return bool(most), any_ended
        said: list[Any] = [None] * self.world
        where = where or f"{_PHRASES.get(at, f'in {at!r}')} ({self._position()})"
        dist.all_gather_object(said, (level, type(held).__name__, str(held), where), group=self.control)
        if held is not None and level == top:
            raise held
        source = min(r for r, (lv, *_) in enumerate(said) if lv == top)
        _, name, text, where = said[source]
        if top == _ERROR:
            what = f"{name}: {text}" if text else name
            raise RuntimeError(f"rank {source} failed {where} with {what}; every rank stops")
        raise _LEVELS[top - 1](f"{text} (on rank {source})")

    # ---- data -----------------------------------------------------------------------------------
    def batches(self, loader: Iterable[Any], epoch: int) -> Iterator[Any]:
        """This rank's share of ``loader``'s batches this epoch (see the module docstring)."""
        if _is_sharded(loader):
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            return iter(loader)
        return self._dealt(self._ordered(loader))

    def _dealt(self, batches: Iterator[Any]) -> Iterator[Any]:
        while True:
            group = list(itertools.islice(batches, self.world))
            if len(group) < self.world:
                return
            yield group[self.rank]

    def _ordered(self, loader: Iterable[Any]) -> Iterator[Any]:
        """``iter(loader)``, shuffled (where we know how) from a seed agreed with rank 0."""
        from .data import DataLoader

        holder: Any = None
        attribute = ""
        if isinstance(loader, DataLoader) and loader.shuffle:
            holder, attribute = loader, "_generator"
        elif isinstance(loader, torch.utils.data.DataLoader):
            # RandomSampler, SubsetRandomSampler, WeightedRandomSampler, ...: a sampler that
            # draws from its ``generator``, given directly or inside a batch_sampler
            samplers = (loader.sampler, getattr(loader.batch_sampler, "sampler", None))
            holder = next((s for s in samplers if hasattr(s, "generator")), None)
            attribute = "generator"
        if holder is None:
            return iter(loader)
        own = getattr(holder, attribute)
        generator = torch.Generator().manual_seed(self._seed(own))
        setattr(holder, attribute, generator)
        try:
            batches = iter(loader)
            # a RandomSampler draws its order when its first index is taken: take it now
            first = next(batches, _END)
        finally:
            setattr(holder, attribute, own)
        return batches if first is _END else itertools.chain([first], batches)

    def _seed(self, generator: torch.Generator | None) -> int:
        """A seed drawn from ``generator`` (torch's global one when None) on every rank,
        rank 0's sent to all: the loader's own random stream advances as in one process."""
        drawn = int(torch.randint(0, 2**62, (1,), generator=generator))
        if self.broken:
            return drawn
        self._header(_KINDS["seed"])
        t = torch.tensor([drawn], dtype=torch.int64)
        dist.broadcast(t, src=dist.get_global_rank(self.control, 0), group=self.control)
        return int(t)

    # ---- results --------------------------------------------------------------------------------
    def average(self, values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of ``values`` (1-d, on the CPU) by their ``keys`` (distinct
        ints, 0 or more: batch numbers), for every key some rank has, in key order; a rank
        without a key does not count in its mean (a batch cancelled there before its loss)."""
        if self.broken:
            return values[keys.argsort()]
        _, size, _ = self._header(_KINDS["average"], value=int(keys.max()) + 1 if len(keys) else 0)
        both = torch.zeros(2, size, dtype=torch.float64)
        both[0, keys] = values.double()
        both[1, keys] = 1
        dist.all_reduce(both, group=self.control)
        found = both[1] > 0
        return (both[0][found] / both[1][found]).to(values.dtype)

    def mean(self, value: float | None) -> float | None:
        """The mean over ranks of one number (None where a rank has none; None when no rank
        has one)."""
        values = torch.tensor([] if value is None else [value], dtype=torch.float64)
        averaged = self.average(values, torch.zeros(len(values), dtype=torch.long))
        return float(averaged[0]) if len(averaged) else None


class _End:
    pass


_END = _End()


def _is_sharded(loader: Any) -> bool:
    sampler = getattr(loader, "sampler", None)
    return isinstance(sampler, torch.utils.data.distributed.DistributedSampler)
