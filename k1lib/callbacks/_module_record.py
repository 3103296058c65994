"""``ModuleRecord``: HookModule's statistics of module outputs (forward) and of their gradients
(backward), one row per training batch, and how to read them.

It stores and reads; it knows nothing of hooks or of a Learner. ``ModuleCapture`` writes its
rows (on the device, in ``Rows``), ``flush`` brings them to the host, and ``[i]``, ``[a:b]``,
``plot`` and ``state_dict`` read the host copy. ``l.HookModule`` (the callback is a record)
and ``k1lib.watch``'s ``w.HookModule`` are records.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ._hook_record import HookRecord
from ._recorders import DIRECTIONS, Recorders, histogram
from ._rows import Rows
from ._stats import STATS

__all__ = ["ModuleRecord", "ModuleStats", "Stats", "usage"]

R = TypeVar("R", bound="ModuleRecord")


class Stats:
    """One direction's statistics of one module: an attribute per recorder (``means``,
    ``stds``, ...), each a CPU tensor with one entry per training batch."""

    def __init__(self, values: dict[str, Tensor]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Tensor:
        if not name.startswith("_") and name in self._values:
            return self._values[name]
        raise AttributeError(f"no statistic {name!r}; recorded: {', '.join(self._values) or 'none'}")

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._values]

    def names(self) -> list[str]:
        return list(self._values)

    def __repr__(self) -> str:
        return f"Stats: {', '.join(f'{k} {tuple(v.shape)}' for k, v in self._values.items())}"


class ModuleStats:
    """What ``l.HookModule[i]`` returns: ``name`` (the module's path), ``forward`` and
    ``backward`` (``Stats``)."""

    def __init__(self, name: str, forward: Stats, backward: Stats) -> None:
        self.name, self.forward, self.backward = name, forward, backward

    def __repr__(self) -> str:
        return (
            f"Module `{self.name}`:\n  forward: {self.forward!r}\n  backward: {self.backward!r}\n"
            "Use...\n- m.forward.means, m.backward.stds, ...: one value per training batch"
        )


def usage(x: str) -> str:
    """The help lines of a HookModule record reached as ``x``."""
    return f"""
- {x}.plot("means", "stds"): to plot statistics, forward and backward side by side
- {x}[i]: to view a single module ({x}[i].forward.means, {x}[i].backward.stds)
- {x}[a:b]: to get a new HookModule with selected modules
- {x}.withHook(f, name), {x}.withForwardHook(f, name), {x}.withBackwardHook(f, name): to record
    f(tensor) as well; {x}.withMinRecorder(), .withMaxRecorder(), .withHistRecorder()"""


class ModuleRecord(HookRecord):
    """Statistics of each module's output and output gradient per training batch: means and
    stds by default (see ``withMinRecorder``, ``withHook``, ...)."""

    tool: ClassVar[str] = "HookModule"
    unit: ClassVar[str] = "modules"

    def __init__(self) -> None:
        super().__init__()
        self.types: list[str] = []
        self.recorders = Recorders()
        self._rows: dict[str, Rows] = {}  # "forward" / "backward" -> (batches, modules, builtins)
        self._customRows: dict[tuple[str, str], Rows] = {}  # (direction, name) -> (batches, modules, ...)
        self._running = False  # a capture writes to it: the recorders are fixed

    # ---- choosing what to record ------------------------------------------------------------------
    def _check_idle(self) -> None:
        if self._running:
            raise RuntimeError(
                "HookModule: add recorders between runs (or before a k1lib.watch block), not during one"
            )

    def withHook(  # noqa: N802
        self: R, f: Callable[[Tensor], Tensor], name: str, forward: bool = True, backward: bool = True
    ) -> R:
        """Also record ``f(t)`` (a tensor of any fixed shape) for each module's output ``t``
        (``forward``) and output gradient (``backward``), under ``name``."""
        self._check_idle()
        self.recorders.add(f, name, forward, backward)
        return self

    def withForwardHook(self: R, f: Callable[[Tensor], Tensor], name: str) -> R:  # noqa: N802
        """Record ``f(output)`` per module per batch under ``name``."""
        return self.withHook(f, name, forward=True, backward=False)

    def withBackwardHook(self: R, f: Callable[[Tensor], Tensor], name: str) -> R:  # noqa: N802
        """Record ``f(output gradient)`` per module per batch under ``name``."""
        return self.withHook(f, name, forward=False, backward=True)

    def _with_builtin(self: R, name: str) -> R:
        self._check_idle()
        if self.recorders.add_builtin(name):
            self._rows = {}  # the columns changed: a new record
        return self

    def withMeanRecorder(self: R) -> R:  # noqa: N802
        """Record means (on by default)."""
        return self._with_builtin("means")

    def withStdRecorder(self: R) -> R:  # noqa: N802
        """Record standard deviations (on by default)."""
        return self._with_builtin("stds")

    def withMinRecorder(self: R) -> R:  # noqa: N802
        """Record minimums as ``mins``."""
        return self._with_builtin("mins")

    def withMaxRecorder(self: R) -> R:  # noqa: N802
        """Record maximums as ``maxs``."""
        return self._with_builtin("maxs")

    def withHistRecorder(self: R, bins: int = 30, low: float = -3.0, high: float = 3.0) -> R:  # noqa: N802
        """Record a histogram of ``bins`` bins over ``[low, high]`` as ``hists`` (values outside
        are not counted)."""
        return self.withHook(histogram(bins, low, high), "hists")

    # ---- writing (by a ModuleCapture) -------------------------------------------------------------
    def begin(self, names: list[str], types: list[str]) -> None:
        """A capture of the modules ``names`` starts writing: another selection than the
        recorded one starts a new record. The recorders are fixed until ``end``."""
        if names != self.names:
            self.names = names
            self._rows, self._customRows = {}, {}
        self.types = types
        for direction in DIRECTIONS:
            self._rows.setdefault(direction, Rows((len(names), len(self.recorders.builtin))))
        self._running = True

    def next_rows(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Views of the next forward and backward rows of the built-in statistics."""
        return self._rows["forward"].next(device), self._rows["backward"].next(device)

    def write_custom(
        self, direction: str, name: str, values: list[Tensor | None], device: torch.device
    ) -> None:
        """One row of recorder ``name``: ``values`` per module (None: NaN). The first batch
        giving a value fixes the shape; another shape later raises, naming the modules."""
        shape = next((tuple(v.shape) for v in values if v is not None), None)
        rows = self._customRows.get((direction, name))
        if rows is None:
            if shape is None:
                return
            rows = self._customRows[(direction, name)] = Rows((len(values), *shape))
        filled = [v if v is not None else torch.full(rows.shape[1:], math.nan, device=device) for v in values]
        bad = [self.names[i] for i, v in enumerate(filled) if tuple(v.shape) != rows.shape[1:]]
        if bad:
            raise ValueError(
                f"HookModule recorder {name!r} gave shapes other than {rows.shape[1:]} for {bad}"
            )
        torch.stack([v.float() for v in filled], out=rows.next(device))

    def flush(self) -> None:
        """Copy the rows written on the device to the host (one transfer per statistic)."""
        for rows in (*self._rows.values(), *self._customRows.values()):
            rows.flush()

    def end(self) -> None:
        """The capture stopped writing: flush, and recorders may be added again."""
        self.flush()
        self._running = False

    # ---- reading ------------------------------------------------------------------------------------
    def _data(self) -> dict[str, dict[str, Tensor]]:
        """direction -> statistic -> ``(batches, modules, ...)`` CPU tensor."""
        builtin = self.recorders.builtin
        out: dict[str, dict[str, Tensor]] = {}
        for direction in DIRECTIONS:
            values: dict[str, Tensor] = {}
            rows = self._rows.get(direction)
            data = rows.host() if rows is not None else torch.empty((0, len(self.names), len(builtin)))
            for k, name in enumerate(builtin):
                values[name] = data[:, :, k]
            for (d, name), custom in self._customRows.items():
                if d == direction:
                    values[name] = custom.host()
            out[direction] = values
        return out

    def batches(self) -> int:
        """Training batches recorded (copied to the host) so far."""
        return len(self._rows["forward"]) if "forward" in self._rows else 0

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            picked = self._picked(index)
            new = type(self)()
            new.names = [self.names[i] for i in picked]
            new.types = [self.types[i] for i in picked] if self.types else []
            new.recorders = self.recorders.copy()
            for direction in DIRECTIONS:
                rows = self._rows.get(direction)
                if rows is not None:
                    new._rows[direction] = Rows.of(rows.host()[:, picked])
            for key, rows in self._customRows.items():
                new._customRows[key] = Rows.of(rows.host()[:, picked])
            return new
        index = self._position(index)
        data = self._data()
        stats = [Stats({k: v[:, index] for k, v in data[d].items()}) for d in DIRECTIONS]
        return ModuleStats(self.names[index], *stats)

    def plot(self, *fields: str) -> Any:
        """Plot ``fields`` (default ``"means", "stds"``): one row per field, forward on the left
        and backward on the right, a line per module; sliceable by batch."""
        from ..viz import SliceablePlot, indices

        fields = fields or ("means", "stds")
        data = self._data()
        known = [*self.recorders.builtin, *{name for (_, name) in self._customRows}]
        missing = [f for f in fields if f not in known]
        if missing:
            raise ValueError(f"HookModule.plot: {missing} not recorded; recorded: {', '.join(known)}")
        wide = [f for f in fields for d in DIRECTIONS if f in data[d] and data[d][f].dim() > 2]
        if wide:
            raise ValueError(
                f"HookModule.plot draws one value per batch; {sorted(set(wide))} have more "
                "(read them as cb[i].forward.hists, ...)"
            )
        names = [n or "(root)" for n in self.names]

        def draw(sl: slice) -> None:
            import matplotlib.pyplot as plt

            # constrained layout makes room for the legend outside the panels, clear of the curves
            fig, axes = plt.subplots(
                len(fields), 2, figsize=(12, 3 * len(fields)), squeeze=False, layout="constrained"
            )
            for r, field in enumerate(fields):
                for c, direction in enumerate(DIRECTIONS):
                    ax = axes[r][c]
                    values = data[direction].get(field)
                    if values is None:
                        ax.set_visible(False)
                        continue
                    start, stop, step = indices(sl, len(values))
                    xs = list(range(start, stop, step))
                    for i, name in enumerate(names):
                        series = values[start:stop:step, i]
                        if series.dim() == 1:
                            ax.plot(xs, series.tolist(), label=name)
                    ax.set_title(f"{direction} {field}")
                    ax.set_xlabel("batch")
            if 0 < len(names) <= 12 and axes[0][0].get_lines():
                handles, labels = axes[0][0].get_legend_handles_labels()
                fig.legend(handles, labels, loc="outside right upper", fontsize="small")

        return SliceablePlot(draw)

    # ---- checkpoints and display ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        data = self._data()
        return {
            "names": list(self.names),
            "types": list(self.types),
            "stats": {d: dict(data[d]) for d in DIRECTIONS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.names, self.types = list(state["names"]), list(state["types"])
        stats = state["stats"]
        builtin = [s for s in STATS if s in stats["forward"]]
        self.recorders.builtin = builtin or ["means", "stds"]
        self._rows, self._customRows = {}, {}
        for direction in DIRECTIONS:
            values = stats[direction]
            if builtin:
                self._rows[direction] = Rows.of(torch.stack([values[k] for k in builtin], 2))
            for name, tensor in values.items():
                if name not in STATS:
                    self._customRows[(direction, name)] = Rows.of(tensor)

    def summary(self) -> list[str]:
        """The repr's lines before its help: the count, then each module."""
        recorded = ", ".join(self.recorders.names())
        lines = [f"{len(self.names)} modules, {self.batches()} batches of {recorded} each:"]
        lines += [
            f"  {i}. {name or '(root)'}" + (f" ({self.types[i]})" if i < len(self.types) else "")
            for i, name in enumerate(self.names)
        ]
        return lines

    def __repr__(self) -> str:
        lines = self.summary()
        lines[0] = f"HookModule record: {lines[0]}"
        return "\n".join(lines) + "\n\nUse..." + usage("hm")
