"""What the records of HookModule (``ModuleRecord``) and HookParam (``ParamRecord``) share: the
names of what they watch, one entry each, and how ``record[...]`` checks its index."""

from __future__ import annotations

from typing import ClassVar

__all__ = ["HookRecord"]


class HookRecord:
    """A per-batch record of statistics about named things (modules or parameters)."""

    tool: ClassVar[str]  # "HookModule": the name in messages
    unit: ClassVar[str]  # "modules": what ``names`` are, in messages and reprs

    def __init__(self) -> None:
        super().__init__()  # cooperative: the callbacks are records and Callbacks
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def _picked(self, index: slice) -> list[int]:
        """The positions ``index`` selects, for a slice of the record."""
        return list(range(len(self.names)))[index]

    def _position(self, index: object) -> int:
        """``index`` checked: an int within ``-len(self)`` to ``len(self) - 1``."""
        if not isinstance(index, int):
            raise TypeError(f"{self.tool}[...] takes an int or a slice, got {type(index).__name__}")
        if not -len(self.names) <= index < len(self.names):
            raise IndexError(f"{self.tool} has {len(self.names)} {self.unit}, no index {index}")
        return index
