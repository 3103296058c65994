"""k1lib's module tree: modsel's ModuleSelector with the 2021 k1lib's camelCase helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import modsel

__all__ = ["ModuleSelector"]


class ModuleSelector(modsel.ModuleSelector):
    """What ``l.moduleSelector`` returns: the annotated tree of ``l.model`` for ``l.css``, with
    ``hookF`` / ``hookB`` (and modsel's ``freeze``) acting on the modules the css selected."""

    __slots__ = ()

    def hookF(  # noqa: N802 - the 2021 k1lib's name
        self, f: Callable[..., Any], prop: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Forward hooks ``f(path, module, inputs, output)`` on the selected modules (with
        ``prop``: those having it or ``all``) for a ``with`` block."""
        return self.hook_forward(f, prop)

    def hookB(  # noqa: N802 - the 2021 k1lib's name
        self, f: Callable[..., Any], prop: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Backward hooks ``f(path, module, grad, key)`` (``modsel.hooks``) on the selected
        modules for a ``with`` block."""
        return self.hook_backward(f, prop)
