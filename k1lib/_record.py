"""``Learner.record``: run the loop forward only and keep every batch and output."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .callbacks.dont_train import DontTrain

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = ["record"]


def record(learner: Learner, run: Callable[[], object]) -> tuple[list[Any], list[Any], list[Any]]:
    """``run()`` (the learner's run, without DDP) with every callback suspended but those that
    shape batches, without gradients, and return ``xbs, ybs, ys``; the learner's fields are
    put back afterwards."""
    xbs: list[Any] = []
    ybs: list[Any] = []
    ys: list[Any] = []
    quiet = [cb.name for cb in learner.cbs if not cb.shapes_batch]
    fields = learner.fields()
    with learner.cbs.suspend(quiet):
        learner.cbs.append(_Recorder(xbs, ybs, ys), "_Recorder")
        try:
            with torch.no_grad():
                run()
        finally:
            learner.cbs.remove("_Recorder")
            learner.restore_fields(fields)
    return xbs, ybs, ys


class _Recorder(DontTrain):
    """Collects each batch and output for ``Learner.record``; as a DontTrain, it skips every
    training step."""

    order = 100

    def __init__(self, xbs: list[Any], ybs: list[Any], ys: list[Any]) -> None:
        super().__init__()
        self._lists = (xbs, ybs, ys)

    def endPass(self) -> None:
        learner = self.learner
        xbs, ybs, ys = self._lists
        xbs.append(learner.xb)
        ybs.append(learner.yb)
        ys.append(learner.y)
