"""``LossLandscape``: SKELETON, being written (replace this file)."""

from __future__ import annotations

from typing import Any

from .callback import Callback

__all__ = ["LossLandscape"]


class LossLandscape(Callback):
    def __init__(self, *args: Any) -> None:
        super().__init__()
