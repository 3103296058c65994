"""The user's module inside the wrappers PyTorch puts around it: ``torch.compile``'s
``OptimizedModule`` (``._orig_mod``) and ``DistributedDataParallel`` / ``DataParallel``
(``.module``).

modsel reads the tree of the unwrapped module, so paths are those of the original
(``bulk.2.seq.0``, not ``_orig_mod.bulk.2.seq.0`` or ``module.bulk.2.seq.0``) whether or not the
model is wrapped: a regex from ``to_regex`` on a compiled model matches the names PEFT and
torchao see. The wrappers share the original's parameters and submodules, so
``requires_grad`` and hooks set through the tree act on the wrapped model too, with one
caveat of torch's: a compiled model that has already run may keep running its compiled graph
without calling hooks added afterwards (dynamo does not always guard on hooks); add hooks
before the first call, or call ``torch._dynamo.reset()``. k1lib follows the same rule
(its checkpoints' keys, HookParam's names).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

__all__ = ["WRAPPER_PREFIXES", "unwrap"]

# the attribute each wrapper keeps the wrapped module in, which is also its state_dict prefix
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


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
    any order); ``model`` itself when it has none.

        >>> import torch.nn as nn, modsel
        >>> inner = nn.Linear(2, 2)
        >>> modsel.unwrap(nn.DataParallel(inner)) is inner
        True
    """
    seen = {id(model)}
    while (inner := _inner(model)) is not None and id(inner) not in seen:
        seen.add(id(inner))
        model = inner
    return model
