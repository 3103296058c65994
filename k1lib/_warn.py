"""``warn``: a warning attributed to the user's line, not to k1lib's.

Many of k1lib's warnings are raised inside callbacks that the training loop calls, or inside
forward hooks that torch calls, so no fixed ``stacklevel`` reaches the user's ``l.run(...)`` or
``l.load(...)`` line. ``warn`` walks the stack to the first frame outside k1lib, modsel, torch and
contextlib and gives ``warnings.warn`` that level: modsel's ``warn_outside`` (which modsel's
actions use for their own warnings), with k1lib's and torch's folders added.
"""

from __future__ import annotations

import contextlib
import os

import torch

import modsel
from modsel._stack import warn_outside

__all__ = ["warn"]


def _folder(module_file: str | None) -> str:
    assert module_file is not None  # packages imported from files
    return os.path.dirname(os.path.abspath(module_file)) + os.sep


# frames in these files are not the user's: k1lib's and modsel's own, torch's (nn.Module.__call__
# runs forward hooks), and contextlib's (``with`` blocks over generators)
_INTERNAL = (
    _folder(__file__),
    _folder(modsel.__file__),
    _folder(torch.__file__),
    contextlib.__file__,
)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the innermost caller outside k1lib,
    modsel, torch and contextlib (the outermost frame when every frame is internal)."""
    warn_outside(message, category, _INTERNAL)
