"""``cssOptimizer``: an optimizer whose parameter groups come from CSS rules (modsel)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

import modsel

from ._unwrap import unwrap
from ._warn import warn

__all__ = ["cssOptimizer"]


def cssOptimizer(  # noqa: N802 - k1lib's camelCase public names
    model: nn.Module,
    optimizerClass: type[torch.optim.Optimizer],  # noqa: N803
    rules: dict[str, dict[str, Any]],
    **defaults: Any,
) -> torch.optim.Optimizer:
    """``optimizerClass`` over ``model``'s trainable parameters, grouped by ``rules``
    (``{css: options}``; a later rule wins for a module both select, as in CSS) with
    ``defaults`` for the rest. For layer-wise learning rates::

        l.opt = k1lib.cssOptimizer(l.model, optim.AdamW, {"#head Linear": {"lr": 1e-3}}, lr=1e-4)
    """
    # a compiled or DDP-wrapped model shares its parameters with the module it wraps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = modsel.param_groups(unwrap(model), rules, **defaults)
    for w in caught:  # modsel's warnings point at this file: point them at the caller's line
        warn(str(w.message), w.category)
    return optimizerClass(groups, **defaults)
