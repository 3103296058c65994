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
  before backward, who have run their forward and loss. An exchange is seven integers on a
  CPU ``gloo`` group of their own: no device sync.
- The agreement before backward rides on the gradients' first all-reduce where it can (a
  model on the CPU, in the DDP the Learner makes, from the first training batch after DDP
  rebuilt its buckets to the end of the epoch's training batches; ``_Rider``): a rank with a
  backward pass to run starts it at once and sends its state ahead of bucket 0's gradients,
  in their all-reduce; a rank with something to settle sends its state ahead of zeros. When
  every rank goes on, that is DDP's own all-reduce: the agreement costs no exchange of its
  own (on a small model one costs as much as the all-reduce). When one stops, the others
  keep their buckets local, put their gradients back as they were before backward (None
  after ``zero_grad``, a copy inside an accumulation group), count the pass as undone
  (``OptimizerStep.unwind``: HookModule then records no gradients for the batch, as on the
  rank that stopped) and agree as anywhere else. Meanwhile every other exchange of the run starts with one
  of the same shape on the model's group, so that ranks out of step still see it. On a CUDA
  model, and with a DDP the user made, the agreement stays before backward.
- This class is the loop's ``Group`` (``k1lib/_group.py``): the loop (``k1lib/_loop.py``) is
  the same code in one process, where holding raises at once and agreeing does nothing.
- Every exchange starts with the same header (what it is for, and how many optimizer steps
  and ``zero_grad``s this rank took), so ranks that are out of step (one at ``endRun``, one
  before ``backward``; one that skipped a step the others took) see it and raise a clear error
  instead of pairing unrelated collectives, hanging or drifting apart; the session then makes
  no more collectives. Riding, the header goes as counts, with the steps taken modulo 3 (a
  batch puts ranks 1 or 2 apart at most); the exact numbers come from the control group.

What cannot be agreed: a failure inside a collective itself (an out-of-memory error in
``backward`` on one rank, once its all-reduces began) leaves the other ranks in DDP's
all-reduce until its timeout; ``torchrun`` ends the other processes when one exits with an
error. Riding, a backward pass that fails before its first all-reduce is agreed as an error.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from ._fsdp import is_sharded
from ._group import Group
from .callbacks.callback import (
    EVENTS,
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelRunException,
)

if TYPE_CHECKING:
    from torch._C._distributed_c10d import GradBucket

    from ._learner import Learner
    from ._step import OptimizerStep
    from .callbacks.callbacks import Callbacks

__all__ = [
    "OutOfStepError",
    "Session",
    "batches_per_rank",
    "group_for",
    "init_from_environment",
    "initialized",
    "rank",
    "world_size",
]

_LEVELS: tuple[type[CancelException], ...] = (CancelBatchException, CancelEpochException, CancelRunException)
_ERROR = len(_LEVELS) + 1
# what an exchange is for (its header's kind): the events, drawing an epoch's order,
# averaging losses and a callback's own collective (``align``)
_KINDS = {name: i + 1 for i, name in enumerate((*EVENTS, "seed", "average", "combine"))}
_KIND_NAMES = {kind: name for name, kind in _KINDS.items()}
# the agreement points inside a batch: riding (``_Rider``), their exchange is the riding one alone
_IN_BATCH = (_KINDS["startPass"], _KINDS["startBackward"])
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


