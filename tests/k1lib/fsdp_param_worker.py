"""One rank of the sharded-parameter tests (``test_sharded_params.py`` launches it with torchrun,
2 and 3 processes, CPU and gloo).

    python -m torch.distributed.run --standalone --nproc_per_node=N fsdp_param_worker.py OUT

The model is sharded by hand with FSDP2's ``fully_shard`` (no Learner). Each scenario drives
the captures directly over a few SGD steps and saves, next to what they recorded, the reference:
the existing unsharded statistics (``_stats.Reducer``) of the whole parameters
(``full_tensor()``) after each step. Everything a rank saw goes to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import k1lib
from k1lib._fsdp import reshard
from k1lib.callbacks._module_capture import ModuleCapture
from k1lib.callbacks._module_record import ModuleRecord
from k1lib.callbacks._param_record import ParamRecord
from k1lib.callbacks._sharded_params import ShardedParamCapture, param_capture
from k1lib.callbacks._stats import STATS, Reducer

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "all_gather_object",
    "broadcast",
    "reduce_scatter_tensor",
    "barrier",
    "gather",
    "scatter",
)


class Net(nn.Module):
    """Uneven shards (``a``: 5 rows), an empty one on 3 ranks (``b.bias``: 2 values), a weight
    above ``_stats.SMALL`` whole (``wide``), a constant frozen weight and one of values near
    500 (``c`` and ``offset``, left on the root)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 2)
        self.wide = nn.Linear(2, 40000)
        self.c = nn.Parameter(torch.full((7, 3), 0.1), requires_grad=False)
        self.offset = nn.Parameter(500 + 0.01 * torch.randn(6, 4))

    def forward(self, x: Tensor) -> Tensor:
        y = self.b(torch.tanh(self.a(x)))
        z = self.wide(y).mean(-1)
        return y.sum(-1) + z + 1e-3 * (x @ self.offset.T).mean(-1) + self.c.sum()


def sharded_net() -> tuple[Net, Net]:
    """The same model on every rank (seeded), sharded, and a whole copy of it."""
    torch.manual_seed(0)
    model = Net()
    whole = copy.deepcopy(model)
    for part in (model.a, model.b, model.wide):
        fully_shard(part)
    fully_shard(model)
    return model, whole


def batch(rank: int, step: int) -> Tensor:
    """This rank's batch of a step (each rank its own)."""
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1000 * rank + step))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor) -> None:
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad()


def whole_stats(params: list[tuple[str, nn.Parameter]]) -> Tensor:
    """The unsharded statistics of the whole parameters (``full_tensor``: a collective)."""
    with torch.no_grad():
        return Reducer(STATS)([p.full_tensor() for _, p in params])  # type: ignore[attr-defined]


