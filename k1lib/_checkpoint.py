"""SKELETON, being written (replace this file)."""

from __future__ import annotations

import os
from typing import Any


def save(learner: Any, path: str | os.PathLike[str]) -> None:
    raise NotImplementedError


def load(learner: Any, path: str | os.PathLike[str]) -> None:
    raise NotImplementedError
