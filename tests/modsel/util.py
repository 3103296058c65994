"""One helper for selector tests: the paths a selector matches, compared with the expected ones."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

import modsel


def paths(model: nn.Module, css: str, **kwargs: bool) -> list[str]:
    return [path for path, _ in modsel.match(model, css, **kwargs)]


def assert_selector(model: nn.Module, css: str, expected: Sequence[str], **kwargs: bool) -> None:
    """``css`` matches exactly ``expected`` (paths, in named_modules() order) in ``model``."""
    got = paths(model, css, **kwargs)
    assert got == list(expected), f"{css!r}: expected {list(expected)}, got {got}"


def in_seqs(*indices: int) -> list[str]:
    """``bulk.B.seq.I`` for each SkipBlock B of Network() and each I, in document order."""
    return [f"bulk.{b}.seq.{i}" for b in (2, 3, 4) for i in indices]
