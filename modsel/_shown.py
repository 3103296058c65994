"""Text that shows as itself: the base of what ``tree()`` and ``explain()`` return.

A plain ``str`` in a REPL or notebook shows as its repr, one quoted line with ``\\n`` escapes.
These are ``str`` subclasses (so ``print``, ``in``, ``splitlines`` and ``==`` work as before)
whose repr is the text itself and whose ``_repr_html_`` gives notebooks a monospace block.
Pickling, ``str(x)``, slicing and concatenation give plain ``str``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MONOSPACE", "Shown"]

# inline, so columns stay aligned whatever font the notebook's CSS gives to <pre> or <div>;
# single quotes inside, as it goes in a double-quoted style attribute
MONOSPACE = (
    "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono',monospace;"
    "white-space:pre;line-height:1.25;text-align:left;overflow-x:auto"
)


class Shown(str):
    """A ``str`` whose repr is itself; subclasses add ``_repr_html_``."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython's printer (it asks for this before its own printer for ``str``)."""
        for i, line in enumerate(str(self).split("\n")):
            if i:
                p.break_()
            p.text(line)

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return str, (str(self),)  # unpickles (and copies) as the plain text
