"""Batches as users have them: what ``xb`` and ``yb`` are, how the model is called, where the
loss comes from.

- ``(xb, yb)`` (a tuple, a list, anything of two items): the model gets ``model(xb)``; when
  ``xb`` is a mapping (``({"input_ids": ..., "attention_mask": ...}, yb)``) its entries are
  keyword arguments: ``model(**xb)``.
- One mapping (a Hugging Face tokenizer's or collator's batch: ``{"input_ids": ...,
  "attention_mask": ..., "labels": ...}``): it is both ``xb`` and ``yb`` (the same object), so
  the model gets every entry as a keyword argument and ``lossF(y, yb)`` can read the labels
  (``lambda y, b: F.cross_entropy(y.logits.flatten(0, 1), b["labels"].flatten())``).
- The loss is ``lossF(y, yb)``; without a ``lossF``, an output that carries its own loss
  (``y.loss``: a Hugging Face ``ModelOutput`` given ``labels``) is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["check_backward", "forward", "loss_of", "map_tensors", "split"]


def split(batch: Any) -> tuple[Any, Any]:
    """``(xb, yb)`` of a batch (see the module docstring)."""
    if type(batch) is tuple and len(batch) == 2:  # the common case first: no ABC check
        return batch
    if isinstance(batch, torch.Tensor):  # would unpack along its first dimension
        raise TypeError(
            "a batch must be a pair (xb, yb) or a mapping of the model's keyword arguments; the "
            f"loader gave {_describe(batch)}"
        )
    if isinstance(batch, Mapping):
        return batch, batch
    try:
        xb, yb = batch
    except (TypeError, ValueError):
        raise TypeError(
            "a batch must be a pair (xb, yb) or a mapping of the model's keyword arguments; the "
            f"loader gave {_describe(batch)}"
        ) from None
    return xb, yb


def forward(model: nn.Module, xb: Any) -> Any:
    """``model(**xb)`` for a mapping of inputs, else ``model(xb)``."""
    if not isinstance(xb, torch.Tensor) and isinstance(xb, Mapping):
        odd = next((k for k in xb if not isinstance(k, str)), None)
        if odd is not None:
            raise TypeError(
                f"a mapping of inputs is passed as keyword arguments, so its keys must be strings; "
                f"this one has the key {odd!r}. For a model that takes the dict itself, give it a "
                "model that unpacks it (forward(self, **inputs)) or name its entries"
            )
        return model(**xb)
    return model(xb)


def loss_of(lossF: Callable[[Any, Any], Any] | None, y: Any, yb: Any) -> Any:  # noqa: N803
    """``lossF(y, yb)``, or the output's own ``loss`` when there is no ``lossF``."""
    if lossF is not None:
        return lossF(y, yb)
    loss = getattr(y, "loss", None)  # a ModelOutput: also a mapping, without its None entries
    if loss is None and isinstance(y, Mapping):
        loss = y.get("loss")
    if isinstance(loss, torch.Tensor):
        return loss
    if loss is not None:
        has = f"a loss of type {type(loss).__name__}, not a tensor"
    elif hasattr(y, "loss") or (isinstance(y, Mapping) and "loss" in y):
        has = "a loss of None (give it labels)"
    else:
        has = "no 'loss' entry" if isinstance(y, Mapping) else "no .loss"
    raise RuntimeError(
        f"l.lossF is not set and the model's output ({type(y).__name__}) has {has}; set "
        "l.lossF = lambda y, yb: ..., or pass labels in the batch for a model that computes its loss"
    )


def map_tensors(value: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``f`` applied to every tensor in it: tensors, tuples (named ones too),
    lists and mappings, nested; other objects as they are. A mapping keeps its class when it
    can be built from a dict (a tokenizer's ``BatchEncoding``)."""
    if isinstance(value, torch.Tensor):
        return f(value)
    if isinstance(value, tuple):
        items = [map_tensors(v, f) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, list):
        return [map_tensors(v, f) for v in value]
    if isinstance(value, Mapping):
        mapped = {k: map_tensors(v, f) for k, v in value.items()}
        if type(value) is dict:
            return mapped
        try:
            return type(value)(mapped)  # type: ignore[call-arg]
        except TypeError:  # a mapping class that cannot be built from a dict
            return mapped
    return value


def check_backward(loss: Any) -> None:
    """Raise, naming the problem, when ``loss`` cannot go through a backward pass."""
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        return
    what = (
        f"a tensor without a gradient (requires_grad=False, shape {tuple(loss.shape)})"
        if isinstance(loss, torch.Tensor)
        else f"a {type(loss).__name__}"
    )
    if not torch.is_grad_enabled():
        what += " (gradients are off here: torch.no_grad)"
    raise RuntimeError(
        f"l.loss is {what}, so there is no backward pass to take: is it detached from the "
        "model's output, computed under torch.no_grad(), or is every parameter frozen? (A callback "
        "that means to skip backward returns True from startBackward.)"
    )


def _describe(batch: Any) -> str:
    if isinstance(batch, tuple | list):
        return f"a {type(batch).__name__} of {len(batch)} item{'s' * (len(batch) != 1)}"
    if isinstance(batch, torch.Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    return f"a {type(batch).__name__}"
