"""Small models and data for the k1lib tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Batches:
    """Plain lists of (xb, yb) batches: ``Learner`` accepts any iterables as data."""

    train: list[tuple[torch.Tensor, torch.Tensor]]
    valid: list[tuple[torch.Tensor, torch.Tensor]]


def batches(train: int = 3, valid: int = 2, size: int = 4, seed: int = 0) -> Batches:
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for _ in range(n):
            x = torch.randn(size, 2, generator=g)
            out.append((x, x.sum(1, keepdim=True)))
        return out

    return Batches(make(train), make(valid))


def learner(train: int = 3, valid: int = 2, quiet: bool = True) -> Any:
    import k1lib

    torch.manual_seed(0)
    l = k1lib.Learner()
    l.model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    l.data = batches(train, valid)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    if quiet:
        l.cbs.remove("ProgressBar")
    return l


def ran(l: Any, epochs: int, batches: int | None = None) -> Any:
    """``l`` after ``l.run(epochs, batches)`` (which returns None, for notebooks)."""
    l.run(epochs, batches)
    return l


def assert_same(before: Any, after: Any, where: str = "state", nan: bool = False) -> None:
    """Bitwise equal, nested (tensors with their dtype, dicts, lists, tuples); with ``nan``, a
    NaN where a NaN was counts as equal (recorded statistics hold some)."""
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor), where
        if nan:
            torch.testing.assert_close(after, before, rtol=0, atol=0, equal_nan=True, msg=where)
        else:
            assert before.dtype == after.dtype and torch.equal(before, after), where
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for k in before:
            assert_same(before[k], after[k], f"{where}[{k!r}]", nan)
    elif isinstance(before, list | tuple):
        assert len(before) == len(after), where
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            assert_same(b, a, f"{where}[{i}]", nan)
    else:
        assert before is after or before == after or (nan and before != before and after != after), where


def readme_learner() -> Any:
    """The README's learner (untrained): bfloat16 data made (N, 1) float32 by its callbacks."""
    import k1lib

    from ..modsel.models import Network

    torch.manual_seed(0)
    l = k1lib.Learner()
    l.model = Network()
    l.data = k1lib.data.Data.fromDataset(k1lib.data.FunctionDataset.exp, batchSize=64)
    l.opt = torch.optim.Adam(l.model.parameters(), lr=1e-2)
    l.lossF = lambda x, y: ((x.squeeze() - y) ** 2).mean()
    l.cbs.withModifyBatch(lambda x, y: (x[:, None], y))
    l.cbs.withDType(torch.float32)
    return l
