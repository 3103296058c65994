"""``ModifyBatch``: transform each batch before the forward pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .callback import Callback

__all__ = ["ModifyBatch"]


class ModifyBatch(Callback):
    """``xb, yb = f(xb, yb)`` at the start of every batch (README: add a feature dimension)."""

    shapes_batch = True

    def __init__(self, f: Callable[[Any, Any], tuple[Any, Any]]) -> None:
        super().__init__()
        self.f = f

    def startBatch(self) -> None:
        learner = self.learner
        learner.xb, learner.yb = self.f(learner.xb, learner.yb)
