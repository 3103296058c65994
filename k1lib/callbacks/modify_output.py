"""``ModifyOutput``: transform the model's output before the loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .callback import Callback

__all__ = ["ModifyOutput"]


class ModifyOutput(Callback):
    """``y = f(y)`` right after the forward pass."""

    shapes_batch = True

    def __init__(self, f: Callable[[Any], Any]) -> None:
        super().__init__()
        self.f = f

    def endPass(self) -> None:
        self.learner.y = self.f(self.learner.y)
