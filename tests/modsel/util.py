"""Helpers for the tests: the paths a selector matches, compared with the expected ones; the text
that modsel's HTML shows."""

from __future__ import annotations

import html
import re
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


def shown_text(markup: str) -> str:
    """The text a browser shows of modsel's HTML: the ``<style>`` dropped, tags stripped,
    entities unescaped."""
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<style>.*?</style>", "", markup, flags=re.S)))
