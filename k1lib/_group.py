"""``Group``: the processes of a run, as the loop (``k1lib/_loop.py``) sees them.

The loop calls ``hold`` where a callback or the user's code may raise, and ``agree`` (or
``agree_before_backward``, ``fire``) where the ranks must agree. This class is one process:
nothing to agree on, what is held is raised at once, and every call is cheap.
``_distributed.Session`` is a rank of several processes (DDP), where what a rank raised is
held until the next agreement point and then raised on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ._step import OptimizerStep
    from .callbacks.callbacks import Callbacks

__all__ = ["Group"]


class Group:
    """The processes of a run: here one (``_distributed.Session`` is the DDP one). Callbacks
    reach it as ``l.group``: ``several``, ``average``, ``mean``."""

    several = False
    held: BaseException | None = None  # raised on this rank, not agreed yet (never here)
    broken = False  # the ranks are out of step: no more collectives in this run (never here)

    def hold(self, error: BaseException, where: str = "") -> None:
        """What ``error`` becomes until the next agreement: here, raised at once."""
        raise error

    def agree(self, at: str, value: bool = False, ended: bool = False) -> tuple[bool, bool]:
        """Agree at ``at`` on what was held; returns whether any rank's ``value`` is set
        (skip backward) and whether any rank's loader ``ended``."""
        return value, ended

    def agrees_before_forward(self) -> bool:
        return False

    def agree_before_backward(
        self, skip: bool, ended: bool, backward: Callable[[], None] | None = None
    ) -> tuple[bool, bool, bool]:
        """Agree before the backward pass; returns whether any rank skips it, whether any
        rank's loader ended, and whether ``backward`` (this rank's backward pass, None when it
        has none to run) was run here already (under DDP it may run while the ranks agree)."""
        return skip, ended, False

    def fire(self, cbs: Callbacks, event: str) -> None:
        """An event outside batches: every handler runs, then the first exception is raised."""
        failed = cbs.collect(event)[1]
        if failed is not None:
            raise failed

    def batches(self, loader: Iterable[Any], epoch: int) -> Iterator[Any]:
        """This process's batches of ``loader`` in ``epoch``."""
        return iter(loader)

    def batches_in(self, loader: Any) -> int:
        """How many batches ``batches`` gives an epoch (TypeError without a length)."""
        return len(loader)

    def batches_an_epoch(self, data: Any, limit: int | None) -> int:
        """Batches an epoch (training and validation), with ``limit`` per loader; 0 when a
        loader has no length (a plain iterator)."""
        total = 0
        for loader in (data.train, data.valid):
            try:
                size = self.batches_in(loader)
            except TypeError:
                return 0
            total += size if limit is None else min(size, limit)
        return total

    def average(self, values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of ``values`` by ``keys`` (batch numbers), in key order."""
        return values[keys.argsort()]

    def mean(self, value: float | None) -> float | None:
        """The mean over ranks of one number."""
        return value

    def align(self, what: str) -> None:
        """Before a collective a callback makes itself (``what``: ``"combine"``, HookParam's rows
        of sharded parameters): under several processes the ranks first check that they are all
        there (an ``OutOfStepError`` saying where each was, instead of a hang); here nothing."""

    def watch(self, steps: OptimizerStep) -> None:
        """The run's optimizer step: under DDP each exchange checks that every rank has taken
        as many steps and zero_grads (a skip on one rank only would split the models)."""

    def wrap(self) -> None:
        """Prepare the model for the run (DDP wraps it)."""

    def unwrap(self) -> None:
        """Undo ``wrap``."""
