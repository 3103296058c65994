"""Summary statistics (mean, std, min, max) of many tensors in few kernels, on their device.

HookModule and HookParam summarise every selected tensor on every batch. One reduction per
tensor costs a kernel launch (GPU) or a dispatch (CPU) each, which dominates for the many
small tensors of a model. Here, small tensors of the same size are stacked and reduced
together (a handful of ops per size, two passes: exact); a large tensor is reduced on its own
(stacking it would copy it) as soon as it is seen (``_early``), and the last steps are taken
for all large tensors together. Nothing reaches the host: results are float32 tensors on the
tensors' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RESIDUALS", "STATS", "Reducer"]

STATS = ("means", "stds", "mins", "maxs")
# one more a Reducer may give: the mean of ``x - mean``, what the mean (rounded to the tensor's
# float dtype) missed, so that ``mean + residual`` in float64 is the mean to far more digits.
# ShardedParamCapture needs it: combining shards' spreads takes each shard's mean precisely
# (float32 means of values near 500 are off by 3e-5, enough to spoil a std of 0.01)
RESIDUALS = "residuals"
# how a list of tensors is reduced: groups (kind, indices), the gather back to list order, device
_Groups = list[tuple[str, list[int]]]
_Plan = tuple[_Groups, "Tensor | None", torch.device]
# plans kept per reducer (one per list of shapes seen)
_MAX_PLANS = 64
# tensors with at most this many elements are stacked with others of their shape
SMALL = 1 << 16
# groups of at most this many values take torch.std (one op; several ops cost more there)
_FEW = 8192


def _columns(x: Tensor, names: Sequence[str]) -> Tensor:
    """``(g, len(names))`` statistics of the rows of ``x`` (``g`` rows of ``n`` values), exact
    (two passes: the std is taken around the mean; Welford's for a few values)."""
    n = x.shape[1]
    mean = x.mean(1, keepdim=True)
    known = {"means": mean}
    centred = None
    if RESIDUALS in names:
        centred = x - mean
        known[RESIDUALS] = centred.mean(1, keepdim=True)
    if "stds" in names:
        if n > 1 and x.numel() <= _FEW:  # one op, slow per value (Welford)
            known["stds"] = x.std(1, keepdim=True)
        elif n > 1:
            centred = x - mean if centred is None else centred
            known["stds"] = torch.linalg.vector_norm(centred, dim=1, keepdim=True).mul_(1 / math.sqrt(n - 1))
        else:  # the sample std of one value is undefined; torch would warn
            known["stds"] = torch.full_like(mean, math.nan)
    if "mins" in names or "maxs" in names:
        known["mins"], known["maxs"] = torch.aminmax(x, dim=1, keepdim=True)
    return torch.cat([known[name] for name in names], 1)


def _as_float(t: Tensor) -> Tensor:
    """``t`` in a float dtype its values fit: float64 for wide integers (float32 rounds values
    above 2**24), float32 for the rest."""
    if t.dtype in (torch.float32, torch.float64):
        return t
    return t.double() if t.dtype in (torch.int64, torch.int32) else t.float()


class _Early:
    """A large tensor reduced as soon as it was seen (``Reducer.one``), so that it need not be
    kept. ``final`` (CUDA): ``row`` is its statistics. Else ``row`` is its mean and the norm of
    its deviations from the mean (and their mean, when ``RESIDUALS`` are asked), turned into
    statistics at the end of the batch together with every other large tensor's (``_Centred``);
    ``extremes``: its min and max, when asked."""

    __slots__ = ("extremes", "final", "n", "row")

    def __init__(
        self, n: int, row: Tensor, final: bool, extremes: tuple[Tensor, Tensor] | None = None
    ) -> None:
        self.n, self.row, self.final, self.extremes = n, row, final, extremes


def _early(t: Tensor, names: Sequence[str]) -> _Early:
    """Reduce one large tensor. On a GPU ``std_mean`` is one fused pass and gives the
    statistics. Elsewhere it is many times slower than a mean: there the mean and the norm of
    ``x - mean`` are taken (two passes, exact), and the division and the stacking into rows are
    left to ``_Centred``, once for all large tensors of the batch.

    Why not one pass (a sum and a sum of squares): in float32 the variance then comes out as a
    difference of two large, rounded numbers, off by about ``1e-7 * (mean / std)**2``; for a
    constant-initialised weight or an output with a large bias that is no std at all."""
    x = t.detach().reshape(-1)
    minmax = "mins" in names or "maxs" in names
    if x.device.type == "cuda":
        if not x.is_floating_point():
            x = x.float()
        # float16's range ends at 65504: the variance of scaled gradients would overflow
        wide = x.float() if x.dtype == torch.float16 else x
        std, mean = torch.std_mean(wide)
        known = {"means": mean, "stds": std}
        if RESIDUALS in names:  # a pass of its own: std_mean keeps no deviations
            known[RESIDUALS] = (wide - mean).mean()
        if minmax:
            known["mins"], known["maxs"] = torch.aminmax(x)
        return _Early(x.numel(), torch.stack([known[name] for name in names]).float(), True)
    x = _as_float(x)
    mean = x.mean()
    centred = x - mean
    moments = [mean, torch.linalg.vector_norm(centred)]
    if RESIDUALS in names:
        moments.append(centred.mean())
    return _Early(x.numel(), torch.stack(moments), False, torch.aminmax(x) if minmax else None)


class _Centred:
    """Statistics of tensors reduced by ``_early`` off CUDA, in a few ops for all of them:
    ``std = norm / sqrt(n - 1)``. The counts are cached per list of sizes (bounded)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[int, ...], Tensor] = {}

    def __call__(self, early: Sequence[_Early], names: Sequence[str]) -> Tensor:
        """``(len(early), len(names))`` float32 statistics."""
        rows = [e.row for e in early]
        if len({r.dtype for r in rows}) > 1:
            rows = [r.double() for r in rows]  # float32 and float64 (the input's own dtypes)
        raw = torch.stack(rows)
        sizes = tuple(e.n for e in early)
        scale = self._counts.get(sizes)
        if scale is None or scale.device != raw.device or scale.dtype != raw.dtype:
            if len(self._counts) >= _MAX_PLANS:
                self._counts.clear()
            scale = torch.tensor(sizes, dtype=torch.float64).sub_(1).rsqrt_().to(raw.device, raw.dtype)
            self._counts[sizes] = scale
        known = {"means": raw[:, 0], "stds": raw[:, 1] * scale}
        if RESIDUALS in names:
            known[RESIDUALS] = raw[:, 2]
        if "mins" in names or "maxs" in names:
            extremes = [v for e in early for v in e.extremes]  # type: ignore[union-attr]
            if len({v.dtype for v in extremes}) > 1:
                extremes = [v.double() for v in extremes]
            pairs = torch.stack(extremes).view(-1, 2)
            known["mins"], known["maxs"] = pairs[:, 0].to(raw.dtype), pairs[:, 1].to(raw.dtype)
        return torch.stack([known[name] for name in names], 1).float()


class Reducer:
    """``reducer(tensors)``: a ``(len(tensors), len(names))`` float32 tensor of the chosen
    statistics (from ``STATS``) of each tensor, NaN rows for ``None`` entries. The grouping
    plan is cached per list of shapes, so a model that sees the same shapes every batch pays
    for planning once."""

    def __init__(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in (*STATS, RESIDUALS)]
        if unknown or not names:
            raise ValueError(f"unknown statistics {unknown}; choose from {', '.join(STATS)}")
        self.names = tuple(names)
        self._plans: dict[tuple[object, ...], _Plan] = {}
        self._centred = _Centred()

    def one(self, t: Tensor) -> _Early:
        """One large tensor reduced now (what ``done`` takes, so that it need not be kept)."""
        with torch.no_grad():
            return _early(t, self.names)

    @staticmethod
    def key(tensors: Sequence[Tensor | None], done: dict[int, _Early] | None = None) -> tuple[object, ...]:
        """What the grouping plan depends on: each entry's shape and dtype (``"done"`` for
        early ones), and the device of the first entry (of an early one's row when there is no
        other). A caller whose tensors keep their shapes (parameters) computes it once and
        passes it."""
        entries: list[object]
        if done:
            entries = [
                "done" if i in done else None if t is None else (t.shape, t.dtype)
                for i, t in enumerate(tensors)
            ]
        else:
            entries = [None if t is None else (t.shape, t.dtype) for t in tensors]
        if done:
            first = next((t for i, t in enumerate(tensors) if t is not None and i not in done), None)
        else:
            first = next((t for t in tensors if t is not None), None)
        if first is not None:
            entries.append(first.device)
        else:  # only early entries (or none): where their rows live
            entries.append(next((e.row.device for e in (done or {}).values()), None))
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
        known += [e.row for e in done.values()]
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
            return self._centred(early, self.names)
        if all(e.final for e in early):
            return torch.stack([e.row for e in early])
        centred = iter(self._centred([e for e in early if not e.final], self.names).unbind())
        return torch.stack([e.row if e.final else next(centred) for e in early])

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
