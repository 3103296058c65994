"""``InspectBatch``: look at the batch without changing anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .callback import Callback

__all__ = ["InspectBatch"]


class InspectBatch(Callback):
    """Call the batch ``f(xb, yb)`` at the start of every batch; its result is ignored."""

    def __init__(self, f: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.f = f

    def startBatch(self) -> None:
        self.f(self.learner.xb, self.learner.yb)
