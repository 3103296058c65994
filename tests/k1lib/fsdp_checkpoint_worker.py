"""One rank of the sharded checkpoint tests (``test_sharded_checkpoint.py`` launches it).

    python -m torch.distributed.run --standalone --nproc_per_node=N fsdp_checkpoint_worker.py PHASE SHARED

``PHASE`` is ``save`` (on 2 ranks: train a sharded model a few steps, save it to
``SHARED/ck``, then the scenarios below) or ``load`` (on 4 ranks: load ``SHARED/ck``, saved by
2). Each rank saves what the tests check to ``SHARED/{PHASE}-rank{r}.pt``: full tensors
(``DTensor.full_tensor``), so the test compares them with a plain model's.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import k1lib
from k1lib import Callback
from k1lib import _sharded_checkpoint as sharded

VOCAB = 16


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))  # type: ignore[no-any-return]


class Net(nn.Module):
    """A small language model of Blocks: its head's weight is the embedding's (tied, as in small
    language models), it has a buffer, and a bias of 5 (shards of uneven size on 2 and 4 ranks)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(2)])
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.extra = nn.Linear(width, 5)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) * self.scale
        for block in self.blocks:
            h = block(h)
        return self.head(h) + self.extra(h).sum(-1, keepdim=True)  # type: ignore[no-any-return]


