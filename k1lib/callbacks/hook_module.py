"""``HookModule``: statistics of the outputs of selected modules, and of the gradients of those
outputs, on every training batch.

The modules are those that ``l.css`` gives the prop ``HookModule`` (or ``all``). A forward hook
on each takes its output; for the backward side a tensor hook on that output sees its gradient
(much cheaper than ``register_full_backward_hook``). Small outputs are kept until the end of the
batch and reduced together, shape by shape; large ones are reduced in the hook, so nothing large
is held. Results stay in preallocated device buffers and reach the host once an epoch.

Hooks exist only while training batches run: they are added at the start of each epoch, removed
before validation, at the end of the run (whatever ended it) and when the callback is suspended.
Only training batches are recorded. A module whose output is a tuple, list, dict or dataclass
(Hugging Face's ``ModelOutput``) is summarised by its first tensor (``modsel._grad``, which
``modsel.hooks(backward=...)`` uses too); one with no tensor output records NaN.

With a float16 GradScaler (``withAutocast(torch.float16)``) the gradients seen here are the
scaled ones (times the loss scale, and 1/n with ``withGradAccumulation(n)``).

Under ``torch.compile`` the hooks fire (dynamo traces them, splitting the graph where they
read autograd state), so ``fullgraph=True`` fails while HookModule selects modules: leave it
out of ``l.css`` or compile without ``fullgraph``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from modsel._grad import Key, first_tensor, hook_grads

from .._unwrap import unwrap
from ._rows import Rows
from ._selection import selected_modules
from ._stats import SMALL, STATS, Reducer
from .callback import Callback

__all__ = ["HookModule", "ModuleStats", "Stats"]

_DIRECTIONS = ("forward", "backward")


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


class _Recorder:
    """A custom statistic: ``f(tensor)`` per module per batch, on the forward and/or backward
    side, stored under ``name``."""

    def __init__(self, name: str, f: Callable[[Tensor], Tensor], directions: tuple[str, ...]) -> None:
        self.name, self.f, self.directions = name, f, directions


class HookModule(Callback):
    """Records statistics of the selected modules' outputs and output gradients per training
    batch: means and stds by default (see ``withMinRecorder``, ``withHook``, ...)."""

    doc = """
