"""``Rows``: per-batch records kept on the device in preallocated chunks, copied to the host in
one transfer per flush (HookModule and HookParam flush once an epoch).

Writing a row is a copy into a view of the current chunk: no allocation and no host sync on
the training path. When a chunk is full, the next one is allocated (chunks double in size), so
a run of unknown length never copies what it already recorded.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Rows"]


class Rows:
    """A growing ``(rows, *shape)`` float32 record; ``host()`` is everything recorded so far."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self._chunks: list[Tensor] = []  # on the device, not yet flushed
        self._used = 0  # rows used in the last chunk
        self._host: list[Tensor] = []  # flushed, on the CPU
        self._hostRows = 0

    def reserve(self, rows: int, device: torch.device) -> None:
        """Allocate room for ``rows`` more rows now (e.g. an epoch's batches at its start)."""
        if rows > 0:
            if self._chunks:  # close the current chunk: its unused rows hold no data
                self._chunks[-1] = self._chunks[-1][: self._used]
            self._chunks.append(torch.empty((rows, *self.shape), device=device))
            self._used = 0

    def next(self, device: torch.device) -> Tensor:
        """A view of the next row, to be filled by the caller."""
        if not self._chunks or self._used >= len(self._chunks[-1]):
            size = max(64, 2 * len(self._chunks[-1])) if self._chunks else 64
            self._chunks.append(torch.empty((size, *self.shape), device=device))
            self._used = 0
        row = self._chunks[-1][self._used]
        self._used += 1
        return row

    def extend(self, block: Tensor) -> None:
        """Rows written elsewhere, ``(n, *shape)`` on the device, after those recorded (kept as
        they are, not copied)."""
        if self._chunks:  # close the current chunk: its unused rows hold no data
            self._chunks[-1] = self._chunks[-1][: self._used]
        self._chunks.append(block)
        self._used = len(block)

    def take(self) -> Tensor | None:
        """The rows recorded on the device since the last flush or take, in one tensor on the
        device (None when there are none), and forget them."""
        if not self._chunks:
            return None
        used = [c for c in self._chunks[:-1]] + [self._chunks[-1][: self._used]]
        used = [c for c in used if len(c)]
        self._chunks, self._used = [], 0
        if not used:
            return None
        return torch.cat(used) if len(used) > 1 else used[0]

    def flush(self) -> None:
        """Copy the rows recorded on the device to the host (one transfer)."""
        block = self.take()
        if block is not None:
            self._host.append(block.cpu())
            self._hostRows += len(block)

    def host(self) -> Tensor:
        """All rows recorded and flushed so far, ``(rows, *shape)`` on the CPU."""
        if len(self._host) > 1:
            self._host = [torch.cat(self._host)]
        return self._host[0] if self._host else torch.empty((0, *self.shape))

    def __len__(self) -> int:
        return self._hostRows

    @classmethod
    def of(cls, data: Tensor) -> Rows:
        """Rows holding ``data`` (a host tensor), e.g. a slice or a loaded checkpoint."""
        rows = cls(tuple(data.shape[1:]))
        if len(data):
            rows._host, rows._hostRows = [data], len(data)
        return rows
