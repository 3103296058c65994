"""``DontTrain``: run batches forward only (no backward pass, no optimizer step)."""

from __future__ import annotations

from .callback import Callback

__all__ = ["DontTrain"]


class DontTrain(Callback):
    """Skip backward, step and zero_grad on every batch: evaluate a model with the loop."""

    def startBackward(self) -> bool:
        return True

    def startStep(self) -> bool:
        return True

    def startZeroGrad(self) -> bool:
        return True