def initialized() -> bool:
    """Whether a process group is initialised (torch.distributed available and set up)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the default group; before one is initialised, what ``torchrun`` asks for
    (``WORLD_SIZE``), else 1."""
    if initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (``RANK`` before the group is initialised; 0 in one process)."""
    if initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def group_for(learner: Learner, local: bool = False) -> Session | None:
    """A session for a run when this process is one of several, else None (also when
    ``local``: ``Learner.record`` trains nothing and runs each rank on its own)."""
    if local:
        return None
    init_from_environment()
    if not initialized() or dist.get_world_size() == 1:
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
    if initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
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
    if initialized():
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
        # riding on the gradients' all-reduce (see ``_Rider``): set by ``wrap`` when it can
        self.rider: _Rider | None = None

    # ---- the model ------------------------------------------------------------------------------
    def wrap(self) -> None:
        """Put the model in DDP for the run (its constructor sends rank 0's weights to all)."""
        learner = self.learner
        model = learner.model
        assert model is not None
        if isinstance(model, nn.parallel.DistributedDataParallel) or is_sharded(model):
            return  # the user's DDP, or FSDP (``l.strategy = "fsdp"``: sharded before the run)
        if not any(p.requires_grad for p in model.parameters()):
            return  # nothing trains, nothing to all-reduce (and DDP refuses such a model)
        devices = {p.device for p in model.parameters()}
        single = next(iter(devices)) if len(devices) == 1 else None
        ids = [single] if single is not None and single.type != "cpu" else None
        self._original = model
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, **learner.ddpKwargs)
        learner.model = ddp
        if single is not None and single.type == "cpu" and not ddp.find_unused_parameters:
            # find_unused_parameters all-reduces which parameters took part, outside the hook
            self.rider = _Rider(self, ddp)
            ddp.register_comm_hook(self.rider, _rider_hook)

    def unwrap(self) -> None:
        if self.rider is not None:
            # the DDP holds its comm hook's state (the rider): without this the two hold each
            # other, and the run's DDP, with its autograd hooks on the parameters, outlives it
            # (a reducer left waiting for a backward then all-reduces in a later run, alone)
            self.rider.release()
            self.rider = None
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
        if is_sharded(model):
            return False  # FSDP's forward gathers the parameters
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

    def agree_before_backward(
        self, skip: bool, ended: bool, backward: Callable[[], None] | None = None
    ) -> tuple[bool, bool, bool]:
        """Training (autograd on): no rank goes into backward's all-reduce alone. Riding on
        the gradients (``_Rider``), a rank with a ``backward`` to run runs it at once and
        the ranks agree in its first all-reduce; else they agree here, before it.
        Validation: a batch cancel held here is this rank's alone; anything else waits for
        the next agreement (the next batch's start, or the next event)."""
        held = self.held
        if not torch.is_grad_enabled():
            if isinstance(held, CancelBatchException) and not getattr(held, "_k1lib_escapes", False):
                raise self._take()[0]  # type: ignore[misc]
            return skip, ended, False
        rider = self.rider
        riding = rider is not None and not self.broken and self.steps is not None and rider.start()
        if riding and backward is not None and held is None:
            return self._ride(backward)
        return (*self.agree("startBackward", skip, ended), False)

    def _ride(self, backward: Callable[[], None]) -> tuple[bool, bool, bool]:
        """Run ``backward`` while the ranks agree in its first all-reduce (``_Rider``); returns
        as ``agree_before_backward``. When some rank stops (it sent a cancel, an error, a skip
        or an ended loader instead of a backward pass), the gradients are put back as they
        were before it and the agreement goes on as at any other point."""
        rider, steps = self.rider, self.steps
        assert rider is not None and steps is not None
        saved = rider.save()
        failed: BaseException | None = None
        try:
            rider.sending = rider.encode(_KINDS["startBackward"])
            backward()
        except BaseException as e:  # agreed below
            failed = e
        finally:
            sent, rider.sending = rider.sending is None, None
        if not sent:  # it failed before its all-reduce (or made none): agree without it
            return self._unsent(saved, failed)
        if rider.received is None and rider.first is not None:
            # backward raised after sending bucket 0 but before its answer came: wait for it
            with contextlib.suppress(Exception):
                rider.first.wait()
        received, rider.received = rider.received, None
        if received is None:  # the all-reduce itself failed: nothing can be agreed
            assert failed is not None
            if isinstance(failed, CancelException):  # not this rank's alone: the others went on
                raise RuntimeError(
                    f"{type(failed).__name__} raised in backward after its gradients' all-reduce "
                    "began, which the ranks cannot agree on; DDP cannot be used again in this "
                    "process after a backward broken off"
                ) from failed
            raise failed
        if not rider.stops(received):
            if failed is not None:  # after the all-reduce began: as a failure after backward
                learner = self.learner
                self.hold(failed, f"in batch {learner.batch} of epoch {learner.epoch}, after backward")
            return False, False, True
        rider.restore(saved)
        if failed is None:
            steps.unwind()
        top, most, any_ended = self._check(_KINDS["startBackward"], received)
        skip, ended = self._resolve(None, 0, "startBackward", top, most, any_ended)
        if failed is not None:
            self.hold(failed, f"in backward ({self._position()})")
        return skip, ended, False

    def _unsent(
        self, saved: list[tuple[torch.Tensor, torch.Tensor | None]], failed: BaseException | None
    ) -> tuple[bool, bool, bool]:
        """``_ride`` when the backward pass sent nothing: it failed before its first all-reduce
        (agreed as an error of this rank), or DDP made none (``no_sync``: its gradients are
        kept unless some rank stops)."""
        rider, steps = self.rider, self.steps
        assert rider is not None and steps is not None
        if failed is not None:
            rider.restore(saved)
            self.hold(failed, f"in backward ({self._position()})")
            return (*self.agree("startBackward"), False)
        if self._original is not None:
            # the Learner's DDP never runs under no_sync: a backward that made no all-reduce left
            # parameters of bucket 0 without gradient (unused): stop every rank, before any step
            rider.restore(saved)
            steps.unwind()
            self.hold(
                RuntimeError(
                    "a parameter took no part in the loss, so DDP's backward made no all-reduce "
                    "(DDP needs find_unused_parameters=True for such a model)"
                ),
                f"in backward ({self._position()})",
            )
            return (*self.agree("startBackward"), False)
        try:
            skip, ended = self.agree("startBackward")
        except BaseException:
            rider.restore(saved)
            steps.unwind()
            raise
        if skip or ended:
            rider.restore(saved)
            steps.unwind()
            return skip, ended, False
        return False, False, True

    def fire(self, cbs: Callbacks, event: str) -> None:
        """Every handler runs (one may exchange with the other ranks), then what any rank
        raised, here or held before, is agreed and raised on every rank."""
        failed = cbs.collect(event)[1]
        held, where = self._take()
        self.settle(held or failed, event, where=where if held is not None else "")

    def batches_in(self, loader: Any) -> int:
        return batches_per_rank(loader)

    def align(self, what: str) -> None:
        if not self.broken:
            self._header(_KINDS[what])

    def watch(self, steps: OptimizerStep) -> None:
        self.steps = steps

    # ---- agreement ------------------------------------------------------------------------------
    def _header(
        self, kind: int, level: int = 0, value: int = 0, ended: bool = False
    ) -> tuple[int, int, bool]:
        """Exchange (level, value, ended, kind, optimizer steps) with every rank: the largest
        level and value, and whether any rank ended; an ``OutOfStepError`` when the ranks are
        at different kinds of exchange or have taken different optimizer steps. While the
        ranks ride on the gradients' all-reduce (``_Rider``), a rank may be in a backward
        pass's all-reduce on the model's group: every exchange then starts there, with the
        same shape; in a batch that is the whole exchange."""
        rider = self.rider
        if rider is not None and rider.riding:
            received = rider.exchange(rider.encode(kind, level, bool(value), ended))
            checked = self._check(kind, received)
            if kind in _IN_BATCH:
                return checked
        return self._control_header(kind, level, value, ended)

    def _check(self, kind: int, received: torch.Tensor) -> tuple[int, int, bool]:
        """(level, value, ended) of what every rank sent riding (``_Rider.decode``); an
        ``OutOfStepError`` as ``_header`` says (the exact step counts from the control group)."""
        assert self.rider is not None
        top, most, any_ended, same_kind, same_steps = self.rider.decode(received)
        if kind in _IN_BATCH:
            self.rider.leave(top, any_ended)
        if not same_kind:
            self._out_of_step(kind)
        if not same_steps and top < _ERROR:
            self._control_header(kind, top, most, any_ended)  # raises, saying how many
        return top, most, any_ended

    def _control_header(
        self, kind: int, level: int = 0, value: int = 0, ended: bool = False
    ) -> tuple[int, int, bool]:
        """``_header`` on the control group."""
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
        return self._resolve(held, level, at, top, most, any_ended, where)

    def _resolve(
        self,
        held: BaseException | None,
        level: int,
        at: str,
        top: int,
        most: int,
        any_ended: bool,
        where: str = "",
    ) -> tuple[bool, bool]:
        """What ``settle`` does once the ranks exchanged: ``top`` the most serious level, ``most``
        the largest value, ``any_ended``; this rank's ``held`` at ``level``."""
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


