"""``DType``: cast the model and each batch to one dtype."""

from __future__ import annotations

import torch

from .callback import Callback

__all__ = ["DType"]


class DType(Callback):
    """Move the model's floating-point parameters to ``dtype`` at the start of a run and cast
    each floating-point batch tensor to it (README: bfloat16 data, float32 model)."""

    shapes_batch = True

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"DType needs a torch.dtype such as torch.float32, got {dtype!r}")
        self.dtype = dtype

    def startRun(self) -> None:  # noqa: N802
        self.learner.model.to(self.dtype)

    def startBatch(self) -> None:  # noqa: N802
        learner = self.learner
        learner.xb = _cast(learner.xb, self.dtype)
        learner.yb = _cast(learner.yb, self.dtype)


def _cast(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value
