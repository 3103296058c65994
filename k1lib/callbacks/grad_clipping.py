"""``GradClipping``: scale the gradients down so that their total norm is at most ``maxNorm``.

In the loop's optimizer step (``k1lib/_step.py``), before each step, with
``torch.nn.utils.clip_grad_norm_`` over the parameters the optimizer updates (its foreach
kernels where the device has them). With an ``Autocast`` scaler the gradients are unscaled
first, so ``maxNorm`` is in the units of the real gradients; under ``GradAccumulation`` only
the complete group's gradient is clipped, once, before its step.

No host sync: ``cb.norm`` is the total norm before clipping of the last step, a tensor on the
parameters' device (read it with ``float(cb.norm)`` when you need the number).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .callback import Callback

if TYPE_CHECKING:
    from .._step import OptimizerStep

__all__ = ["GradClipping"]


class GradClipping(Callback):
    """Clips the total gradient norm (``normType``-norm) to ``maxNorm`` before each step."""

    order = 65
    doc = """
- cb.maxNorm, cb.normType: the limit, and which norm
- cb.norm: the total gradient norm (before clipping) at the last step, a tensor
"""

    def __init__(self, maxNorm: float, normType: float = 2.0) -> None:  # noqa: N803 - like the README's names
        super().__init__()
        for name, value in (("maxNorm", maxNorm), ("normType", normType)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"withGradClipping: {name} must be a number > 0, got {value!r}")
        if math.isnan(maxNorm):
            raise ValueError("withGradClipping: maxNorm must be a number > 0, got nan")
        self.maxNorm = float(maxNorm)
        self.normType = float(normType)
        self.norm: torch.Tensor | None = None

    def clip(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Clip the gradients of ``params`` (already unscaled) now; returns the norm before
        clipping (kept in ``cb.norm``)."""
        self.norm = torch.nn.utils.clip_grad_norm_(params, self.maxNorm, self.normType)
        return self.norm

    def configure_step(self, step: OptimizerStep) -> None:
        step.clipping = self