class _Rider:
    """The agreement before backward, riding on the first all-reduce of the gradients (DDP's
    bucket 0) instead of an exchange of its own, which costs as much as that all-reduce on a
    small model: a DDP comm hook (``_rider_hook``) that ``Session.wrap`` registers on the DDP
    it makes, for a model on the CPU (its gradients go through gloo: reading what the ranks
    sent needs no device sync) with ``float32`` or ``float64`` gradients (the counts it sums
    are exact in them).

    A rank with a backward pass to run runs it at once; the hook sends the rank's state (as
    counts: ``encode``) ahead of bucket 0's gradients, in the same all-reduce. A rank with
    nothing to run (a cancel or error held, a skip, an ended loader) sends its state ahead of
    zeros of bucket 0's shape, so every rank makes the same all-reduce. When every rank goes
    on, bucket 0 is the mean of the gradients as DDP's own all-reduce gives it; when one
    stops, the hook keeps every bucket local (no collective: no rank waits for one that has
    stopped), and ``Session._ride`` puts the gradients back as they were before backward.

    It rides from the first training batch after DDP rebuilt its buckets (the same batch on
    every rank: batches agree before their forward pass until then), so that bucket 0 keeps
    its shape, to the end of the epoch's training batches (``leave``: the events and
    validation agree on the control group alone). Meanwhile a rank may be waiting in that
    all-reduce on the model's group: so every other exchange (one a callback makes inside a
    batch, an event after a failure) starts with one of the same shape there, carrying what it
    is for, and ranks out of step still pair their exchanges and see it (``Session._check``).
    Not with ``find_unused_parameters`` (DDP then all-reduces which parameters took part,
    before the buckets)."""

    # what each rank sends, as counts summed over the ranks: the kind of exchange (one-hot),
    # the level held (one-hot, 1 to 4), value (skip), ended, and the optimizer steps taken
    # modulo 3 (one-hot: ranks apart by 1 or 2 steps, as one batch can make them, differ)
    _LEVEL = len(_KINDS)
    _VALUE = _LEVEL + _ERROR
    _ENDED = _VALUE + 1
    _STEPS = _ENDED + 1
    SIZE = _STEPS + 3

    def __init__(self, session: Session, ddp: nn.parallel.DistributedDataParallel) -> None:
        self.session = session
        self.ddp = ddp
        self.group = ddp.process_group
        self.params = [p for p in ddp.module.parameters() if p.requires_grad]
        # what one all-reduce sends: the state, then bucket 0 (made once DDP rebuilt its buckets)
        self.both: torch.Tensor | None = None
        self.usable = True
        self.riding = False  # in training batches, from the first after the rebuild
        self.sending: torch.Tensor | None = None  # this rank's state, for the hook to send
        self.received: torch.Tensor | None = None  # what every rank sent, summed
        self.stopped = False  # some rank stopped this backward: the buckets stay local
        self.first: torch.futures.Future[torch.Tensor] | None = None  # bucket 0's, this backward

    def release(self) -> None:
        """Let go of the DDP and the buffers (the run is over)."""
        self.ddp, self.both, self.first, self.received, self.sending = None, None, None, None, None  # type: ignore[assignment]
        self.params = []

    def start(self) -> bool:
        """At each training batch's agreement before backward: whether the ranks ride (from
        the first batch after DDP rebuilt its buckets on, until the batches end: ``leave``)."""
        if self.both is None and self.usable and getattr(self.ddp, "_has_rebuilt_buckets", False):
            first = self.ddp.reducer._get_zeros_like_grad_buckets()[0].buffer()
            if first.dtype in (torch.float32, torch.float64):  # counts are exact in them
                self.both = torch.zeros(self.SIZE + first.numel(), dtype=first.dtype)
            else:
                self.usable = False
        self.riding = self.both is not None
        return self.riding

    def leave(self, top: int, ended: bool) -> None:
        """After an exchange in a batch: the ranks stop riding when they leave the training
        batches (an ended loader, a cancelled epoch or run, an error), so that the events
        and validation agree on the control group alone, as before the rebuild."""
        if top > 1 or ended:
            self.riding = False

    def encode(self, kind: int, level: int = 0, value: bool = False, ended: bool = False) -> torch.Tensor:
        assert self.both is not None
        steps = self.session.steps
        state = torch.zeros(self.SIZE, dtype=self.both.dtype)
        state[kind - 1] = 1
        if level:
            state[self._LEVEL + level - 1] = 1
        state[self._VALUE] = float(value)
        state[self._ENDED] = float(ended)
        state[self._STEPS + (steps.taken if steps is not None else 0) % 3] = 1
        return state

    def decode(self, received: torch.Tensor) -> tuple[int, int, bool, bool, bool]:
        """(highest level, any value, any ended, one kind, one step count) of the summed states."""
        counts = received.tolist()
        levels = counts[self._LEVEL : self._VALUE]
        top = max((i + 1 for i, n in enumerate(levels) if n), default=0)
        kinds = sum(1 for n in counts[: self._LEVEL] if n)
        steps = sum(1 for n in counts[self._STEPS :] if n)
        return top, int(counts[self._VALUE] > 0), counts[self._ENDED] > 0, kinds == 1, steps == 1

    def stops(self, received: torch.Tensor) -> bool:
        """Whether the backward pass stops here (anything but every rank going on)."""
        top, most, ended, same_kind, same_steps = self.decode(received)
        return bool(top or most or ended) or not (same_kind and same_steps)

    def exchange(self, state: torch.Tensor) -> torch.Tensor:
        """Send ``state`` without a backward pass (zeros for bucket 0); the states summed."""
        both = self.both
        assert both is not None
        both[: self.SIZE] = state
        both[self.SIZE :] = 0
        dist.all_reduce(both, group=self.group)
        return both[: self.SIZE].clone()

    def reduce(self, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
        """The comm hook: bucket 0 carries ``sending`` when set; the mean over the ranks as
        DDP's own all-reduce (each rank's gradients divided by the ranks, summed). The later
        buckets wait for bucket 0's answer (it came while their gradients were computed)."""
        buffer = bucket.buffer()
        world = self.session.world
        if bucket.index() == 0:
            self.stopped, self.first = False, None
            if self.sending is not None:
                state, self.sending = self.sending, None
                return self._first(state, buffer, world)
        if self.first is not None:
            self.first.wait()
        if self.stopped:
            return _done(buffer)
        buffer.div_(world)  # as DDP's own: divided by the ranks, then summed
        work = dist.all_reduce(buffer, group=self.group, async_op=True)
        assert work is not None
        mean: torch.futures.Future[torch.Tensor] = work.get_future().then(lambda f: f.value()[0])
        return mean

    def _first(
        self, state: torch.Tensor, buffer: torch.Tensor, world: int
    ) -> torch.futures.Future[torch.Tensor]:
        """Bucket 0 with this rank's ``state`` ahead of it, in one all-reduce; when it is done,
        ``received`` and ``stopped`` are set, and the bucket is the mean unless stopped."""
        both = self.both
        assert both is not None
        both[: self.SIZE] = state
        torch.div(buffer, world, out=both[self.SIZE :])
        work = dist.all_reduce(both, group=self.group, async_op=True)
        assert work is not None

        def answered(_: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            self.received = both[: self.SIZE].clone()
            self.stopped = self.stops(self.received)
            if not self.stopped:
                buffer.copy_(both[self.SIZE :])
            return buffer

        self.first = work.get_future().then(answered)
        return self.first

    def save(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """The gradients before a backward pass: nothing to copy where they are None (after
        ``zero_grad``), a copy where they are kept (gradient accumulation)."""
        return [(p, None if p.grad is None else p.grad.clone()) for p in self.params]

    def restore(self, saved: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        for p, grad in saved:
            if grad is None:
                p.grad = None
            elif p.grad is None:
                p.grad = grad
            else:
                p.grad.copy_(grad)


def _rider_hook(rider, bucket):  # type: ignore[no-untyped-def]
    """``_Rider``'s comm hook. Unannotated: DDP checks the annotations, and refuses the
    strings that ``from __future__ import annotations`` makes of them."""
    return rider.reduce(bucket)


def _done(tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(tensor)
    return future


class _End:
    pass


_END = _End()


def _is_sharded(loader: Any) -> bool:
    sampler = getattr(loader, "sampler", None)
    return isinstance(sampler, torch.utils.data.distributed.DistributedSampler)