class Marks(Callback):
    """A callback with state of its own, saved in the checkpoint's rest file."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {"marks": list(self.marks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.marks = list(state["marks"])


def sharded_learner(seed: int, sharded_model: bool = True) -> Any:
    """A learner of a ``Net`` (random weights from ``seed``), each Block and then the root
    sharded by ``fully_shard`` (default mesh: every rank, CPU), and an Adam built over the
    sharded parameters (``fully_shard`` replaces them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Net()
    if sharded_model:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    l = k1lib.Learner()
    l.cbs.remove("Autosave")
    l.cbs.append(Marks())
    l.model = model
    l.opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return l


def train(l: Any, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (2, 8), generator=g)
        logits = l.model(x[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1)).backward()
        l.opt.step()
        l.opt.zero_grad()


def full(value: Any) -> Any:
    if isinstance(value, DTensor):
        return value.full_tensor()
    if isinstance(value, torch.Tensor):
        return value.clone()
    return value


def snapshot(l: Any) -> dict[str, Any]:
    """Everything a load could change, as full tensors."""
    opt = l.opt.state_dict()
    return {
        "model": {k: full(v) for k, v in l.model.state_dict().items()},
        "opt": {i: {k: full(v) for k, v in s.items()} for i, s in opt["state"].items()},
        "groups": [{k: v for k, v in g.items()} for g in opt["param_groups"]],
        "marks": list(l.Marks.marks),
        "css": l.css,
        "counters": (l.epoch, l.epochs, l.batch, l.batches),
        "rng": torch.get_rng_state(),
    }


def refused(l: Any, path: Path) -> dict[str, Any]:
    """Load ``path`` (expected to fail): the error, and whether ``l`` is unchanged."""
    before = snapshot(l)
    try:
        sharded.load(l, path)
    except Exception as e:
        error = {"type": type(e).__name__, "message": str(e)}
    else:
        error = {"type": None, "message": ""}
    return {"error": error, "unchanged": same(before, snapshot(l))}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def on_rank_0(work: Callable[[], None]) -> None:
    if dist.get_rank() == 0:
        work()
    dist.barrier()


def damaged(shared: Path, name: str, damage: Callable[[Path], None]) -> Path:
    """A copy of ``shared/ck`` named ``name``, damaged by ``damage`` (on rank 0)."""
    copy = shared / name

    def make() -> None:
        shutil.copytree(shared / "ck", copy)
        damage(copy)

    on_rank_0(make)
    return copy


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damage_scenarios(shared: Path) -> dict[str, Any]:
    """Loads that must be refused, each into a trained learner that must stay as it was."""
    l = sharded_learner(5)
    train(l, 1)
    l.Marks.marks = [9]
    cases = {
        "flipped": damaged(shared, "flipped", lambda d: flip_byte(d / "__1_0.distcp")),
        "truncated": damaged(shared, "truncated", lambda d: truncate(d / "__0_0.distcp")),
        "no_metadata": damaged(shared, "no_metadata", lambda d: (d / ".metadata").unlink()),
        "no_manifest": damaged(shared, "no_manifest", lambda d: (d / sharded.MANIFEST).unlink()),
        "state_flipped": damaged(shared, "state_flipped", lambda d: flip_byte(d / sharded.STATE)),
    }
    results = {case: refused(l, path) for case, path in cases.items()}
    # a load that fails on rank 1 only, after every check (its callback's own loading code):
    # rank 0 has loaded everything by then, and puts it back
    if dist.get_rank() == 1:
        load_marks = l.Marks.load_state_dict

        def failing(state: dict[str, Any]) -> None:
            if state["marks"] == [1, 2, 3]:  # the checkpoint's; its own come back fine
                raise ValueError("cannot take these marks on rank 1")
            load_marks(state)

        l.Marks.load_state_dict = failing
    results["fails_on_one_rank"] = refused(l, shared / "ck")
    other = sharded_learner(5)
    other.opt = torch.optim.SGD(other.model.parameters(), lr=0.1)
    results["other_optimizer"] = refused(other, shared / "ck")
    return results


def failed_save(shared: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """Rank 1 fails while writing its shards over an existing checkpoint: every rank raises,
    the old checkpoint is whole and loads, no temporary directory is left."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    target = shared / "ck"
    manifest = (target / sharded.MANIFEST).read_bytes()
    l = sharded_learner(6)
    train(l, 1)
    write_data = FileSystemWriter.write_data

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        if dist.get_rank() == 1:
            raise OSError("disk full on rank 1")
        return write_data(self, *args, **kwargs)

    FileSystemWriter.write_data = failing  # type: ignore[method-assign]
    try:
        sharded.save(l, target)
    except Exception as e:
        error = {"type": type(e).__name__, "message": str(e)}
    else:
        error = {"type": None, "message": ""}
    finally:
        FileSystemWriter.write_data = write_data  # type: ignore[method-assign]
    dist.barrier()
    left = sorted(p.name for p in shared.iterdir() if p.name.startswith("."))
    reloaded = sharded_learner(7)
    sharded.load(reloaded, target)
    return {
        "error": error,
        "manifest_kept": (target / sharded.MANIFEST).read_bytes() == manifest,
        "left": left,
        "old_loads": same(snapshot(reloaded)["model"], saved["model"]),
    }


def rotation(shared: Path) -> dict[str, Any]:
    """Autosave of a sharded model: every rank saves, each slot a directory."""
    from k1lib._checkpoint import read

    l = sharded_learner(8)
    cb = k1lib.callbacks.Autosave(shared / "rotation", keep=2)
    l.cbs.append(cb)
    for mark in (1, 2, 3):
        l.epochs = mark
        cb.save()
    files = cb.files()
    marks = [
        read(p / sharded.STATE, expected=(sharded.FORMAT, sharded.VERSION))["counters"]["epochs"]
        for p in files
    ]
    resumed = sharded_learner(9)
    resumed.cbs.append(k1lib.callbacks.Autosave(shared / "rotation", keep=2))
    sharded.load(resumed, files[-1])
    return {
        "files": [p.name for p in files],
        "dirs": [p.is_dir() for p in files],
        "marks": marks,
        "resumed_epochs": resumed.epochs,
        "names": sorted(p.name for p in (shared / "rotation").iterdir()),
        "same_weights": same(snapshot(resumed)["model"], snapshot(l)["model"]),
    }


def best_checkpoint(shared: Path, saved: dict[str, Any]) -> dict[str, Any]:
    """restoreBest on a sharded model from an earlier run's best (a directory)."""
    l = sharded_learner(10)
    cb = k1lib.callbacks.BestCheckpoint(shared / "ck", restoreBest=True)
    l.cbs.append(cb)
    cb.load_state_dict({**cb.state_dict(), "best": 0.5})  # a resumed run's: the best is on disk
    cb.endRun()
    return {"restored": same(snapshot(l)["model"], saved["model"])}


def save_phase(shared: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    l = sharded_learner(0)
    train(l, 3)
    l.Marks.marks = [1, 2, 3]
    l.css = "Block"
    l.epoch, l.epochs, l.batch, l.batches = 2, 4, 5, 6
    saved = snapshot(l)
    sharded.save(l, shared / "ck")
    local = {k: tuple(v.to_local().shape) for k, v in l.model.state_dict().items() if isinstance(v, DTensor)}
    again = sharded_learner(1)  # other weights: everything must come from the checkpoint
    torch.manual_seed(123)
    sharded.load(again, shared / "ck")
    results = {
        "saved": saved,
        "local_shapes": local,
        "listing": sorted(p.name for p in (shared / "ck").iterdir()),
        "loaded": snapshot(again),
    }
    results["damage"] = damage_scenarios(shared)
    results["failed_save"] = failed_save(shared, saved)
    results["rotation"] = rotation(shared)
    results["best"] = best_checkpoint(shared, saved)
    return results


def load_phase(shared: Path) -> dict[str, Any]:
    l = sharded_learner(2)
    sharded.load(l, shared / "ck")
    local = {k: tuple(v.to_local().shape) for k, v in l.model.state_dict().items() if isinstance(v, DTensor)}
    return {
        "loaded": snapshot(l),
        "local_shapes": local,
        "flipped": refused(sharded_learner(3), shared / "flipped"),
    }


def main() -> None:
    phase, shared = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        results = save_phase(shared) if phase == "save" else load_phase(shared)
        torch.save(results, shared / f"{phase}-rank{dist.get_rank()}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
