"""``HookSummary``: HookModule's and HookParam's per-batch statistics summed up once an epoch,
for loggers: one number per module (parameter), statistic and epoch.

Over the training batches recorded since the last look, the summary of a statistic is the
mean of its values for ``means``, ``stds`` and any custom recorder giving one number a batch
(``withHook``), the least for ``mins`` and the greatest for ``maxs``; NaN batches (a module
without output) are left out. Recorders giving more than one number a batch (``hists``) are
not summed up. The statistics are read from the host copies the callbacks make once an epoch:
no device sync.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._stats import STATS
from .hook_module import HookModule
from .hook_param import HookParam

if TYPE_CHECKING:
    from .callbacks import Callbacks

__all__ = ["HookSummary", "summarise"]

_Hooked = HookModule | HookParam


def summarise(stat: str, values: Tensor) -> Tensor:
    """``(batches, k)`` values of statistic ``stat`` -> ``(k,)``: the least of ``mins``, the
    greatest of ``maxs``, the mean of others; NaNs left out (all NaN: NaN)."""
    missing = values.isnan()
    if stat == "mins":
        out = values.masked_fill(missing, math.inf).amin(0)
    elif stat == "maxs":
        out = values.masked_fill(missing, -math.inf).amax(0)
    else:
        return torch.nanmean(values, 0)
    return out.masked_fill(missing.all(0), math.nan)


def _rows(cb: _Hooked) -> int:
    """Training batches the callback has recorded (copied to the host) so far."""
    if isinstance(cb, HookParam):
        return len(cb.data)
    if not len(cb):
        return 0
    forward = cb[0].forward
    return len(getattr(forward, forward.names()[0]))


class HookSummary:
    """Summaries, by TensorBoard tag, of what the HookModule and HookParam callbacks of a
    Callbacks recorded since the last ``take`` (or ``start``)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    @staticmethod
    def _hooked(cbs: Callbacks) -> list[_Hooked]:
        return [cb for cb in cbs if isinstance(cb, HookModule | HookParam) and not cb.suspended]

    def start(self, cbs: Callbacks) -> None:
        """Count what is recorded now as seen (a run starts: the callbacks chose their modules)."""
        self._seen = {cb.name: _rows(cb) for cb in self._hooked(cbs)}

    def take(self, cbs: Callbacks) -> dict[str, float]:
        """``{tag: value}``: ``"{name}/{direction}/{stat}/{module}"`` for a HookModule,
        ``"{name}/{stat}/{parameter}"`` for a HookParam (the root module is ``(root)``)."""
        out: dict[str, float] = {}
        for cb in self._hooked(cbs):
            rows = _rows(cb)
            seen = min(self._seen.get(cb.name, 0), rows)  # fewer: a new record, read it all
            self._seen[cb.name] = rows
            if rows == seen:
                continue
            if isinstance(cb, HookParam):
                data = cb.data[seen:]  # (batches, params, stats)
                for k, stat in enumerate(STATS):
                    for name, value in zip(cb.names, summarise(stat, data[:, :, k]).tolist(), strict=True):
                        out[f"{cb.name}/{stat}/{name}"] = value
                continue
            for i in range(len(cb)):
                module = cb[i]
                for direction in ("forward", "backward"):
                    stats = getattr(module, direction)
                    for stat in stats.names():
                        values = getattr(stats, stat)[seen:]
                        if values.dim() == 1:
                            value = float(summarise(stat, values[:, None])[0])
                            out[f"{cb.name}/{direction}/{stat}/{module.name or '(root)'}"] = value
        return out
