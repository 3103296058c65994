"""``CancelOnExplosion``: stop a run whose loss blows up or stops being a number."""

from __future__ import annotations

import math
from typing import Any

import torch

from .callback import Callback, CancelRunException

__all__ = ["CancelOnExplosion"]

_SLOTS = 4  # copies in flight at once (CUDA)


class CancelOnExplosion(Callback):
    """Cancel the run when a training loss is above ``limit`` or is NaN/inf.

    On the CPU each checked loss is read as it comes: that costs nothing. On CUDA, reading a
    loss would make the host wait for the GPU every batch, so the check never reads one
    directly: the worst loss since the last copy (a running max on the device, NaN kept) is
    copied to pinned host memory without blocking and read once the copy has landed, which
    a later batch sees without waiting. The run is then cancelled a batch or two after the
    explosion (its step has been taken), and at the latest at the end of the epoch, where
    the last copy is waited for. ``every`` checks one training batch in ``every``."""

    order = 25
    doc = """
- cb.limit: the largest loss allowed
- cb.every: check one training batch in this many
"""

    def __init__(self, limit: float = 1e6, every: int = 1) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"CancelOnExplosion: every must be an int of 1 or more, got {every!r}")
        self.limit = limit
        self.every = every
        self._seen = 0
        self._worst: torch.Tensor | None = None  # on the device, not copied yet
        self._copies: list[tuple[torch.Tensor, Any]] = []  # (host value, event) in flight
        self._free: list[torch.Tensor] = []

    def _deferred(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is read through a copy (CUDA), not directly."""
        return loss.device.type == "cuda"

    def endLoss(self) -> None:
        learner = self.learner
        if not learner.training:
            return
        self._seen += 1
        if self._seen % self.every:
            return
        loss = learner.loss.detach()
        worst = (loss if loss.numel() == 1 else loss.max()).float().reshape(())
        if not self._deferred(worst):
            self._check(float(worst))
            return
        self._worst = worst if self._worst is None else torch.maximum(self._worst, worst)
        self._check_landed(wait=False)
        if self._free or len(self._copies) < _SLOTS:
            self._send(self._worst)
            self._worst = None

    def _send(self, worst: torch.Tensor) -> None:
        if self._free:
            host = self._free.pop()
        else:
            host = torch.empty((), dtype=torch.float32, pin_memory=worst.is_cuda)
        host.copy_(worst, non_blocking=worst.is_cuda)
        event = None
        if worst.is_cuda:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
        self._copies.append((host, event))

    def _check_landed(self, wait: bool) -> None:
        """Check the copies that have landed, oldest first (with ``wait``, all of them)."""
        while self._copies:
            host, event = self._copies[0]
            if event is not None:
                if wait:
                    event.synchronize()
                elif not event.query():
                    return
            self._copies.pop(0)
            self._free.append(host)
            self._check(float(host))

    def _check(self, value: float) -> None:
        if not math.isfinite(value):
            self._reset()
            raise CancelRunException(f"Loss is {value}: not a finite number")
        if value > self.limit:
            self._reset()
            raise CancelRunException(f"Loss exploded: {value:.4g} > {self.limit:g}")

    def _reset(self) -> None:
        self._worst = None
        self._free += [host for host, _ in self._copies]
        self._copies.clear()

    def endEpoch(self) -> None:
        # one wait an epoch, so an explosion in its last batches is seen before it ends
        if self._worst is not None:
            self._send(self._worst)
            self._worst = None
        self._check_landed(wait=True)

    def startRun(self) -> None:
        self._reset()

    def endRun(self) -> None:
        self._reset()

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self._seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen = int(state["seen"])
