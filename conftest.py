"""Test collection at the repository root: k1lib's integrations with optional packages are
collected (their doctests imported) only where those packages are installed."""

from __future__ import annotations

import importlib.util

collect_ignore = [
    path
    for path, package in (("k1lib/lightning.py", "lightning"), ("k1lib/hf.py", "transformers"))
    if importlib.util.find_spec(package) is None
]
