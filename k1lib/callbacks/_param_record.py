"""``ParamRecord``: HookParam's statistics of parameters (mean, std, min, max), one row per
training batch, and how to read them.

It stores and reads; ``ParamCapture`` writes its rows (on the device, in ``Rows``; a
``ShardedParamCapture`` adds an epoch's at once) and ``flush`` brings them to the host.
``l.HookParam`` (the callback is a record) and ``k1lib.watch``'s ``w.HookParam`` are records.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ._hook_record import HookRecord
from ._rows import Rows
from ._stats import STATS

__all__ = ["ParamRecord", "ParamStats", "usage"]


class ParamStats:
    """The recorded statistics of one parameter: ``means``, ``stds``, ``mins``, ``maxs`` (one
    value per training batch, CPU tensors)."""

    def __init__(self, name: str, data: Tensor) -> None:
        self.name = name
        self.means, self.stds, self.mins, self.maxs = data.unbind(1) if len(data) else [data[:, 0]] * 4

    def __len__(self) -> int:
        return len(self.means)

    def __repr__(self) -> str:
        return (
            f"Param `{self.name}`: {len(self)} batches\n"
            "Use...\n- p.means, p.stds, p.mins, p.maxs: one value per training batch"
        )


def usage(x: str) -> str:
    """The help lines of a HookParam record reached as ``x``."""
    return f"""
- {x}.plot(): to quickly look at everything
- {x}[i]: to view a single param
- {x}[a:b]: to get a new HookParam with selected params"""


class ParamRecord(HookRecord):
    """Mean, std, min and max of each named parameter, one row per training batch."""

    tool: ClassVar[str] = "HookParam"
    unit: ClassVar[str] = "params"

    def __init__(self) -> None:
        super().__init__()
        self._rows = Rows((0, len(STATS)))

    # ---- writing (by a ParamCapture) --------------------------------------------------------------
    def begin(self, names: list[str]) -> None:
        """A capture of the parameters ``names`` starts writing: another selection than the
        recorded one starts a new record."""
        if names != self.names:
            self.names = names
            self._rows = Rows((len(names), len(STATS)))

    def reserve(self, rows: int, device: torch.device) -> None:
        """Room for ``rows`` more rows now (an epoch's batches, at its start)."""
        self._rows.reserve(rows, device)

    def next_row(self, device: torch.device) -> Tensor:
        """A view of the next row, ``(params, 4)``, for the capture to fill."""
        return self._rows.next(device)

    def extend(self, rows: Tensor) -> None:
        """Rows computed elsewhere, ``(batches, params, 4)`` on the device (a
        ``ShardedParamCapture``'s, combined across ranks), after the recorded ones."""
        self._rows.extend(rows)

    def flush(self) -> None:
        """Copy the rows written on the device to the host (one transfer)."""
        self._rows.flush()

    # ---- reading ----------------------------------------------------------------------------------
    @property
    def data(self) -> Tensor:
        """Everything recorded: ``(batches, params, 4)`` with means, stds, mins, maxs."""
        return self._rows.host()

    def batches(self) -> int:
        """Training batches recorded (copied to the host) so far."""
        return len(self._rows)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            picked = self._picked(index)
            new = type(self)()
            new.names = [self.names[i] for i in picked]
            new._rows = Rows.of(self.data[:, picked])
            return new
        index = self._position(index)
        return ParamStats(self.names[index], self.data[:, index])

    def plot(self) -> Any:
        """Means, stds, mins and maxs of every param against the batch (sliceable by batch)."""
        from ..viz import SliceablePlot, indices

        names, data = list(self.names), self.data

        def draw(sl: slice) -> None:
            import matplotlib.pyplot as plt

            start, stop, step = indices(sl, len(data))
            xs = list(range(start, stop, step))
            # constrained layout makes room for the legend outside the panels, clear of the curves
            fig, axes = plt.subplots(2, 2, figsize=(12, 6), layout="constrained")
            for k, (ax, title) in enumerate(zip(axes.flat, STATS, strict=True)):
                for i, name in enumerate(names):
                    ax.plot(xs, data[start:stop:step, i, k].tolist(), label=name)
                ax.set_title(title)
                ax.set_xlabel("batch")
            if 0 < len(names) <= 12:
                handles, labels = axes.flat[0].get_legend_handles_labels()
                fig.legend(handles, labels, loc="outside right upper", fontsize="small")

        return SliceablePlot(draw)

    # ---- checkpoints and display --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {"names": list(self.names), "data": self.data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.names = list(state["names"])
        self._rows = Rows.of(state["data"])

    def summary(self) -> list[str]:
        """The repr's lines before its help: the count, then each parameter."""
        lines = [f"{len(self.names)} params, {len(self.data)} means and stds each:"]
        return lines + [f"  {i}. {name}" for i, name in enumerate(self.names)]

    def __repr__(self) -> str:
        lines = self.summary()
        lines[0] = f"HookParam record: {lines[0]}"
        return "\n".join(lines) + "\n\nUse..." + usage("hp")
