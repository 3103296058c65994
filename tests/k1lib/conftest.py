"""Every k1lib test module runs in its own empty directory: Autosave writes checkpoints to the
current directory, as the 2021 k1lib did, and a test must not leave files in the checkout.
Torch runs one thread: the models here are tiny, and on a busy 2-core machine a second thread
makes them many times slower, not faster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import k1lib


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread in each module, and the count as it was afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _in_tmp_dir(tmp_path_factory: pytest.TempPathFactory) -> object:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield Path.cwd()


@pytest.fixture
def own_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of the test's own (for tests that count the files in it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


class _NoHostReads(k1lib.Callback):
    """From the first startBatch handler of each batch (``flag["on"]``) ..."""

    order = -1000

    def __init__(self, flag: dict[str, bool]) -> None:
        super().__init__()
        self.flag = flag

    def startBatch(self) -> None:
        self.flag["on"] = True


class _BatchOver(k1lib.Callback):
    """... to its last endBatch handler."""

    order = 1000

    def __init__(self, flag: dict[str, bool]) -> None:
        super().__init__()
        self.flag = flag

    def endBatch(self) -> None:
        self.flag["on"] = False


@pytest.fixture
def host_reads_raise_in_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any], None]]:
    """``guard(cbs)``: from then on, reading a tensor on the host (item, tolist, float, bool,
    cpu, numpy) inside a batch of a run with ``cbs`` raises (a host sync per batch)."""
    flag = {"on": False}
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def guarded(self: torch.Tensor, *args: Any, _f: Any = original, _n: str = name, **kw: Any) -> Any:
            if flag["on"]:
                raise AssertionError(f"Tensor.{_n} inside a batch: a host sync")
            return _f(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, guarded)

    def guard(cbs: Any) -> None:
        cbs.append(_NoHostReads(flag)).append(_BatchOver(flag))

    yield guard
