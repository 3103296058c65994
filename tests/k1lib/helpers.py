"""Small models and data for the k1lib tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
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


# ---- the plain way to get what HookModule and HookParam record ---------------------------------------


def plain_stats(t: torch.Tensor | None, names: tuple[str, ...] = ("means", "stds")) -> torch.Tensor:
    """Statistics of ``t`` computed plainly in float64 (torch.std: the unbiased std); NaN for None."""
    if t is None:
        return torch.full((len(names),), float("nan"), dtype=torch.float64)
    x = t.detach().double().reshape(-1)
    std = x.std() if x.numel() > 1 else torch.tensor(float("nan"), dtype=torch.float64)  # no warning
    values = {"means": x.mean(), "stds": std, "mins": x.min(), "maxs": x.max()}
    return torch.stack([values[n] for n in names])


def assert_stats_close(
    got: torch.Tensor,
    tensors: list[torch.Tensor | None],
    names: tuple[str, ...] = ("means", "stds"),
    what: str = "",
) -> None:
    """``got`` (one row per tensor, a column per statistic) equals ``plain_stats`` of each tensor,
    within float32 error relative to the tensor's own scale."""
    assert got.shape == (len(tensors), len(names)), (what, tuple(got.shape))
    for i, t in enumerate(tensors):
        scale = float(t.detach().double().abs().max()) if t is not None else 0.0
        torch.testing.assert_close(
            got[i].double(),
            plain_stats(t, names),
            rtol=1e-3,
            atol=1e-4 * scale + 1e-12,
            equal_nan=True,
            msg=lambda m, i=i: f"{what} row {i}: {m}",
        )


class PlainHooks:
    """For ``modules`` (path -> module), in a ``with`` block: each module's output (the first
    tensor of a structure) at hook time and that output's gradient (a ``register_hook`` of our
    own), of its last call with gradients enabled since ``close_batch()``; ``close_batch()``
    appends them (None where none) to ``forward[path]`` / ``backward[path]``."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.forward: dict[str, list[torch.Tensor | None]] = {p: [] for p in modules}
        self.backward: dict[str, list[torch.Tensor | None]] = {p: [] for p in modules}
        self._handles: list[Any] = []
        self._now: dict[str, list[torch.Tensor | None]] = {p: [None, None] for p in modules}
        self._calls = dict.fromkeys(modules, 0)

    def __enter__(self) -> PlainHooks:
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def close_batch(self) -> None:
        for path, (fwd, bwd) in self._now.items():
            self.forward[path].append(fwd)
            self.backward[path].append(bwd)
        self._now = {p: [None, None] for p in self.modules}
        self._calls = dict.fromkeys(self.modules, 0)

    def _hook(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output)
            if t is None or not torch.is_grad_enabled():
                return
            self._calls[path] += 1
            call, now = self._calls[path], self._now[path]
            now[0], now[1] = t.detach().clone(), None
            if t.requires_grad:

                def grad(g: torch.Tensor) -> None:
                    if call == self._calls[path]:  # the last call's gradient
                        now[1] = g.detach().clone()

                t.register_hook(grad)

        return hook

    def stats(self, direction: str, path: str, names: tuple[str, ...] = ("means", "stds")) -> torch.Tensor:
        """``(batches, len(names))`` plain statistics of what was seen."""
        return torch.stack([plain_stats(t, names) for t in getattr(self, direction)[path]])


def first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor of an output: itself, or depth-first in tuples, lists and dicts."""
    if isinstance(output, torch.Tensor):
        return output
    items = (
        output.values() if isinstance(output, dict) else output if isinstance(output, tuple | list) else ()
    )
    return next((t for t in map(first_tensor, items) if t is not None), None)


def torchrun(script: Path, args: list[str], world: int, timeout: int = 300, **env: str) -> None:
    """Run ``script args`` in ``world`` CPU processes under torchrun (one thread each, ``env``
    added), failing the test with the output when a rank fails or the launch outlives
    ``timeout`` seconds (a hang fails, it does not stall CI)."""
    launched = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    launched.update(OMP_NUM_THREADS="1", **env)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    try:
        done = subprocess.run(
            [*command, str(script), *args], env=launched, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"{world} processes of {script.name} did not end in {timeout} s (hung?):\n{e.stdout}\n{e.stderr}"
        )
    assert done.returncode == 0, f"torchrun ({world}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
