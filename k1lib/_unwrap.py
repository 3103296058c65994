"""The user's module inside the wrappers PyTorch puts around it: ``torch.compile``'s
``OptimizedModule`` (``._orig_mod``) and ``DistributedDataParallel`` / ``DataParallel``
(``.module``).

Whatever reads the module tree by name (``l.css``, ``l.moduleSelector``, HookParam's names,
checkpoints) reads the unwrapped module, so paths and state_dict keys are those of the original
(``bulk.2.seq.0``, not ``_orig_mod.bulk.2.seq.0``) whether or not the model is wrapped. The
wrappers share the original's parameters and submodules, so hooks and ``requires_grad`` set on
them act on the wrapped model too. Training itself still calls the wrapper.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

__all__ = ["WRAPPER_PREFIXES", "strip_wrapper_prefixes", "unwrap"]

# the attribute each wrapper keeps the wrapped module in, which is also its state_dict prefix
WRAPPER_PREFIXES = ("_orig_mod.", "module.")

V = TypeVar("V")


def _inner(model: nn.Module) -> nn.Module | None:
    """The module ``model`` wraps, or None when it is no known wrapper."""
    # torch._dynamo is imported by torch.compile: where it is not loaded, nothing is compiled
    # (and importing it here would cost a second on every call site)
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        inner: Any = model._orig_mod
        return inner if isinstance(inner, nn.Module) else None
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        module: Any = model.module
        return module if isinstance(module, nn.Module) else None
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """``model`` without its ``torch.compile`` / DDP / DataParallel wrappers (any number, in
    any order); ``model`` itself when it has none."""
    seen = {id(model)}
    while (inner := _inner(model)) is not None and id(inner) not in seen:
        seen.add(id(inner))
        model = inner
    return model


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
