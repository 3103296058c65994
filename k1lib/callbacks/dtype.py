"""``DType``: cast the model and each batch to one dtype."""

from __future__ import annotations

import torch

from .._batch import map_tensors
from .callback import Callback

__all__ = ["DType"]


class DType(Callback):
    """Move the model's floating-point parameters to ``dtype`` at the start of a run and cast
    each floating-point tensor of each batch to it, inside tuples, lists and mappings too
    (README: bfloat16 data, float32 model)."""

    shapes_batch = True

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"DType needs a torch.dtype such as torch.float32, got {dtype!r}")
        self.dtype = dtype

    def startRun(self) -> None:
        model = self.learner.model
        assert model is not None  # check_ready: set for every run
        model.to(self.dtype)

    def startBatch(self) -> None:
        learner = self.learner
        xb, yb = learner.xb, learner.yb
        learner.xb = _cast(xb, self.dtype)
        learner.yb = learner.xb if yb is xb else _cast(yb, self.dtype)


def _cast(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor):  # the common case, without the walk
        return value.to(dtype) if value.is_floating_point() else value
    return map_tensors(value, lambda t: t.to(dtype) if t.is_floating_point() else t)
