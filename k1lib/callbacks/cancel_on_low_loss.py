"""``CancelOnLowLoss``: stop a run once the loss is low enough."""

from __future__ import annotations

import torch

from .callback import Callback, CancelRunException

__all__ = ["CancelOnLowLoss"]


class CancelOnLowLoss(Callback):
    """Cancel the run when the loss drops below ``loss``: the loss of a training batch, or with
    ``epochMode`` the mean validation loss of an epoch (summed on the device during the epoch,
    read once at its end; with several processes, the mean over the ranks)."""

    def __init__(self, loss: float, epochMode: bool = False) -> None:  # noqa: N803 - README name
        super().__init__()
        self.loss = loss
        self.epochMode = epochMode
        self._sum: torch.Tensor | None = None
        self._count = 0

    def startEpoch(self) -> None:
        self._sum, self._count = None, 0

    def endLoss(self) -> None:
        learner = self.learner
        loss = learner.loss.detach()
        if self.epochMode:
            if not learner.training:
                self._sum = loss.float() if self._sum is None else self._sum + loss.float()
                self._count += 1
        elif learner.training and float(loss) < self.loss:
            raise CancelRunException(f"Low loss {self.loss:g} achieved!")

    def endEpoch(self) -> None:
        if not self.epochMode:
            return
        mean = None if self._sum is None else float(self._sum) / self._count
        # several processes: the validation loss of all ranks' batches, the same on each rank
        mean = self.learner.group.mean(mean)
        if mean is not None and mean < self.loss:
            raise CancelRunException(f"Low loss {self.loss:g} achieved!")
