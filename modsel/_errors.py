"""modsel's exceptions.

The tree::

    ModselError
    ├── SelectorSyntaxError (also a ValueError)   a stylesheet or selector that does not parse
    └── TargetError                               a CLI target that cannot be loaded, or a
                                                  model whose _modules hold a non-module

Each is defined here and re-exported by ``modsel``, and says so in ``__module__``: a traceback
prints ``modsel.SelectorSyntaxError``, the name to catch, and pickle finds the class there.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModselError", "SelectorSyntaxError", "TargetError"]

_CONTEXT = 60  # characters of the offending line shown on each side of the caret


class ModselError(Exception):
    """Base class of every error modsel raises on purpose."""

    __module__ = "modsel"


class SelectorSyntaxError(ModselError, ValueError):
    """A selector or stylesheet that does not parse.

    ``line`` and ``column`` are 1-based; the message ends with the offending line and a caret
    under the column.
    """

    __module__ = "modsel"

    def __init__(self, reason: str, pattern: str, line: int, column: int) -> None:
        self.reason = reason
        self.pattern = pattern
        self.line = line
        self.column = column
        super().__init__(f"{reason} at line {line}, column {column}\n{caret_context(pattern, line, column)}")

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles ``self.args`` (the message alone), which __init__ cannot take
        return (type(self), (self.reason, self.pattern, self.line, self.column), self.__dict__)


class TargetError(ModselError):
    """A command-line target (``pkg.mod:factory`` or a saved model) that cannot be loaded, or a
    model modsel cannot walk: a value in some module's ``_modules`` that is neither a module
    nor ``None`` (the message names its path)."""

    __module__ = "modsel"


def caret_context(pattern: str, line: int, column: int) -> str:
    """The 1-based ``line`` of ``pattern`` with a caret under ``column``.

    Tabs and control characters show as spaces or escapes so the caret lines up; long lines are
    cut to a window around the column.
    """
    lines = pattern.split("\n")  # "\n" alone ends a line, as in the positions
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    shown = [_printable(ch) for ch in text]
    col = min(max(column - 1, 0), len(shown))
    start = max(0, col - _CONTEXT)
    end = min(len(shown), col + _CONTEXT)
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(shown) else ""
    caret_at = len(prefix) + sum(len(s) for s in shown[start:col])
    return f"  {prefix}{''.join(shown[start:end])}{suffix}\n  {' ' * caret_at}^"


def _printable(ch: str) -> str:
    if ch == "\t":
        return " "
    if ch.isprintable():
        return ch
    return ascii(ch)[1:-1]
