"""One rank of the 2-process DDP test (``test_distributed.py`` launches it with torchrun).

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py OUT

Each rank works in ``OUT/rank{r}`` (so Autosave's files show which rank wrote them), sends its
stdout to ``OUT/rank{r}/stdout.txt`` and runs the scenarios below in order, saving what the
test checks to ``OUT/rank{r}/results.pt``. The test process computes the single-process
reference itself.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import k1lib
from k1lib import Callback, CancelRunException

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_models


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 8)
        self.b = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x[:, None])))[:, 0]  # type: ignore[no-any-return]


class Unused(Net):
    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Linear(2, 2)  # never used in forward


def loss_f(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return ((y - yb) ** 2).mean()


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-2, 2, 480)
    return x, torch.sin(2 * x)


class Seen(Callback):
    """Keeps the x of every training batch, to check the shards."""

    def __init__(self) -> None:
        super().__init__()
        self.xbs: list[torch.Tensor] = []

    def startBatch(self) -> None:
        if self.learner.model.training:
            self.xbs.append(self.learner.xb.clone())


class Fail(Callback):
    """On rank 1 only: raise ``what`` at ``event`` of training batch ``at`` (``at=None``: at
    the first time the event fires)."""

    def __init__(self, event: str, at: int | None, what: BaseException) -> None:
        super().__init__()
        self.at, self.what, self.done = at, what, False
        setattr(self, event, self._maybe)

    def _maybe(self) -> None:
        learner = self.learner
        if learner.rank != 1 or self.done:
            return
        if self.at is None or (learner.model.training and learner.batch == self.at):
            self.done = True
            raise self.what


class WithNorm(Net):
    """With BatchNorm: DDP broadcasts its buffers in every training forward."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.norm(self.a(x[:, None]))))[:, 0]  # type: ignore[no-any-return]


def learner(model: nn.Module, batch_size: int = 20) -> Any:
    l = k1lib.Learner()
    l.model = model
    l.data = k1lib.data.Data.fromDataset(dataset(), batchSize=batch_size)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.05, momentum=0.9)
    l.lossF = loss_f
    for name in ("LossLandscape", "HookModule", "HookParam", "ParamFinder"):
        l.cbs.remove(name)
    return l


def train(rank: int) -> dict[str, Any]:
    torch.manual_seed(100 + rank)  # different on each rank: DDP sends rank 0's weights
    model = Net()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)  # the split of fromDataset: the same on both ranks
    l = learner(model)
    l.cbs.append(Seen())
    l.run(2)
    return {
        "initial": initial,
        "final": {k: v.clone() for k, v in l.model.state_dict().items()},
        "xbs": l.Seen.xbs,
        "train_x": l.data.train.x.clone(),
        "train": list(l.Loss.train),
        "valid": list(l.Loss.valid),
        "batches": l.batches,
        "model_type": type(l.model).__name__,
    }


def cancelled(rank: int, event: str, at: int) -> dict[str, Any]:
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(Fail(event, at, CancelRunException(f"rank 1 stops at {event}")))
    l.run(3)
    return {"train": list(l.Loss.train), "final": {k: v.clone() for k, v in l.model.state_dict().items()}}


def failed(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(Fail("endLoss", 2, ValueError("bad batch on rank 1")))
    try:
        l.run(1)
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None}


def unused(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    l = learner(Unused())
    try:
        l.run(1)
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e), "notes": getattr(e, "__notes__", [])}
    return {"type": None}


def plain_lists(rank: int) -> dict[str, Any]:
    """Lists of batches (no sampler, no length agreement needed): 7 batches deal 3 a rank."""
    torch.manual_seed(0)
    l = learner(Net())
    x, y = dataset()
    l.data = k1lib.data.Data(list(zip(x[:70].split(10), y[:70].split(10), strict=True)), [(x[:10], y[:10])])
    l.cbs.append(Seen())
    l.run(1)
    return {"batches": l.batches, "xbs": l.Seen.xbs}