- cb.plot("means", "stds"): to plot statistics, forward and backward side by side
- cb[i]: to view a single module (cb[i].forward.means, cb[i].backward.stds)
- cb[a:b]: to get a new HookModule with selected modules
- cb.withHook(f, name), cb.withForwardHook(f, name), cb.withBackwardHook(f, name): to record
    f(tensor) as well; cb.withMinRecorder(), .withMaxRecorder(), .withHistRecorder()"""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []  # module paths
        self.types: list[str] = []
        self._builtin: list[str] = ["means", "stds"]
        self._custom: list[_Recorder] = []
        self._rows: dict[str, Rows] = {}  # "forward" / "backward" -> (batches, modules, builtins)
        self._customRows: dict[tuple[str, str], Rows] = {}  # (direction, name) -> (batches, modules, ...)
        self._modules: list[nn.Module] = []
        self._handles: list[RemovableHandle] = []
        self._fixed = False  # a slice of another HookModule: modules are chosen by path
        self._warnedFor: str | None = None
        self._running = False
        self._reducer = Reducer(self._builtin)
        self._home = torch.device("cpu")
        self._eager: set[int] = set()  # modules whose output is changed in place afterwards
        self._probing = False  # the first training batch of a run copies every small output
        self._clear_batch(0)

    # ---- choosing what to record ------------------------------------------------------------------
    def withHook(  # noqa: N802
        self, f: Callable[[Tensor], Tensor], name: str, forward: bool = True, backward: bool = True
    ) -> HookModule:
        """Also record ``f(t)`` (a tensor of any fixed shape) for each module's output ``t``
        (``forward``) and output gradient (``backward``), under ``name``."""
        if self._running:
            raise RuntimeError("HookModule: add recorders between runs, not during one")
        if name in self._builtin or any(r.name == name for r in self._custom) or not name.isidentifier():
            raise ValueError(f"HookModule: recorder name {name!r} is taken or not an identifier")
        directions = tuple(d for d, on in zip(_DIRECTIONS, (forward, backward), strict=True) if on)
        if not directions:
            raise ValueError("HookModule.withHook: forward and backward are both False")
        self._custom.append(_Recorder(name, f, directions))
        return self

    def withForwardHook(self, f: Callable[[Tensor], Tensor], name: str) -> HookModule:  # noqa: N802
        """Record ``f(output)`` per module per batch under ``name``."""
        return self.withHook(f, name, forward=True, backward=False)

    def withBackwardHook(self, f: Callable[[Tensor], Tensor], name: str) -> HookModule:  # noqa: N802
        """Record ``f(output gradient)`` per module per batch under ``name``."""
        return self.withHook(f, name, forward=False, backward=True)

    def _with_builtin(self, name: str) -> HookModule:
        if self._running:
            raise RuntimeError("HookModule: add recorders between runs, not during one")
        if name not in self._builtin:
            self._builtin = [s for s in STATS if s in (*self._builtin, name)]
            self._reducer = Reducer(self._builtin)
            self._rows = {}  # the columns changed: a new record
        return self

    def withMeanRecorder(self) -> HookModule:  # noqa: N802
        """Record means (on by default)."""
        return self._with_builtin("means")

    def withStdRecorder(self) -> HookModule:  # noqa: N802
        """Record standard deviations (on by default)."""
        return self._with_builtin("stds")

    def withMinRecorder(self) -> HookModule:  # noqa: N802
        """Record minimums as ``mins``."""
        return self._with_builtin("mins")

    def withMaxRecorder(self) -> HookModule:  # noqa: N802
        """Record maximums as ``maxs``."""
        return self._with_builtin("maxs")

    def withHistRecorder(self, bins: int = 30, low: float = -3.0, high: float = 3.0) -> HookModule:  # noqa: N802
        """Record a histogram of ``bins`` bins over ``[low, high]`` as ``hists`` (values outside
        are not counted)."""
        if not low < high or bins < 1:
            raise ValueError(
                f"HookModule.withHistRecorder: need bins >= 1 and low < high, got {bins}, {low}, {high}"
            )

        def hist(t: Tensor) -> Tensor:
            return torch.histc(t.float(), bins=bins, min=low, max=high)

        return self.withHook(hist, "hists")

    # ---- hooks --------------------------------------------------------------------------------------
    def _clear_batch(self, n: int) -> None:
        self._kept: list[list[Tensor | None]] = [[None] * n, [None] * n]
        # forward outputs: (tensor, its version then, whether a copy was kept instead)
        self._versions: dict[int, tuple[Tensor, int, bool]] = {}
        self._done: list[dict[int, Tensor]] = [{}, {}]
        self._customNow: list[list[tuple[str, Callable[[Tensor], Tensor], list[Tensor | None]]]] = [
            [(r.name, r.f, [None] * n) for r in self._custom if d in r.directions] for d in _DIRECTIONS
        ]
        self._retained: dict[int, Tensor] = {}  # module -> output whose .grad autograd keeps
        self._retaining: dict[int, Tensor] = {}  # id -> tensors we called retain_grad() on
        self._calls = [0] * n
        self._device: torch.device | None = None

    def _take(self, side: int, i: int, t: Tensor, copy: bool = False) -> None:
        """Record tensor ``t`` for module ``i`` on ``side`` (0 forward, 1 backward): large ones
        are reduced now, small ones kept for the end of the batch (``copy``: a copy, for an
        output that is later changed in place)."""
        t = t.detach()
        if t.numel() > SMALL:
            self._done[side][i] = self._reducer.one(t)
        else:
            self._kept[side][i] = t.clone() if copy else t
            if side == 0:
                self._versions[i] = (t, t._version, copy)
        for _, f, values in self._customNow[side]:
            values[i] = f(t)

    def _forward_hook(self, i: int) -> Callable[[nn.Module, Any, Any], None]:
        """The hook of module ``i``. A module called several times in a batch keeps its last
        call, forward and backward (gradients arrive in reverse order: earlier calls' are
        ignored)."""

        def backward(call: int, key: Key, grad: Tensor) -> None:
            if call == self._calls[i]:
                self._take(1, i, grad)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = output if type(output) is Tensor else first_tensor(output)
            if t is None:
                return
            self._device = t.device
            self._calls[i] += 1
            if t.grad_fn is None:  # no gradient will come
                self._take(0, i, t)
            elif not self._probing and i not in self._eager and t.numel() <= SMALL and not self._custom:
                # small: kept, and its gradient retained by autograd in C++ (cheaper than a
                # Python tensor hook); both are read at the end of the batch
                self._kept[0][i] = t
                self._versions[i] = (t, t._version, False)
                self._retained[i] = t
                if not t.retains_grad:
                    t.retain_grad()
                    self._retaining[id(t)] = t
            else:
                self._take(0, i, t, copy=self._probing or i in self._eager)
                hook_grads(t, partial(backward, self._calls[i]))

        return hook

    def _install(self) -> None:
        if not self._handles and not self.suspended:
            self._handles = [
                m.register_forward_hook(self._forward_hook(i)) for i, m in enumerate(self._modules)
            ]

    def _uninstall(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def suspendChanged(self) -> None:  # noqa: N802
        if self.suspended:
            self._uninstall()
            self._flush()
            self._clear_batch(len(self._modules))
            self._running = False  # it may miss endRun: adding recorders is allowed again

    # ---- events -------------------------------------------------------------------------------------
    def startRun(self) -> None:
        learner = self.learner
        assert learner.model is not None  # check_ready: set for every run
        if self._fixed:
            model = unwrap(learner.model)
            found = [(path, model.get_submodule(path)) for path in self.names]
        else:
            warn = self._warnedFor != learner.css
            found = selected_modules(learner, "HookModule", warn=warn)
            if not found:
                self._warnedFor = learner.css
        names = [path for path, _ in found]
        if names != self.names:
            self.names = names
            self._rows, self._customRows = {}, {}
        self.types = [type(m).__name__ for _, m in found]
        self._modules = [m for _, m in found]
        for direction in _DIRECTIONS:
            self._rows.setdefault(direction, Rows((len(names), len(self._builtin))))
        self._home = next(learner.model.parameters(), torch.empty(0)).device
        self._eager = set()
        self._probing = True
        self._running = True

    def startEpoch(self) -> None:
        if self._modules:
            self._install()

    def startBatch(self) -> None:
        if self._modules and not self._handles and self.learner.training:
            self._install()  # restored from a suspension mid-epoch
        if self._handles:
            self._clear_batch(len(self._modules))

    def startValidBatches(self) -> None:
        self._uninstall()

    def endBatch(self) -> None:
        if not self._handles:
            return
        device = self._device or self._home
        kept = self._kept
        for i, (t, version, copied) in self._versions.items():
            if t._version != version:
                # changed in place after the module (ReLU(inplace=True) next): from now on its
                # output is copied and its gradient taken by a tensor hook (the first batch of
                # a run does that for every module, to find these)
                self._eager.add(i)
                if not copied:
                    kept[0][i] = None
                    self._retained.pop(i, None)
        self._probing = False
        for i, t in self._retained.items():
            kept[0][i] = t.detach()
            kept[1][i] = t.grad
        for t in self._retaining.values():  # after reading all: one tensor may serve several modules
            t.grad = None
        # both sides in one call: outputs and gradients of one size are stacked together
        n = len(self._modules)
        done = {**self._done[0], **{n + i: v for i, v in self._done[1].items()}}
        both = self._reducer(kept[0] + kept[1], done)
        self._rows["forward"].next(device).copy_(both[:n])
        self._rows["backward"].next(device).copy_(both[n:])
        for side, direction in enumerate(_DIRECTIONS):
            for name, _, values in self._customNow[side]:
                self._custom_row(direction, name, values, device)
        self._clear_batch(len(self._modules))

    def _custom_row(
        self, direction: str, name: str, values: list[Tensor | None], device: torch.device
    ) -> None:
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

    def endEpoch(self) -> None:
        self._uninstall()
        self._flush()

    def endRun(self) -> None:
        self._uninstall()
        self._flush()
        self._modules = []
        self._running = False
        self._clear_batch(0)

    def _flush(self) -> None:
        for rows in (*self._rows.values(), *self._customRows.values()):
            rows.flush()

    # ---- reading ------------------------------------------------------------------------------------
    def _data(self) -> dict[str, dict[str, Tensor]]:
        """direction -> statistic -> ``(batches, modules, ...)`` CPU tensor."""
        out: dict[str, dict[str, Tensor]] = {}
        for direction in _DIRECTIONS:
            values: dict[str, Tensor] = {}
            rows = self._rows.get(direction)
            data = rows.host() if rows is not None else torch.empty((0, len(self.names), len(self._builtin)))
            for k, name in enumerate(self._builtin):
                values[name] = data[:, :, k]
            for (d, name), custom in self._customRows.items():
                if d == direction:
                    values[name] = custom.host()
            out[direction] = values
        return out

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            picked = list(range(len(self.names)))[index]
            new = HookModule()
            new.names = [self.names[i] for i in picked]
            new.types = [self.types[i] for i in picked] if self.types else []
            new._builtin, new._custom = list(self._builtin), list(self._custom)
            new._reducer = Reducer(new._builtin)
            for direction in _DIRECTIONS:
                rows = self._rows.get(direction)
                if rows is not None:
                    new._rows[direction] = Rows.of(rows.host()[:, picked])
            for key, rows in self._customRows.items():
                new._customRows[key] = Rows.of(rows.host()[:, picked])
            new._fixed = True
            return new
        if not isinstance(index, int):
            raise TypeError(f"HookModule[...] takes an int or a slice, got {type(index).__name__}")
        if not -len(self.names) <= index < len(self.names):
            raise IndexError(f"HookModule has {len(self.names)} modules, no index {index}")
        data = self._data()
        stats = [Stats({k: v[:, index] for k, v in data[d].items()}) for d in _DIRECTIONS]
        return ModuleStats(self.names[index], *stats)

    def plot(self, *fields: str) -> Any:
        """Plot ``fields`` (default ``"means", "stds"``): one row per field, forward on the left
        and backward on the right, a line per module; sliceable by batch."""
        from ..viz import SliceablePlot, indices

        fields = fields or ("means", "stds")
        data = self._data()
        known = [*self._builtin, *{name for (_, name) in self._customRows}]
        missing = [f for f in fields if f not in known]
        if missing:
            raise ValueError(f"HookModule.plot: {missing} not recorded; recorded: {', '.join(known)}")
        wide = [f for f in fields for d in _DIRECTIONS if f in data[d] and data[d][f].dim() > 2]
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
                for c, direction in enumerate(_DIRECTIONS):
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
        self._flush()
        data = self._data()
        return {
            "names": list(self.names),
            "types": list(self.types),
            "stats": {d: dict(data[d]) for d in _DIRECTIONS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.names, self.types = list(state["names"]), list(state["types"])
        stats = state["stats"]
        builtin = [s for s in STATS if s in stats["forward"]]
        self._builtin = builtin or ["means", "stds"]
        self._reducer = Reducer(self._builtin)
        self._rows, self._customRows = {}, {}
        for direction in _DIRECTIONS:
            values = stats[direction]
            if builtin:
                self._rows[direction] = Rows.of(torch.stack([values[k] for k in builtin], 2))
            for name, tensor in values.items():
                if name not in STATS:
                    self._customRows[(direction, name)] = Rows.of(tensor)

    def __repr__(self) -> str:
        recorded = len(self._rows["forward"]) if "forward" in self._rows else 0
        lines = [
            f"Callback `{self.name}`: {len(self.names)} modules, {recorded} batches of "
            f"{', '.join(self._builtin + [r.name for r in self._custom])} each:"
        ]
        lines += [
            f"  {i}. {name or '(root)'}" + (f" ({self.types[i]})" if i < len(self.types) else "")
            for i, name in enumerate(self.names)
        ]
        use = super().__repr__().split("\n", 1)[1]
        return "\n".join(lines) + "\n\nUse...\n" + use
