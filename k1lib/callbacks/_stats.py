"""Summary statistics (mean, std, min, max) of many tensors in few kernels, on their device.

HookModule and HookParam summarise every selected tensor on every batch. One reduction per
tensor costs a kernel launch (GPU) or a dispatch (CPU) each, which dominates for the many
small tensors of a model. Here, small tensors of the same size are stacked and reduced
together (a handful of ops per size, two passes: exact); a large tensor is reduced on its own
(stacking it would copy it), on a CPU to its sum and sum of squares (two reads: see
``_early``), which are turned into statistics for all large tensors together. Nothing reaches
the host: results are float32 tensors on the tensors' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["STATS", "Reducer"]

STATS = ("means", "stds", "mins", "maxs")
# how a list of tensors is reduced: groups (kind, indices), the gather back to list order, device
_Groups = list[tuple[str, list[int]]]
_Plan = tuple[_Groups, "Tensor | None", torch.device]
# plans kept per reducer (one per list of shapes seen)
_MAX_PLANS = 64
# tensors with at most this many elements are stacked with others of their shape
SMALL = 1 << 16
# groups of at most this many values take torch.std (one op; several ops cost more there)
_FEW = 8192
# a large tensor's moments are summed by rows of this many values (see ``_early``)
_ROW = 4096


def _columns(x: Tensor, names: Sequence[str]) -> Tensor:
    """``(g, len(names))`` statistics of the rows of ``x`` (``g`` rows of ``n`` values), exact
    (two passes: the std is taken around the mean; Welford's for a few values)."""
    n = x.shape[1]
    mean = x.mean(1, keepdim=True)
    known = {"means": mean}
    if "stds" in names:
        if n > 1 and x.numel() <= _FEW:  # one op, slow per value (Welford)
            known["stds"] = x.std(1, keepdim=True)
        elif n > 1:
            known["stds"] = torch.linalg.vector_norm(x - mean, dim=1, keepdim=True).mul_(1 / math.sqrt(n - 1))
        else:  # the sample std of one value is undefined; torch would warn
            known["stds"] = torch.full_like(mean, math.nan)
    if "mins" in names or "maxs" in names:
        known["mins"], known["maxs"] = torch.aminmax(x, dim=1, keepdim=True)
    return torch.cat([known[name] for name in names], 1)


def _as_float(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class _Early:
    """A large tensor reduced as soon as it was seen (``Reducer.one``), so that it need not be
    kept. ``final`` (CUDA): ``rows`` is its statistics. Else ``rows`` is ``(r, 2)``: the sum and
    the norm (square root of the sum of squares) of each of ``r`` slices of its ``n`` values,
    added up at the end of the batch with every other tensor's (``_Moments``); ``extremes``:
    its min and max, when asked."""

    __slots__ = ("extremes", "final", "n", "rows")

    def __init__(
        self, n: int, rows: Tensor, final: bool, extremes: tuple[Tensor, Tensor] | None = None
    ) -> None:
        self.n, self.rows, self.final, self.extremes = n, rows, final, extremes


def _sum_norm(x: Tensor) -> Tensor:
    """``(r, 2)``: the sum and the norm of each row of the 2-d ``x``."""
    return torch.stack([x.sum(1), torch.linalg.vector_norm(x, dim=1)], 1)


def _early(t: Tensor, names: Sequence[str]) -> _Early:
    """Reduce one large tensor. On a GPU ``std_mean`` is one fused pass and gives the
    statistics. On a CPU it is many times slower than a sum, and a two-pass std (the norm of
    ``x - mean``) reads the tensor three times and writes it once; here the sum and the norm of
    each slice of ``_ROW`` values are taken (two reads, a few ops), then added up in float64
    with every other large tensor's and turned into statistics all at once (``_Moments``).
    Float32 sums of slices are accurate to about 1e-7 and their errors average out across
    slices: the std stays within about ``3e-8 * (mean / std)**2`` relative
    (``tests/k1lib/test_stats.py`` checks 100 stds away from zero)."""
    x = t.detach().reshape(-1)
    if not x.is_floating_point():
        x = x.float()
    minmax = "mins" in names or "maxs" in names
    if x.device.type == "cuda":
        # float16's range ends at 65504: the variance of scaled gradients would overflow
        std, mean = torch.std_mean(x.float() if x.dtype == torch.float16 else x)
        known = {"means": mean, "stds": std}
        if minmax:
            known["mins"], known["maxs"] = torch.aminmax(x)
        return _Early(x.numel(), torch.stack([known[name] for name in names]).float(), True)
    n = x.numel()
    if x.dtype not in (torch.float32, torch.float64):
        # a float32 copy of a low-precision tensor: centred in place before its sum of squares
        # (its values sit on a coarse grid, whose rounding errors do not average out)
        x = x.float()
        extremes = torch.aminmax(x) if minmax else None
        mean = x.mean()
        centred = torch.stack([mean, torch.linalg.vector_norm(x.sub_(mean))]).double()
        total = centred[0] * n  # sum, and sum of squares = sum((x - mean)^2) + n * mean^2
        row = torch.stack([total, (centred[1].square() + total * centred[0]).sqrt()])
        return _Early(n, row.view(1, 2), False, extremes)
    whole = n - n % _ROW
    rows = _sum_norm(x[:whole].view(-1, _ROW))
    if whole < n:  # the last, shorter slice
        rows = torch.cat([rows, _sum_norm(x[whole:].view(1, -1))])
    return _Early(n, rows, False, torch.aminmax(x) if minmax else None)


class _Moments:
    """Statistics of tensors reduced to slice moments (``_early``), all in a few ops: the
    slices' sums and squared norms are added up per tensor in float64 (an ``index_add``), then
    ``var = (sum(x^2) - sum(x) * mean) / (n - 1)``. The segment ids are cached per layout."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[tuple[int, int], ...], tuple[Tensor, Tensor]] = {}

    def __call__(self, early: Sequence[_Early], names: Sequence[str]) -> Tensor:
        """``(len(early), len(names))`` float32 statistics."""
        parts = [e.rows for e in early]
        raw = (torch.cat(parts) if len(parts) > 1 else parts[0]).double()
        raw[:, 1].square_()
        layout = tuple((e.n, len(e.rows)) for e in early)
        cached = self._layouts.get(layout)
        if cached is None or cached[0].device != raw.device:
            if len(self._layouts) >= _MAX_PLANS:
                self._layouts.clear()
            counts = torch.tensor([len(e.rows) for e in early])
            segments = torch.repeat_interleave(torch.arange(len(early)), counts).to(raw.device)
            n = torch.tensor([e.n for e in early], dtype=torch.float64, device=raw.device)
            cached = self._layouts[layout] = (segments, n)
        segments, n = cached
        totals = torch.zeros((len(early), 2), dtype=torch.float64, device=raw.device)
        totals.index_add_(0, segments, raw)
        total = totals[:, 0]
        mean = total / n
        known = {"means": mean}
        if "stds" in names:
            # sum((x - mean)^2) = sum(x^2) - sum(x) * mean; rounding can take it below 0
            known["stds"] = totals[:, 1].sub(total * mean).div_(n - 1).clamp_min_(0).sqrt_()
        if "mins" in names or "maxs" in names:
            extremes = [v for e in early for v in e.extremes]  # type: ignore[union-attr]
            if len({v.dtype for v in extremes}) > 1:
                extremes = [v.double() for v in extremes]
            pairs = torch.stack(extremes).view(-1, 2).to(mean.dtype)
            known["mins"], known["maxs"] = pairs[:, 0], pairs[:, 1]
        return torch.stack([known[name] for name in names], 1).float()


class Reducer:
    """``reducer(tensors)``: a ``(len(tensors), len(names))`` float32 tensor of the chosen
    statistics (from ``STATS``) of each tensor, NaN rows for ``None`` entries. The grouping
    plan is cached per list of shapes, so a model that sees the same shapes every batch pays
    for planning once."""

    def __init__(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in STATS]
        if unknown or not names:
            raise ValueError(f"unknown statistics {unknown}; choose from {', '.join(STATS)}")
        self.names = tuple(names)
        self._plans: dict[tuple[object, ...], _Plan] = {}
        self._moments = _Moments()

    def one(self, t: Tensor) -> _Early:
        """One large tensor reduced now (what ``done`` takes, so that it need not be kept)."""
        with torch.no_grad():
            return _early(t, self.names)

    @staticmethod
    def key(tensors: Sequence[Tensor | None], done: dict[int, _Early] | None = None) -> tuple[object, ...]:
        """What the grouping plan depends on: each entry's shape and dtype (``"done"`` for
        early ones), and the device of the first entry. A caller whose tensors keep their
        shapes (parameters) computes it once and passes it."""
        entries: list[object]
        if done:
            entries = [
                "done" if i in done else None if t is None else (t.shape, t.dtype)
                for i, t in enumerate(tensors)
            ]
        else:
            entries = [None if t is None else (t.shape, t.dtype) for t in tensors]
        first = next((t for t in tensors if t is not None), None)
        entries.append(None if first is None else first.device)
        return tuple(entries)

    def __call__(
        self,
        tensors: Sequence[Tensor | None],
        done: dict[int, _Early] | None = None,
        into: Tensor | None = None,
        key: tuple[object, ...] | None = None,
    ) -> Tensor:
        """Statistics of each tensor. ``done``: ``one(t)`` of entries reduced earlier
        (their entries in ``tensors`` are ignored); ``into``: write the result there (a row of
        a preallocated buffer) instead of allocating; ``key``: ``key(tensors, done)``, when the
        caller knows it."""
        done = done or {}
        if key is None:
            key = self.key(tensors, done)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:  # shapes that keep changing (variable lengths)
                self._plans.clear()
            plan = self._plans[key] = self._plan(key, tensors, done)
        groups, order, device = plan
        with torch.no_grad():
            parts = [self._part(kind, indices, tensors, done, device) for kind, indices in groups]
            if not parts:
                return torch.empty((0, len(self.names))) if into is None else into
            result = torch.cat(parts) if len(parts) > 1 else parts[0]
            if order is None:
                return result if into is None else into.copy_(result)
            if into is None:
                return torch.index_select(result, 0, order)
            return torch.index_select(result, 0, order, out=into)

    def _plan(
        self, key: tuple[object, ...], tensors: Sequence[Tensor | None], done: dict[int, _Early]
    ) -> _Plan:
        by_shape: dict[object, list[int]] = {}
        large: list[int] = []
        for i, (k, t) in enumerate(zip(key[:-1], tensors, strict=True)):
            if k == "done":
                large.append(i)
            elif t is None or t.numel() == 0:  # nothing to summarise: NaN
                by_shape.setdefault(None, []).append(i)
            elif t.numel() <= SMALL:  # same size: stacked together, whatever the shape
                by_shape.setdefault((t.numel(), t.dtype), []).append(i)
            else:
                large.append(i)
        known = [t for i, t in enumerate(tensors) if t is not None and i not in large and t.numel()]
        known += [t for i, t in enumerate(tensors) if t is not None and i in large]
        known += [e.rows for e in done.values()]
        device = known[0].device if known else torch.device("cpu")
        groups: _Groups = []
        for k, g in by_shape.items():
            if k is None:
                groups.append(("none", g))
            else:  # "stack": one shape; "flat": one size, several shapes
                shapes = {tensors[i].shape for i in g}  # type: ignore[union-attr]
                groups.append(("stack" if len(shapes) == 1 else "flat", g))
        if large:
            groups.append(("large", large))
        flat = [i for _, group in groups for i in group]
        if flat == list(range(len(tensors))):
            return groups, None, device
        order = torch.empty(len(flat), dtype=torch.long)
        order[torch.tensor(flat)] = torch.arange(len(flat))
        return groups, order.to(device), device

    def _from_early(self, early: Sequence[_Early]) -> Tensor:
        """Statistics of early-reduced tensors, in order (moments and final rows may mix)."""
        if all(not e.final for e in early):
            return self._moments(early, self.names)
        if all(e.final for e in early):
            return torch.stack([e.rows for e in early])
        moments = iter(self._moments([e for e in early if not e.final], self.names).unbind())
        return torch.stack([e.rows if e.final else next(moments) for e in early])

    def _part(
        self,
        kind: str,
        indices: list[int],
        tensors: Sequence[Tensor | None],
        done: dict[int, _Early],
        device: torch.device,
    ) -> Tensor:
        if kind == "none":
            return torch.full((len(indices), len(self.names)), math.nan, device=device)
        if kind == "large":
            early = [done[i] if i in done else _early(tensors[i], self.names) for i in indices]  # type: ignore[arg-type]
            return self._from_early(early)
        group = [tensors[i] for i in indices]  # under no_grad: no detach needed
        if len(group) == 1:
            x = group[0].reshape(1, -1)  # type: ignore[union-attr]
        elif kind == "stack":
            x = torch.stack(group).reshape(len(group), -1)  # type: ignore[arg-type]
        else:  # "flat": same size, other shapes
            x = torch.stack([t.reshape(-1) for t in group])  # type: ignore[union-attr]
        return _columns(_as_float(x), self.names).float()
