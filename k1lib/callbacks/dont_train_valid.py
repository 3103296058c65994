"""``DontTrainValid``: validation batches run without gradients and never train the model."""

from __future__ import annotations

from typing import Any

import torch

from .callback import Callback

__all__ = ["DontTrainValid"]


class DontTrainValid(Callback):
    """During validation batches (``l.training`` False): no autograd graph, no backward,
    no step. Gradients come back on when the validation part of the epoch ends."""

    def __init__(self) -> None:
        super().__init__()
        self._no_grad: Any = None

    def startValidBatches(self) -> None:
        self._no_grad = torch.no_grad()
        self._no_grad.__enter__()

    def _leave(self) -> None:
        if self._no_grad is not None:
            self._no_grad.__exit__(None, None, None)
            self._no_grad = None

    def endEpoch(self) -> None:
        self._leave()

    def endRun(self) -> None:
        self._leave()

    def startBackward(self) -> bool:
        return not self.learner.training

    def startStep(self) -> bool:
        return not self.learner.training

    def startZeroGrad(self) -> bool:
        return not self.learner.training
