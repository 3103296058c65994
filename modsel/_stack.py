"""``warn_outside``: a warning attributed to the first caller outside some folders.

A warning raised inside a library (modsel's actions, k1lib's callbacks called by the training
loop, forward hooks called by torch) should point at the user's line, and no fixed
``stacklevel`` reaches it from every call path. ``skip_file_prefixes`` does this from Python
3.12; this walk does it on 3.10 too. modsel's actions and k1lib's ``warn`` both use it.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["warn_outside"]


def warn_outside(message: str, category: type[Warning], internal: tuple[str, ...]) -> None:
    """``warnings.warn(message, category)`` attributed to the innermost caller whose file does
    not start with one of ``internal`` (the outermost frame when every frame is internal)."""
    frame = sys._getframe(2)  # the caller of the function that called warn_outside
    level = 2  # warnings.warn's stacklevel for that frame, counted from here
    while frame.f_back is not None and frame.f_code.co_filename.startswith(internal):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level + 1)
