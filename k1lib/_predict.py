"""``Learner.predict``: the model's outputs over a loader, as training would see them.

Each batch goes through the callbacks that shape batches and outputs (``shapes_batch``:
Device, DType, ModifyBatch, ModifyOutput, Autocast), with the events they act on:
``startRun`` once (Device moves the model, DType casts it), then for each batch
``startBatch``, ``startPass``, the forward pass, ``endPass`` and ``endBatch``, and ``endRun``
at the end, however it ends. No loss is computed, no ``startLoss`` / ``endLoss``, no step.
Every other callback is suspended for the duration (``cbs.suspend``), so Loss, HookModule,
HookParam, metrics, the progress bar and Autosave neither record nor print anything.

The model is in eval mode and autograd is off (``torch.no_grad``); ``l.training`` is False.
Afterwards (also after an exception) the model's mode, the learner's fields (``epoch``,
``batch``, ``xb``, ``y``, ``training``, ...), the suspensions, and the random generators
(torch's and those the loaders hold: predicting on a shuffled loader does not change the
next run's order) are as before. What ``startRun`` did to the model (moved, cast) stays, as
after ``l.run``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ._batch import forward, split
from ._fsdp import reshard
from ._rng import RngSnapshot

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = ["Predictions", "predict"]


class Predictions(NamedTuple):
    """What ``Learner.predict`` returns (unpacks as ``outputs, targets = l.predict()``).

    - ``outputs``: the model's outputs (after ModifyOutput); a Hugging Face output (or any
      mapping) with ``logits`` gives its logits;
    - ``targets``: each batch's ``yb`` (after ModifyBatch, DType, Device); for a mapping batch,
      its ``labels`` entry (None when it has none).

    Each is one tensor, the batches' concatenated along dim 0, when every batch gave a tensor
    of the same shape past dim 0 (and dtype and device); otherwise the list of the batches'
    values (an empty list for an empty loader). Tensors stay on the device the model ran on.
    """

    outputs: Any
    targets: Any


def predict(learner: Learner, loader: Iterable[Any] | None) -> Predictions:
    """See the module docstring."""
    model = learner.model
    if model is None:
        raise RuntimeError("Learner.predict needs a model: set l.model = ... first")
    if loader is None:
        loader = getattr(learner.data, "valid", None)
        if loader is None:
            raise RuntimeError(
                "Learner.predict: no loader given and l.data has no validation loader; "
                "pass one: l.predict(loader)"
            )
    cbs = learner.cbs
    fields, was_training = learner.fields(), model.training
    generators = [RngSnapshot(learner.data), RngSnapshot(SimpleNamespace(train=loader))]
    outputs: list[Any] = []
    targets: list[Any] = []
    try:
        with cbs.suspend([cb.name for cb in cbs if not cb.shapes_batch]), torch.no_grad():
            learner.training = False
            model.eval()
            try:
                _raise(cbs.collect("startRun")[1])
                for learner.batch, batch in enumerate(loader):
                    learner.xb, learner.yb = _inputs_and_targets(batch)
                    cbs("startBatch")
                    cbs("startPass")
                    learner.y = forward(model, learner.xb)
                    cbs("endPass")
                    outputs.append(_output(learner.y))
                    targets.append(_target(learner.xb, learner.yb))
                    cbs("endBatch")
            except BaseException:
                cbs.collect("endRun")  # the first failure is the one to see
                raise
            _raise(cbs.collect("endRun")[1])
    finally:
        model.train(was_training)
        reshard(model)  # FSDP keeps the root unit gathered after a forward pass
        learner.restore_fields(fields)
        for snapshot in reversed(generators):
            snapshot.restore()
    return Predictions(_join(outputs), _join(targets))


def _inputs_and_targets(batch: Any) -> tuple[Any, Any]:
    """``(xb, yb)`` as the loop splits batches, plus what inference loaders give: a bare tensor
    or a 1-tuple (``TensorDataset(x)``) is the inputs alone (targets None). Unlike in training,
    a bare tensor is not ambiguous here: nothing is expected besides the inputs."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, tuple | list) and len(batch) == 1:
        return batch[0], None
    return split(batch)


def _raise(error: BaseException | None) -> None:
    if error is not None:
        raise error


def _output(y: Any) -> Any:
    if not isinstance(y, torch.Tensor):
        logits = getattr(y, "logits", None)
        if logits is None and isinstance(y, Mapping):
            logits = y.get("logits")
        if logits is not None:
            return logits
    return y


def _target(xb: Any, yb: Any) -> Any:
    if not isinstance(yb, torch.Tensor) and isinstance(yb, Mapping) and yb is xb:
        return yb.get("labels")  # one mapping batch: its labels, if any
    return yb


def _join(values: list[Any]) -> Any:
    """One tensor along dim 0 when the batches' tensors fit together, else the list."""
    if values and all(v is None for v in values):
        return None
    first = values[0] if values else None
    if (
        isinstance(first, torch.Tensor)
        and first.dim() > 0
        and all(
            isinstance(v, torch.Tensor)
            and v.dim() == first.dim()
            and v.shape[1:] == first.shape[1:]
            and v.dtype == first.dtype
            and v.device == first.device
            for v in values
        )
    ):
        return torch.cat(values)
    return values
