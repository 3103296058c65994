"""Which statistics HookModule records: built-in ones (``means``, ``stds``, ``mins``, ``maxs``,
computed together by ``_stats.Reducer``) and custom recorders ``f(tensor)``, each on the
forward side (outputs), the backward side (output gradients) or both.

Only the choice and its checks live here; ``ModuleCapture`` computes them, ``ModuleRecord``
stores them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._stats import STATS

__all__ = ["DIRECTIONS", "Recorder", "Recorders", "histogram"]

DIRECTIONS = ("forward", "backward")


class Recorder:
    """A custom statistic: ``f(tensor)`` per module per batch, on the forward and/or backward
    side, stored under ``name``."""

    def __init__(self, name: str, f: Callable[[Tensor], Tensor], directions: tuple[str, ...]) -> None:
        self.name, self.f, self.directions = name, f, directions


class Recorders:
    """The built-in statistics (in ``STATS`` order) and the custom recorders, by name."""

    def __init__(self) -> None:
        self.builtin: list[str] = ["means", "stds"]
        self.custom: list[Recorder] = []

    def copy(self) -> Recorders:
        new = Recorders()
        new.builtin, new.custom = list(self.builtin), list(self.custom)
        return new

    def names(self) -> list[str]:
        """Every statistic recorded, built-in ones first."""
        return [*self.builtin, *(r.name for r in self.custom)]

    def add_builtin(self, name: str) -> bool:
        """Record the built-in ``name`` too; whether that changed the built-in columns."""
        if name in self.builtin:
            return False
        self.builtin = [s for s in STATS if s in (*self.builtin, name)]
        return True

    def add(self, f: Callable[[Tensor], Tensor], name: str, forward: bool, backward: bool) -> None:
        """Record ``f(t)`` under ``name`` on the chosen sides."""
        if name in self.builtin or any(r.name == name for r in self.custom) or not name.isidentifier():
            raise ValueError(f"HookModule: recorder name {name!r} is taken or not an identifier")
        directions = tuple(d for d, on in zip(DIRECTIONS, (forward, backward), strict=True) if on)
        if not directions:
            raise ValueError("HookModule.withHook: forward and backward are both False")
        self.custom.append(Recorder(name, f, directions))


def histogram(bins: int, low: float, high: float) -> Callable[[Tensor], Tensor]:
    """``f(t)``: a histogram of ``t`` in ``bins`` bins over ``[low, high]`` (values outside
    are not counted)."""
    if not low < high or bins < 1:
        raise ValueError(
            f"HookModule.withHistRecorder: need bins >= 1 and low < high, got {bins}, {low}, {high}"
        )

    def hist(t: Tensor) -> Tensor:
        return torch.histc(t.float(), bins=bins, min=low, max=high)

    return hist
