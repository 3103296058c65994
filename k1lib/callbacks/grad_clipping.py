"""``GradClipping``: scale the gradients down so that their total norm is at most ``maxNorm``.

At ``startStep`` of each training batch that steps, with ``torch.nn.utils.clip_grad_norm_``
over the parameters the optimizer updates (its foreach kernels where the device has them).
With an ``Autocast`` scaler the gradients are unscaled first, so ``maxNorm`` is in the units of
the real gradients; under ``GradAccumulation`` only the complete group's gradient is clipped,
once, before its step.

No host sync: ``cb.norm`` is the total norm before clipping of the last step, a tensor on the
parameters' device (read it with ``float(cb.norm)`` when you need the number).
"""

from __future__ import annotations

import math

import torch

from .callback import Callback
from .grad_accumulation import accumulating, active

__all__ = ["GradClipping"]


class GradClipping(Callback):
    """Clips the total gradient norm (``normType``-norm) to ``maxNorm`` before each step."""

    order = 65  # after GradAccumulation, before Autocast steps
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

    def clip(self) -> torch.Tensor:
        """Clip the gradients of the optimizer's parameters now (unscaling them first when an
        ``Autocast`` scaler is in use); returns the norm before clipping."""
        from .autocast import Autocast

        learner = self.learner
        for cb in active(learner, Autocast):
            cb.unscale()
        params = [p for group in learner.opt.param_groups for p in group["params"] if p.grad is not None]
        self.norm = torch.nn.utils.clip_grad_norm_(params, self.maxNorm, self.normType)
        return self.norm

    def startStep(self) -> bool:  # noqa: N802
        if self.learner.model.training and not accumulating(self.learner):
            self.clip()
        return False
