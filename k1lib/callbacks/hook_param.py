"""``HookParam``: mean, std, min and max of selected parameters after every training step.

The parameters are those of the modules that ``l.css`` gives the prop ``HookParam`` (or
``all``), with their subtrees. Statistics are computed on the parameters' device in a few
kernels per batch (parameters of one shape are reduced together), kept in preallocated device
buffers and copied to the host once an epoch: no host sync per batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._unwrap import unwrap
from ._rows import Rows
from ._selection import selected_parameters
from ._stats import STATS, Reducer
from .callback import Callback

__all__ = ["HookParam", "ParamStats"]


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


class HookParam(Callback):
    """Records mean, std, min and max of each selected parameter after each training batch."""

    doc = """
- cb.plot(): to quickly look at everything
- cb[i]: to view a single param
- cb[a:b]: to get a new HookParam with selected params"""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self._rows = Rows((0, len(STATS)))
        self._params: list[torch.nn.Parameter] = []
        self._views: list[Tensor] = []
        self._reducer = Reducer(STATS)
        self._fixed = False  # a slice of another HookParam: its parameters are chosen by name
        self._warnedFor: str | None = None

    # ---- recording --------------------------------------------------------------------------------
    def startRun(self) -> None:
        learner = self.learner
        assert learner.model is not None  # check_ready: set for every run
        if self._fixed:
            named = dict(unwrap(learner.model).named_parameters())
            missing = [n for n in self.names if n not in named]
            if missing:
                raise KeyError(f"HookParam: the model has no parameters {missing}")
            found = [(n, named[n]) for n in self.names]
        else:
            warn = self._warnedFor != learner.css
            found = selected_parameters(learner, "HookParam", warn=warn)
            if not found:
                self._warnedFor = learner.css
        names = [n for n, _ in found]
        if names != self.names:  # another selection: start a new record
            self.names = names
            self._rows = Rows((len(names), len(STATS)))
        self._params = [p for _, p in found]

    def startEpoch(self) -> None:
        # plain tensors sharing each parameter's storage: cheaper to read than Parameters, and
        # made again each epoch in case a parameter's .data was replaced
        self._views = [p.detach() for p in self._params]
        if self._params:
            try:
                expected = len(self.learner.data.train)
            except TypeError:
                return
            self._rows.reserve(expected, self._params[0].device)

    def endBatch(self) -> None:
        views = self._views
        if views and self.learner.training:
            self._reducer(views, into=self._rows.next(views[0].device))

    def endEpoch(self) -> None:
        self._rows.flush()

    def endRun(self) -> None:
        self._rows.flush()
        self._params, self._views = [], []

    # ---- reading ----------------------------------------------------------------------------------
    @property
    def data(self) -> Tensor:
        """Everything recorded: ``(batches, params, 4)`` with means, stds, mins, maxs."""
        return self._rows.host()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            picked = list(range(len(self.names)))[index]
            new = HookParam()
            new.names = [self.names[i] for i in picked]
            new._rows = Rows.of(self.data[:, picked])
            new._fixed = True
            return new
        if not isinstance(index, int):
            raise TypeError(f"HookParam[...] takes an int or a slice, got {type(index).__name__}")
        if not -len(self.names) <= index < len(self.names):
            raise IndexError(f"HookParam has {len(self.names)} params, no index {index}")
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
        self._rows.flush()
        return {"names": list(self.names), "data": self.data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.names = list(state["names"])
        self._rows = Rows.of(state["data"])

    def __repr__(self) -> str:
        lines = [f"Callback `{self.name}`: {len(self.names)} params, {len(self.data)} means and stds each:"]
        lines += [f"  {i}. {name}" for i, name in enumerate(self.names)]
        use = super().__repr__().split("\n", 1)[1]
        return "\n".join(lines) + "\n\nUse...\n" + use
