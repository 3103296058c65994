"""``EpochLimit``: at most N epochs per run."""

from __future__ import annotations

from .callback import Callback, CancelRunException

__all__ = ["EpochLimit"]


class EpochLimit(Callback):
    """End the run after ``limit`` epochs."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError(f"EpochLimit: limit must be at least 1, got {limit}")
        self.limit = limit

    def startEpoch(self) -> None:
        if self.learner.epoch >= self.limit:
            raise CancelRunException(f"Epoch limit {self.limit} reached")
