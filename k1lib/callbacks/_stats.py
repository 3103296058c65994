"""Summary statistics (mean, std, min, max) of many tensors in few kernels, on their device.

HookModule and HookParam summarise every selected tensor on every batch. One reduction per
tensor costs a kernel launch (GPU) or a dispatch (CPU) each, which dominates for the many
small tensors of a model. Here, small tensors of the same shape are stacked and reduced
together (a handful of ops per shape); a large tensor is reduced on its own (stacking it would
copy it). Nothing reaches the host: results are float32 tensors on the tensors' device.
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


def _columns(x: Tensor, names: Sequence[str]) -> Tensor:
    """``(g, len(names))`` statistics of the rows of ``x`` (``g`` rows of ``n`` values), exact
    (two passes: the std is taken around the mean)."""
    n = x.shape[1]
    mean = x.sum(1, keepdim=True).mul_(1 / n)
    out: list[Tensor] = []
    for name in names:
        if name == "means":
            out.append(mean)
        elif name == "stds":
            if n > 1:
                out.append(torch.linalg.vector_norm(x - mean, dim=1, keepdim=True).mul_(1 / math.sqrt(n - 1)))
            else:  # the sample std of one value is undefined; torch would warn
                out.append(torch.full_like(mean, math.nan))
        elif name == "mins":
            out.append(x.amin(1, keepdim=True))
        else:
            out.append(x.amax(1, keepdim=True))
    return torch.cat(out, 1)


def _as_float(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _large(t: Tensor, names: Sequence[str]) -> Tensor:
    """``(len(names),)`` statistics of one large tensor, exact. On a GPU ``std_mean`` is one
    fused pass; on a CPU it is many times slower than a mean and the norm of ``x - mean``."""
    x = t.detach().reshape(-1)
    if not x.is_floating_point():
        x = x.float()
    if x.device.type == "cuda":
        # float16's range ends at 65504: the variance of scaled gradients would overflow
        std, mean = torch.std_mean(x.float() if x.dtype == torch.float16 else x)
    else:
        x = _as_float(x)
        mean = x.mean()
        std = torch.linalg.vector_norm(x - mean) / math.sqrt(x.numel() - 1)
    known = {"means": mean, "stds": std}
    if "mins" in names or "maxs" in names:
        known["mins"], known["maxs"] = torch.aminmax(x)
    return torch.stack([known[name] for name in names]).float()


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

    def one(self, t: Tensor) -> Tensor:
        """The statistics of one large tensor now (what ``done`` takes, so it need not be kept)."""
        with torch.no_grad():
            return _large(t, self.names)

    def __call__(
        self,
        tensors: Sequence[Tensor | None],
        done: dict[int, Tensor] | None = None,
        into: Tensor | None = None,
    ) -> Tensor:
        """Statistics of each tensor. ``done``: ``one(t)`` of entries reduced earlier
        (their entries in ``tensors`` are ignored); ``into``: write the result there (a row of
        a preallocated buffer) instead of allocating."""
        done = done or {}
        key = tuple(
            "done" if i in done else None if t is None or t.numel() == 0 else (t.shape, t.dtype, t.device)
            for i, t in enumerate(tensors)
        )
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
        self, key: tuple[object, ...], tensors: Sequence[Tensor | None], done: dict[int, Tensor]
    ) -> _Plan:
        by_shape: dict[object, list[int]] = {}
        large: list[int] = []
        for i, (k, t) in enumerate(zip(key, tensors, strict=True)):
            if k == "done":
                large.append(i)
            elif t is None or t.numel() == 0:  # nothing to summarise: NaN
                by_shape.setdefault(None, []).append(i)
            elif t.numel() <= SMALL:  # same size: stacked together, whatever the shape
                by_shape.setdefault((t.numel(), t.dtype), []).append(i)
            else:
                large.append(i)
        known = [t for i, t in enumerate(tensors) if t is not None and i not in large and t.numel()]
        known += [t for i, t in enumerate(tensors) if t is not None and i in large] + list(done.values())
        device = known[0].device if known else torch.device("cpu")
        groups: _Groups = [("none" if k is None else "stack", g) for k, g in by_shape.items()]
        if large:
            groups.append(("large", large))
        flat = [i for _, group in groups for i in group]
        if flat == list(range(len(tensors))):
            return groups, None, device
        order = torch.empty(len(flat), dtype=torch.long)
        order[torch.tensor(flat)] = torch.arange(len(flat))
        return groups, order.to(device), device

    def _part(
        self,
        kind: str,
        indices: list[int],
        tensors: Sequence[Tensor | None],
        done: dict[int, Tensor],
        device: torch.device,
    ) -> Tensor:
        if kind == "none":
            return torch.full((len(indices), len(self.names)), math.nan, device=device)
        if kind == "large":
            rows = [done[i] if i in done else _large(tensors[i], self.names) for i in indices]  # type: ignore[arg-type]
            return torch.stack(rows)
        group = [tensors[i] for i in indices]  # under no_grad: no detach needed
        first = group[0]
        assert first is not None
        if len(group) == 1:
            x = first.reshape(1, -1)
        elif all(t.shape == first.shape for t in group):  # type: ignore[union-attr]
            x = torch.stack(group).reshape(len(group), -1)  # type: ignore[arg-type]
        else:  # same size, other shapes
            x = torch.stack([t.reshape(-1) for t in group])  # type: ignore[union-attr]
        return _columns(_as_float(x), self.names).float()