def torch_loader(rank: int) -> dict[str, Any]:
    """A torch DataLoader with shuffle=True: the same order on both ranks, each epoch a new one."""
    torch.manual_seed(1000 + rank)  # the global generators differ: the order must still agree
    l = learner(Net())
    dataset_ = torch.utils.data.TensorDataset(*dataset())
    l.data = k1lib.data.Data(
        torch.utils.data.DataLoader(dataset_, batch_size=40, shuffle=True), [dataset_[:10]]
    )
    l.cbs.append(Seen())
    l.run(2)
    return {"xbs": l.Seen.xbs}


def param_finder(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.withParamFinder()
    suggestion = l.ParamFinder.run(samples=30)
    return {"suggestion": suggestion, "losses": len(l.ParamFinder.losses)}


def out_of_step(rank: int) -> dict[str, Any]:
    """Rank 0 runs 2 epochs, rank 1 one: both must raise, neither hang."""
    torch.manual_seed(0)
    l = learner(Net())
    try:
        l.run(2 if rank == 0 else 1)
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None}


class Flaky:
    """Batches of 10 samples; on rank 1 the 5th fails to load."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __iter__(self) -> Any:
        x, y = dataset()
        for i, (xb, yb) in enumerate(zip(x[:80].split(10), y[:80].split(10), strict=True)):
            if self.rank == 1 and i == 4:
                raise OSError("cannot read shard 4")
            yield xb, yb


def fetch_failure(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    l = learner(Net())
    l.data = k1lib.data.Data(Flaky(rank), [])
    try:
        l.run(1)
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None}


def uneven_data() -> Any:
    """Batches of 10 through a ``Shorter`` sampler: 24 on rank 0, 23 on rank 1; no validation."""
    dataset_ = torch.utils.data.TensorDataset(*dataset())
    loader = torch.utils.data.DataLoader(dataset_, batch_size=10, sampler=Shorter(dataset_, shuffle=False))
    return k1lib.data.Data(loader, [])


class Shorter(torch.utils.data.distributed.DistributedSampler):  # type: ignore[type-arg]
    """A DistributedSampler that gives rank 1 one batch fewer than rank 0."""

    def __iter__(self) -> Any:
        indices = list(super().__iter__())
        return iter(indices[:-10] if self.rank == 1 else indices)


def uneven(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    l = learner(Net())
    l.data = uneven_data()
    l.run(1)
    return {"trained": len(l.Loss.train), "final": {k: v.clone() for k, v in l.model.state_dict().items()}}


def accumulated(rank: int) -> dict[str, Any]:
    """GradAccumulation(2) on 5 batches a rank: 2 groups and a last one of 1, with plain SGD."""
    torch.manual_seed(0)
    model = Net()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    l = learner(model)
    l.opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = dataset()
    batches = list(zip(x[:100].split(10), y[:100].split(10), strict=True))
    l.data = k1lib.data.Data(batches, [])
    l.cbs.withGradAccumulation(2)
    l.cbs.append(Seen())
    l.run(1)
    return {
        "initial": initial,
        "xbs": l.Seen.xbs,
        "final": {k: v.clone() for k, v in model.state_dict().items()},
    }


def before_forward(rank: int, event: str, what: BaseException, at: int = 1) -> dict[str, Any]:
    """A cancel or error on rank 1 before its forward pass (DDP's forward has collectives:
    the bucket rebuild at batch 1, BatchNorm's buffers at every batch)."""
    torch.manual_seed(0)
    l = learner(WithNorm())
    l.cbs.append(Fail(event, at, what))
    raised = None
    try:
        l.run(1)
    except Exception as e:
        raised = f"{type(e).__name__}: {e}"
    return {"raised": raised, "train": list(l.Loss.train), "final": weights(l.model)}


def accumulating_cancel(rank: int) -> dict[str, Any]:
    """GradAccumulation(2), rank 1 cancelling batch 2 before its forward."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.withGradAccumulation(2)
    l.cbs.append(Fail("startBatch", 2, k1lib.CancelBatchException("not this one")))
    l.run(1)
    return {"train": list(l.Loss.train), "final": weights(l.model)}


def static_graph(rank: int) -> dict[str, Any]:
    """static_graph=True: DDP rebuilds its buckets in the third forward; rank 1 cancels
    batch 2 right before it."""
    torch.manual_seed(0)
    l = learner(Net())
    l.ddpKwargs = {"static_graph": True}
    l.cbs.append(Fail("startBatch", 2, k1lib.CancelBatchException("not this one")))
    l.run(1)
    return {"train": list(l.Loss.train), "final": weights(l.model)}


def clipped_step_cancel(rank: int) -> dict[str, Any]:
    """A cancel in startStep raised before GradClipping's handler: clipping still runs."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.withGradClipping(0.01)
    l.cbs.append(Fail("startStep", 4, CancelRunException("stop")))
    l.run(1)
    return {"final": weights(l.model)}


def end_batch_cancel(rank: int) -> dict[str, Any]:
    """A CancelBatchException in endBatch has no batch to cancel: it ends the run."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(Fail("endBatch", 3, k1lib.CancelBatchException("too late")))
    try:
        l.run(1)
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e)}
    return {"type": None}


class CancelBoth(Callback):
    """Every rank cancels training batch 4 before backward; rank 1's cancelBatch then ends the run."""

    def startBackward(self) -> None:
        if self.learner.model.training and self.learner.batch == 4:
            raise k1lib.CancelBatchException("both")

    def cancelBatch(self) -> None:
        if self.learner.rank == 1:
            raise CancelRunException("from cancelBatch")


def cancel_in_cancel_batch(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(CancelBoth())
    l.run(1)
    return {"train": list(l.Loss.train), "final": weights(l.model)}


def param_finder_uneven(rank: int) -> dict[str, Any]:
    """ParamFinder on loaders of 24 and 23 batches: the same test on both ranks."""
    torch.manual_seed(0)
    l = learner(Net())
    l.data = uneven_data()
    l.cbs.withParamFinder()
    return {"suggestion": l.ParamFinder.run(samples=60), "params": list(l.ParamFinder.params)}


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def after_backward(rank: int) -> dict[str, Any]:
    """A cancel in startStep on rank 1: the step is still taken on every rank."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(Fail("startStep", 3, CancelRunException("stop after this step")))
    l.run(1)
    return {"train": list(l.Loss.train), "final": weights(l.model)}


def epoch_end(rank: int) -> dict[str, Any]:
    """A cancel at endEpoch on rank 1 only, before Loss (which exchanges there) has run."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(Fail("endEpoch", None, CancelRunException("enough epochs")))
    l.run(3)
    return {"valid": list(l.Loss.epoch.valid), "epoch": l.epoch}


def low_loss(rank: int) -> dict[str, Any]:
    """CancelOnLowLoss(epochMode) on the mean over ranks of the validation loss."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.withCancelOnLowLoss(0.3, epochMode=True)
    l.run(20)
    return {"epochs": len(l.Loss.epoch.valid), "valid": list(l.Loss.epoch.valid)}


def loss_by_batch(rank: int) -> dict[str, Any]:
    """Rank 1 cancels batch 0 at endLoss before Loss records it: batch 0 is rank 0's alone."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(Fail("endLoss", 0, k1lib.CancelBatchException("skip")))
    l.run(1)
    return {"train": list(l.Loss.train)}


def save_on_rank_0(rank: int) -> dict[str, Any]:
    """The usual DDP idiom, rank 0 alone saving in a callback mid-run, then all loading."""
    torch.manual_seed(0)
    l = learner(Net())
    saved = []

    def save(cb: Callback) -> None:
        if cb.learner.rank == 0:
            cb.learner.save("mid-run.pth")
            saved.append(True)

    l.cbs.withCheckpoint("endBatch", save)
    l.run(1, batches=2)
    torch.distributed.barrier()
    l.load(str(Path("..", "rank0", "mid-run.pth")))
    return {"saved": len(saved), "epoch": l.epoch}


def recorded(rank: int) -> dict[str, Any]:
    torch.manual_seed(100 + rank)
    l = learner(Net())
    before = weights(l.model)
    xbs, _, _ = l.record(1, 3)
    return {
        "batches": len(xbs),
        "unchanged": all(torch.equal(v, before[k]) for k, v in weights(l.model).items()),
    }


def subset_sampler(rank: int) -> dict[str, Any]:
    torch.manual_seed(1000 + rank)
    l = learner(Net())
    dataset_ = torch.utils.data.TensorDataset(*dataset())
    sampler = torch.utils.data.SubsetRandomSampler(range(400))
    l.data = k1lib.data.Data(torch.utils.data.DataLoader(dataset_, batch_size=40, sampler=sampler), [])
    l.cbs.append(Seen())
    l.run(1)
    return {"xbs": l.Seen.xbs}


# ---- riding on the gradients' all-reduce: one rank stops while the others ran backward -----------


class Watch(Callback):
    """Keeps the x of every training batch, whether the agreement rode on the gradients'
    all-reduce, and the weights and gradients at the start and end of training batch ``at``
    (and at the end of the batch before it)."""

    order = 0

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.xbs: list[torch.Tensor] = []
        self.riding: list[bool] = []
        self.seen: dict[str, Any] = {}

    def _model(self) -> nn.Module:
        model = self.learner.model
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def _grads(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else p.grad.clone() for p in self._model().parameters()]

    def startBatch(self) -> None:
        learner = self.learner
        if learner.model.training:
            self.xbs.append(learner.xb.clone())
            if learner.batch == self.at:
                self.seen["start"] = (weights(self._model()), self._grads())

    def endBatch(self) -> None:
        learner = self.learner
        if not learner.model.training:
            return
        rider = getattr(learner.group, "rider", None)
        self.riding.append(rider is not None and rider.riding)
        if learner.batch in (self.at - 1, self.at):
            self.seen[f"end{learner.batch - self.at}"] = (weights(self._model()), self._grads())


class SkipOnRank1(Callback):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def startBackward(self) -> bool:
        learner = self.learner
        return bool(learner.rank == 1 and learner.model.training and learner.batch == self.at)


class LossFails:
    """The loss function, failing on rank 1 at its ``at``-th training call."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at + 1 and int(os.environ["RANK"]) == 1:
                raise ValueError("bad loss on rank 1")
        return loss_f(y, yb)


class ForwardFails(Net):
    """Fails in its ``at``-th training forward on rank 1."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at + 1 and int(os.environ["RANK"]) == 1:
                raise ValueError("bad forward on rank 1")
        return super().forward(x)


def riding(rank: int, case: str) -> dict[str, Any]:
    """Training batch 4 (the agreement rides on the gradients' all-reduce from batch 1 on) stops
    on rank 1 after rank 0 ran its backward: a cancel at endLoss, a skip at startBackward, an
    error in the loss or in the model's forward (skip and loss with several buckets: the ones
    after the first stay local); ``accumulated``: the cancel in batch 5, in the middle of a
    GradAccumulation(2) group, with gradients that are views of DDP's buckets; ``own_ddp``:
    the cancel with a DDP made by the user."""
    torch.manual_seed(0)
    at = 5 if case == "accumulated" else 4
    model = ForwardFails(at) if case == "forward" else Net()
    initial = weights(model)
    l = learner(model)
    x, y = dataset()
    l.data = k1lib.data.Data(list(zip(x[:320].split(20), y[:320].split(20), strict=True)), [])
    watch = Watch(at)
    l.cbs.append(watch)
    if case in ("cancel", "accumulated", "own_ddp"):
        l.cbs.append(Fail("endLoss", at, k1lib.CancelBatchException("not this one")))
    if case == "accumulated":
        l.cbs.withGradAccumulation(2)
        l.ddpKwargs = {"gradient_as_bucket_view": True}  # gradients put back inside the bucket
    if case == "skip":
        l.cbs.append(SkipOnRank1(at))
    if case in ("skip", "loss"):
        l.ddpKwargs = {"bucket_cap_mb": 4e-5}  # a bucket for each parameter: a local bucket follows
    if case == "loss":
        l.lossF = LossFails(at)
    if case == "own_ddp":
        l.model = nn.parallel.DistributedDataParallel(model)
    raised = None
    try:
        l.run(1)
    except Exception as e:
        raised = f"{type(e).__name__}: {e}"
    return {
        "initial": initial,
        "raised": raised,
        "xbs": watch.xbs,
        "riding": watch.riding,
        "seen": watch.seen,
        "final": weights(l.model.module if case == "own_ddp" else l.model),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


class MeanOnRank0(Callback):
    """Rank 0 alone averages a number over the ranks at the end of training batch 3."""

    def endBatch(self) -> None:
        learner = self.learner
        if learner.rank == 0 and learner.model.training and learner.batch == 3:
            learner.group.mean(1.0)


def riding_out_of_step(rank: int) -> dict[str, Any]:
    """While rank 1 is in batch 4's backward (riding), rank 0 averages alone: both must raise,
    neither hang."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.append(MeanOnRank0())
    try:
        l.run(1)
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e), "grads": [p.grad for p in l.model.parameters()]}
    return {"type": None}


# ---- failures inside the loop's own work on one rank ---------------------------------------------


class StepFails(torch.optim.SGD):
    """Fails at its ``fail_at``-th step on rank 1 (out of memory, say)."""

    def __init__(self, params: Any, fail_at: int) -> None:
        super().__init__(params, lr=0.05)
        self.fail_at, self.calls = fail_at, 0

    def step(self, closure: Any = None) -> Any:
        self.calls += 1
        if self.calls == self.fail_at and int(os.environ["RANK"]) == 1:
            raise RuntimeError("out of memory on rank 1")
        return super().step(closure)


class DetachOnRank1(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y.detach() if int(os.environ["RANK"]) == 1 else y


def loop_failures(rank: int) -> dict[str, dict[str, Any]]:
    """An optimizer step that fails, the last partial accumulation group's step that fails,
    and a loss without a gradient, each on rank 1 only."""
    out = {}
    for name in ("step", "flush", "no_grad"):
        torch.manual_seed(0)
        l = learner(DetachOnRank1() if name == "no_grad" else Net())
        # 20 training batches: 10 a rank; accumulating 3, the last group is 1 batch (flushed)
        l.opt = StepFails(l.model.parameters(), fail_at=3 if name == "step" else 4)
        if name == "flush":
            l.cbs.withGradAccumulation(3)
        try:
            l.run(1)
            out[name] = {"type": None}
        except Exception as e:
            out[name] = {"type": type(e).__name__, "message": str(e)}
    return out


# ---- the event trace: one process and each rank of two run the same loop ---------------------------

EVENTS = k1lib.callbacks.EVENTS
IN_BATCH = EVENTS[EVENTS.index("startBatch") : EVENTS.index("endBatch") + 1]
OUTSIDE = ("startRun", "startEpoch", "startValidBatches", "endEpoch")
RAISES = {
    "batch": k1lib.CancelBatchException,
    "epoch": k1lib.CancelEpochException,
    "run": CancelRunException,
    "error": ValueError,
}


def trace_cases() -> list[tuple[str, str, str]]:
    """(event, what, phase): raise ``what`` (or return True: ``skip``) at ``event`` of the
    second training batch or the first validation batch of epoch 0, or the first time an event
    outside batches fires."""
    cases = [(e, what, "train") for e in IN_BATCH for what in RAISES]
    cases += [(e, what, "valid") for e in IN_BATCH for what in ("batch", "epoch", "error")]
    cases += [(e, what, "") for e in OUTSIDE for what in RAISES]
    cases += [(e, "skip", "train") for e in ("startBackward", "startStep", "startZeroGrad")]
    cases.append(("endRun", "error", ""))
    return cases


class Tracer(Callback):
    """Records every event with the epoch, batch and phase, and every optimizer step."""

    order = 0

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[tuple[Any, ...]] = []
        for event in k1lib.callbacks.EVENTS:
            setattr(self, event, self._recorder(event))

    def _recorder(self, event: str) -> Any:
        def record() -> None:
            learner = self.learner
            self.trace.append((event, learner.epoch, learner.batch, learner.training))

        return record


class Raiser(Callback):
    """On rank ``target``: raise (or skip) once, as ``trace_cases`` says."""

    order = 50

    def __init__(self, event: str, what: str, phase: str, target: int) -> None:
        super().__init__()
        self.what, self.phase, self.target, self.done = what, phase, target, False
        setattr(self, event, self._maybe)

    def _maybe(self) -> bool:
        learner = self.learner
        if self.done or learner.rank != self.target or (self.phase and learner.epoch != 0):
            return False
        if self.phase == "train" and not (learner.training and learner.batch == 1):
            return False
        if self.phase == "valid" and learner.training:
            return False
        self.done = True
        if self.what == "skip":
            return True
        raise RAISES[self.what](f"raised by the test ({self.what})")


def traced_run(event: str, what: str, phase: str, target: int) -> dict[str, Any]:
    """A run of 2 epochs (4 training and 2 validation batches a rank) with ``Raiser``;
    returns the trace and how the run ended."""
    world = k1lib.Learner().worldSize
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 8 * 6 * world)
    pairs = list(zip(x.split(8), torch.sin(x).split(8), strict=True))
    l = learner(Net())
    l.data = k1lib.data.Data(pairs[: 4 * world], pairs[4 * world :][: 2 * world])
    for name in ("ProgressBar", "Autosave"):
        l.cbs.remove(name)
    tracer = Tracer()
    l.cbs.append(tracer)
    l.cbs.append(Raiser(event, what, phase, target))
    assert l.opt is not None
    l.opt.register_step_post_hook(lambda *_: tracer.trace.append(("step",)))
    outcome = ""
    try:
        l.run(2)
    except BaseException as e:
        outcome = f"{type(e).__name__}: {e}"
    return {"trace": tracer.trace, "outcome": outcome}


def traces(rank: int) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {case: traced_run(*case, target=1) for case in trace_cases()}


class BiasUnusedAt(Net):
    """``b``'s bias takes no part in the loss in training batch ``at`` (on every rank)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.batch = at, -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batch += 1
        h = torch.tanh(self.a(x[:, None]))
        if self.training and self.batch == self.at:
            return nn.functional.linear(h, self.b.weight)[:, 0]
        return self.b(h)[:, 0]  # type: ignore[no-any-return]


def riding_unused(rank: int) -> dict[str, Any]:
    """A parameter unused in training batch 4, while the agreement rides on the gradients'
    all-reduce: DDP's backward then makes no all-reduce; every rank must stop before the step
    with the hint, with the weights the ranks had after batch 3, the same on both."""
    torch.manual_seed(0)
    model = BiasUnusedAt(4)
    l = learner(model)
    x, y = dataset()
    l.data = k1lib.data.Data(list(zip(x[:320].split(20), y[:320].split(20), strict=True)), [])
    watch = Watch(4)
    l.cbs.append(watch)
    raised, notes = None, []
    try:
        l.run(1)
    except Exception as e:
        raised, notes = f"{type(e).__name__}: {e}", getattr(e, "__notes__", [])
    return {
        "raised": raised,
        "notes": notes,
        "riding": watch.riding,
        "seen": watch.seen,
        "final": weights(l.model),
    }


def riding_hooks(rank: int) -> dict[str, Any]:
    """HookModule on, rank 1 cancels training batch 4 at endLoss after rank 0 ran its backward
    (riding): rank 0's row of batch 4 must hold no gradient statistics of that undone backward,
    as rank 1's (which ran none)."""
    torch.manual_seed(0)
    l = learner(Net())
    l.cbs.withHookModule()
    x, y = dataset()
    l.data = k1lib.data.Data(list(zip(x[:320].split(20), y[:320].split(20), strict=True)), [])
    l.cbs.append(Fail("endLoss", 4, k1lib.CancelBatchException("not this one")))
    l.run(1)
    record = l.HookModule
    return {
        "backward": [record[i].backward.means.clone() for i in range(len(record.names))],
        "forward": [record[i].forward.means.clone() for i in range(len(record.names))],
    }


class KeepDDP(Callback):
    """A weak reference to each DDP a run makes (the model its first batch sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[Any] = []
        self.first = True

    def startRun(self) -> None:
        self.first = True

    def startBatch(self) -> None:
        if self.first:
            self.first = False
            assert isinstance(self.learner.model, nn.parallel.DistributedDataParallel)
            self.refs.append(weakref.ref(self.learner.model))


def released(rank: int) -> dict[str, Any]:
    """A run whose last training batch rank 1 cancels after its forward pass (DDP's reducer then
    waits for a backward that never comes), then another run: the first run's DDP must be freed
    (the comm hook's state held it in a cycle), or its hooks all-reduce on one rank alone."""
    torch.manual_seed(0)
    l = learner(Net())
    last = k1lib._distributed.batches_per_rank(l.data.train) - 1
    l.cbs.append(Fail("endLoss", last, k1lib.CancelBatchException("not this one")))
    l.cbs.append(KeepDDP())
    l.run(1)
    l.run(1)
    gc.collect()
    return {
        "alive": [ref() is not None for ref in l.KeepDDP.refs],
        "train": list(l.Loss.train),
        "final": {k: v.clone() for k, v in l.model.state_dict().items()},
    }


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    mine = out / f"rank{rank}"
    mine.mkdir(parents=True, exist_ok=True)
    os.chdir(mine)
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with open("stdout.txt", "w") as stdout:
        sys.stdout = stdout
        results["train"] = train(rank)
        results["cancel_endLoss"] = cancelled(rank, "endLoss", 3)
        results["cancel_endBatch"] = cancelled(rank, "endBatch", 5)
        results["failed"] = failed(rank)
        results["unused"] = unused(rank)
        results["plain_lists"] = plain_lists(rank)
        results["torch_loader"] = torch_loader(rank)
        results["param_finder"] = param_finder(rank)
        results["out_of_step"] = out_of_step(rank)
        results["fetch_failure"] = fetch_failure(rank)
        results["uneven"] = uneven(rank)
        results["accumulated"] = accumulated(rank)
        results["startBatch"] = before_forward(rank, "startBatch", k1lib.CancelBatchException("skip it"))
        results["startPass"] = before_forward(rank, "startPass", ValueError("bad input"))
        results["startBatch_later"] = before_forward(
            rank, "startBatch", k1lib.CancelBatchException("x"), at=6
        )
        results["after_backward"] = after_backward(rank)
        results["accumulating_cancel"] = accumulating_cancel(rank)
        results["static_graph"] = static_graph(rank)
        results["clipped_step_cancel"] = clipped_step_cancel(rank)
        results["end_batch_cancel"] = end_batch_cancel(rank)
        results["cancel_in_cancel_batch"] = cancel_in_cancel_batch(rank)
        results["param_finder_uneven"] = param_finder_uneven(rank)
        results["epoch_end"] = epoch_end(rank)
        results["low_loss"] = low_loss(rank)
        results["loss_by_batch"] = loss_by_batch(rank)
        results["save_on_rank_0"] = save_on_rank_0(rank)
        results["recorded"] = recorded(rank)
        results["subset_sampler"] = subset_sampler(rank)
        results["traces"] = traces(rank)
        results["loop_failures"] = loop_failures(rank)
        results["riding_out_of_step"] = riding_out_of_step(rank)
        results["released"] = released(rank)
        results["riding_unused"] = riding_unused(rank)
        results["riding_hooks"] = riding_hooks(rank)
        results["riding"] = {
            case: riding(rank, case)
            for case in ("cancel", "skip", "loss", "forward", "accumulated", "own_ddp")
        }
        if importlib.util.find_spec("transformers") is not None:
            results["hf"] = hf_models.hf_ddp_scenario(rank)
        sys.stdout = sys.__stdout__
    torch.save(results, "results.pt")


if __name__ == "__main__":
    main()