@contextmanager
def counting(calls: list[str]) -> Iterator[None]:
    """Every torch.distributed collective called inside, by name, into ``calls``."""
    saved = {name: getattr(dist, name) for name in COLLECTIVES}

    def counted(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return f(*args, **kwargs)

        return call

    for name, f in saved.items():
        setattr(dist, name, counted(name, f))
    try:
        yield
    finally:
        for name, f in saved.items():
            setattr(dist, name, f)


def read_everything(record: ParamRecord) -> dict[str, Any]:
    """What a user reads of a record mid-epoch: data, repr, an index, a slice, a state dict."""
    return {
        "batches": record.batches(),
        "data": record.data.clone(),
        "repr": repr(record),
        "first": record[0].means.clone(),
        "slice": record[1:3].data.clone(),
        "state": record.state_dict()["data"].clone(),
    }


def capture_scenario(rank: int) -> dict[str, Any]:
    """Two epochs of 3 steps; combine at each epoch's end; rank 0 reads mid-epoch, alone."""
    model, _ = sharded_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with torch.no_grad():  # a validation pass: FSDP leaves the root's parameters gathered
        model.eval()
        model(batch(rank, -1))
        model.train()
    gathered = [type(p).__name__ for _, p in model.named_parameters()]
    reshard(model)
    params = list(model.named_parameters())
    record = ParamRecord()
    record.begin([n for n, _ in params])
    capture = param_capture(params, record)
    reference, after_epoch, calls = [], [], []
    mid: dict[str, Any] = {}
    step = 0
    for epoch in range(2):
        capture.start(3)
        for i in range(3):
            train_step(model, opt, batch(rank, step))
            step += 1
            capture.end_batch()
            reference.append(whole_stats(params))
            if epoch == 1 and i == 1 and rank == 0:
                with counting(calls):
                    mid = read_everything(record)
        capture.combine()
        record.flush()
        after_epoch.append(record.batches())
    capture.combine()  # as HookParam's endRun after endEpoch: nothing more
    record.flush()
    capture.stop()
    return {
        "sharded": isinstance(capture, ShardedParamCapture),
        "gathered_before_reshard": gathered,
        "types": [type(p).__name__ for _, p in params],
        "local_shapes": [tuple(p.to_local().shape) for _, p in params],  # type: ignore[attr-defined]
        "names": record.names,
        "data": record.data,
        "reference": torch.stack(reference),
        "after_epoch": after_epoch,
        "mid": mid,
        "calls": calls,
    }


def missing_row_scenario(rank: int) -> dict[str, Any]:
    """Rank 1 does not record the second of three steps (keys 0, 2 against 0, 1, 2)."""
    model, _ = sharded_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    params = list(model.named_parameters())
    record = ParamRecord()
    record.begin([n for n, _ in params])
    capture = param_capture(params, record)
    capture.start()
    reference = []
    for step in range(3):
        train_step(model, opt, batch(rank, step))
        if not (rank == 1 and step == 1):
            capture.end_batch(step)
        reference.append(whole_stats(params))
    capture.combine()
    record.flush()
    return {"data": record.data, "reference": torch.stack(reference)}


def module_scenario(rank: int) -> dict[str, Any]:
    """ModuleCapture (HookModule's) on the sharded model and on a whole copy given the same
    parameters and batch: each rank records its own activations and their gradients."""
    model, whole = sharded_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    records = []
    captures = []
    for net in (model, whole):
        found = [("a", net.a), ("b", net.b), ("wide", net.wide)]
        record = ModuleRecord()
        record.begin([p for p, _ in found], [type(m).__name__ for _, m in found])
        capture = ModuleCapture(found, record)
        capture.install()
        records.append(record)
        captures.append(capture)
    try:
        for step in range(2):
            x = batch(rank, step)
            with torch.no_grad():  # the copy holds the sharded model's parameters now
                for (_, p), (_, q) in zip(model.named_parameters(), whole.named_parameters(), strict=True):
                    q.copy_(p.full_tensor())  # type: ignore[attr-defined]
            for capture, net in zip(captures, (model, whole), strict=True):
                capture.start_batch()
                net(x).square().mean().backward()
                capture.end_batch()
            opt.step()
            opt.zero_grad()
            whole.zero_grad()
    finally:
        for capture in captures:
            capture.remove()
    for record in records:
        record.end()
    return {"sharded": records[0].state_dict(), "whole": records[1].state_dict()}


def watch_scenario(rank: int) -> dict[str, Any]:
    """``k1lib.watch`` in a plain loop on the sharded model: two blocks of 2 steps; rank 0 flushes
    and reads alone inside the second; a third block raises after a step."""
    model, _ = sharded_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    params = list(model.named_parameters())
    w = k1lib.watch(model, "*")
    reference, calls, after_block = [], [], []
    inside: dict[str, Any] = {}
    step = 0
    for block in range(2):
        with w:
            for i in range(2):
                train_step(model, opt, batch(rank, step))
                step += 1
                w.step()
                reference.append(whole_stats(params))
                if block == 1 and i == 0 and rank == 0:
                    with counting(calls):
                        w.flush()
                        inside = read_everything(w.HookParam)
        after_block.append(w.HookParam.batches())
    with ExitStack() as leaving:  # a block left by an exception drops its HookParam rows
        try:
            with w:
                train_step(model, opt, batch(rank, step))
                w.step()
                leaving.enter_context(counting(calls))  # until after the block's exit
                raise ValueError("stop")
        except ValueError:
            after_block.append(w.HookParam.batches())
    return {
        "names": w.HookParam.names,
        "data": w.HookParam.data,
        "reference": torch.stack(reference),
        "after_block": after_block,
        "inside": inside,
        "calls": calls,
        "modules": w.HookModule.batches(),
    }


def placements_scenario(rank: int) -> dict[str, Any]:
    """DTensors made by hand: a replicated one is its local tensor (no collective to combine);
    one sharded on two mesh dimensions is refused."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    world = dist.get_world_size()
    torch.manual_seed(0)
    whole = 500 + torch.randn(4, 6)
    replicated = nn.Parameter(distribute_tensor(whole, init_device_mesh("cpu", (world,)), [Replicate()]))
    record = ParamRecord()
    record.begin(["replicated"])
    capture = param_capture([("replicated", replicated)], record)
    capture.start()
    capture.end_batch()
    calls: list[str] = []
    with counting(calls):
        capture.combine()
    record.flush()
    two = init_device_mesh("cpu", (1, world))
    both = nn.Parameter(distribute_tensor(torch.randn(4, 6), two, [Shard(0), Shard(1)]))
    try:
        param_capture([("both", both)], ParamRecord())
        refused = ""
    except NotImplementedError as e:
        refused = str(e)
    return {
        "data": record.data,
        "reference": Reducer(STATS)([whole])[None],
        "calls": calls,
        "refused": refused,
    }


def learner_scenario(rank: int) -> dict[str, Any] | None:
    """HookParam inside a Learner on a sharded model (``l.strategy = "fsdp"``): run only when
    the Learner has that strategy."""
    l = k1lib.Learner()
    if not hasattr(l, "strategy"):
        return None
    torch.manual_seed(0)
    l.model = Net()
    x = torch.randn(96, 4)
    l.data = k1lib.data.Data.fromDataset((x, x.sum(-1)), batchSize=8)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.05)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    l.strategy = "fsdp"
    l.css = "#a, #b, #wide: shard; *: HookParam"
    for name in ("LossLandscape", "ParamFinder", "Autosave", "ProgressBar"):
        if name in [cb.name for cb in l.cbs]:
            l.cbs.remove(name)

    class Whole(k1lib.Callback):
        order = 100  # after HookParam

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[Tensor] = []

        def endBatch(self) -> None:
            if self.learner.training:
                self.rows.append(whole_stats(list(self.learner.model.named_parameters())))

    whole = Whole()
    l.cbs.append(whole)
    l.run(2)
    return {"data": l.HookParam.data, "reference": torch.stack(whole.rows), "names": l.HookParam.names}


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    results = {
        "world": dist.get_world_size(),
        "capture": capture_scenario(rank),
        "missing_row": missing_row_scenario(rank),
        "modules": module_scenario(rank),
        "watch": watch_scenario(rank),
        "placements": placements_scenario(rank),
        "learner": learner_scenario(rank),
    }
    dist.barrier()
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
