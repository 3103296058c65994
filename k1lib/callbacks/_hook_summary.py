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

from ._module_record import ModuleRecord
from ._param_record import ParamRecord
from ._recorders import DIRECTIONS
from ._stats import STATS
from .hook_module import HookModule
from .hook_param import HookParam

if TYPE_CHECKING:
    from .callbacks import Callbacks

__all__ = ["HookSummary", "summaries_since", "summarise"]

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


def summaries_since(record: ModuleRecord | ParamRecord, seen: int, name: str) -> dict[str, float]:
    """``{tag: value}`` over the host rows of ``record`` after the first ``seen`` (all of them
    when it holds fewer: a new record): ``"{name}/{direction}/{stat}/{module}"`` for a module
    record, ``"{name}/{stat}/{parameter}"`` for a parameter record (the root module is
    ``(root)``). TensorBoard, Lightning's and the Trainer's watches log these."""
    rows = record.batches()
    seen = min(seen, rows)
    out: dict[str, float] = {}
    if rows == seen:
        return out
    if isinstance(record, ParamRecord):
        data = record.data[seen:]  # (batches, params, stats)
        for k, stat in enumerate(STATS):
            for param, value in zip(record.names, summarise(stat, data[:, :, k]).tolist(), strict=True):
                out[f"{name}/{stat}/{param}"] = value
        return out
    for i in range(len(record)):
        module = record[i]
        for direction in DIRECTIONS:
            stats = getattr(module, direction)
            for stat in stats.names():
                values = getattr(stats, stat)[seen:]
                if values.dim() == 1:  # one number a batch (not hists)
                    value = float(summarise(stat, values[:, None])[0])
                    out[f"{name}/{direction}/{stat}/{module.name or '(root)'}"] = value
    return out


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
        self._seen = {cb.name: cb.batches() for cb in self._hooked(cbs)}

    def take(self, cbs: Callbacks) -> dict[str, float]:
        """``{tag: value}`` (``summaries_since``, named by each callback's name) of what each
        callback recorded since the last look."""
        out: dict[str, float] = {}
        for cb in self._hooked(cbs):
            out.update(summaries_since(cb, self._seen.get(cb.name, 0), cb.name))
            self._seen[cb.name] = cb.batches()
        return out
