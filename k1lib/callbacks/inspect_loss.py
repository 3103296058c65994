"""``InspectLoss``: look at the loss without changing anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .callback import Callback

__all__ = ["InspectLoss"]


class InspectLoss(Callback):
    """Call the loss ``f(loss)`` right after it is computed; its result is ignored."""

    def __init__(self, f: Callable[[Any], Any]) -> None:
        super().__init__()
        self.f = f

    def endLoss(self) -> None:
        self.f(self.learner.loss)
