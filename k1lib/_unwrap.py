"""Checkpoint keys saved from a wrapped model. The unwrapping rule itself is modsel's
(``modsel.unwrap``: ``torch.compile``, DDP and DataParallel), so paths in ``l.css``, HookParam's
names and checkpoint keys are those of the user's module whether or not it is wrapped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from modsel import unwrap
from modsel._wrappers import WRAPPER_PREFIXES

__all__ = ["WRAPPER_PREFIXES", "strip_wrapper_prefixes", "unwrap"]

V = TypeVar("V")


def strip_wrapper_prefixes(state: Mapping[str, V], expected: set[str]) -> dict[str, V] | None:
    """``state`` (a state_dict saved from a wrapped model: keys ``_orig_mod.x``, ``module.x``,
    ...) with the wrapper prefixes that every key shares removed, when that makes its keys
    exactly ``expected``; None when it does not. A model whose own first child is called
    ``module`` is no problem: its keys already equal ``expected`` and nothing is stripped."""
    keys = list(state)
    stripped = dict(state)
    while keys:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in keys)), None)
        if prefix is None:
            return None
        stripped = {k[len(prefix) :]: v for k, v in stripped.items()}
        keys = list(stripped)
        if set(keys) == expected:
            return stripped
    return None
