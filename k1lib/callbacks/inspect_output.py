"""``InspectOutput``: look at the output without changing anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .callback import Callback

__all__ = ["InspectOutput"]


class InspectOutput(Callback):
    """Call the output ``f(y)`` right after the forward pass; its result is ignored."""

    def __init__(self, f: Callable[[Any], Any]) -> None:
        super().__init__()
        self.f = f

    def endPass(self) -> None:
        self.f(self.learner.y)
