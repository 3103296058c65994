"""``CancelOnExplosion``: stop a run whose loss blows up or stops being a number."""

from __future__ import annotations

import math
from typing import Any

from .callback import Callback, CancelRunException

__all__ = ["CancelOnExplosion"]


class CancelOnExplosion(Callback):
    """Cancel the run when a training loss is above ``limit`` or is NaN/inf.

    The check reads the loss on the host once per ``every`` batches (default 1: a device
    sync per batch only where the loss lives on an accelerator; raise ``every`` there)."""

    order = 25

    def __init__(self, limit: float = 1e6, every: int = 1) -> None:
        super().__init__()
        self.limit = limit
        self.every = max(1, every)
        self._seen = 0

    def endLoss(self) -> None:  # noqa: N802
        learner = self.learner
        if not learner.model.training:
            return
        self._seen += 1
        if self._seen % self.every:
            return
        loss = learner.loss.detach()
        # one read of one number: the largest loss (NaN propagates through max)
        value = float(loss if loss.numel() == 1 else loss.max())
        if not math.isfinite(value):
            raise CancelRunException(f"Loss is {value}: not a finite number")
        if value > self.limit:
            raise CancelRunException(f"Loss exploded: {value:.4g} > {self.limit:g}")

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self._seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen = int(state["seen"])
