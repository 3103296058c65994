"""``BatchLimit``: end each epoch after N batches."""

from __future__ import annotations

from .callback import Callback, CancelEpochException

__all__ = ["BatchLimit"]


class BatchLimit(Callback):
    """Cancel the epoch (``CancelEpochException``) once ``limit`` batches have run in it,
    counting training and validation batches together, as the 2021 k1lib did."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError(f"BatchLimit: limit must be at least 1, got {limit}")
        self.limit = limit
        self._count = 0

    def startEpoch(self) -> None:
        self._count = 0

    def startBatch(self) -> None:
        if self._count >= self.limit:
            raise CancelEpochException(f"batch limit {self.limit} reached")
        self._count += 1
