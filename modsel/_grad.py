"""Gradients of module outputs through tensor hooks.

A module's forward output may be a tensor or a structure of them (tuples, lists, dicts,
Hugging Face's ``ModelOutput`` and other dataclasses). ``output_tensors`` finds the tensors in
it, each with where it sits; ``hook_grads`` registers a tensor hook on each one that will
receive a gradient. ``modsel.hooks(backward=...)`` and k1lib's ``HookModule`` both see output
gradients this way.

Why not ``register_full_backward_hook``: it wraps the module's inputs and outputs in a
``BackwardHookFunction`` view, and the next in-place op on that output (``ReLU(inplace=True)``
after a ``BatchNorm2d`` in every ResNet) raises a RuntimeError. A tensor hook changes nothing
in the graph. It fires with the gradient of the output as the module returned it, also when
the tensor is changed in place afterwards (torch keeps the hook on the value it was registered
on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from torch import Tensor
from torch.utils.hooks import RemovableHandle

__all__ = ["Key", "first_tensor", "hook_grads", "iter_tensors", "output_tensors"]

Key = tuple[int | str, ...]
"""Where a tensor sits in an output: ``()`` for the output itself, ``(0,)`` for the first item
of a tuple or list, ``("logits",)`` for a dict entry or a dataclass field, longer when nested."""


def iter_tensors(output: Any) -> Iterator[tuple[Key, Tensor]]:
    """``(key, tensor)`` for each tensor in ``output``, depth-first in the containers' order.

    Walked are tuples and lists (named tuples too), dicts (``ModelOutput`` is one: its unset
    fields are not among its items) and other dataclass instances; anything else (``None``,
    numbers, cache objects) is skipped. A tensor or container met twice is reported once, at
    its first key (so a container that holds itself cannot loop). No recursion: a stack.
    """
    if isinstance(output, Tensor):
        yield (), output
        return
    seen: set[int] = set()
    stack: list[tuple[Key, Any]] = [((), output)]
    while stack:
        key, item = stack.pop()
        if id(item) in seen:
            continue
        if isinstance(item, Tensor):
            seen.add(id(item))
            yield key, item
            continue
        if isinstance(item, (tuple, list)):
            kids: list[tuple[int | str, Any]] = list(enumerate(item))
        elif isinstance(item, dict):
            kids = list(item.items())
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            kids = [(f.name, getattr(item, f.name, None)) for f in dataclasses.fields(item)]
        else:
            continue
        seen.add(id(item))
        stack.extend(((*key, name), kid) for name, kid in reversed(kids))


def output_tensors(output: Any) -> list[tuple[Key, Tensor]]:
    """Every ``(key, tensor)`` of ``iter_tensors``, as a list."""
    return list(iter_tensors(output))


def first_tensor(output: Any) -> Tensor | None:
    """The first tensor in ``output`` (itself if it is one), or ``None``: what a statistic of
    a module with a structured output is taken from."""
    return next((t for _, t in iter_tensors(output)), None)


def hook_grads(output: Any, hook: Callable[[Key, Tensor], Tensor | None]) -> list[RemovableHandle]:
    """Register ``hook(key, grad)`` as a tensor hook on each tensor of ``output`` that requires
    grad; returns the handles.

    The hook fires once per backward pass that reaches that tensor, with the gradient of the
    loss with respect to it, as ``Tensor.register_hook`` does: returning a tensor replaces the
    gradient that flows on, returning ``None`` only observes. A tensor no loss depends on never
    fires. Tensors that do not require grad (under ``no_grad``, or integer outputs) get none.
    """
    if isinstance(output, Tensor):  # the common case, on the path of every hooked module call
        if not output.requires_grad:
            return []
        return [output.register_hook(partial(hook, ()))]  # type: ignore[no-untyped-call]
    return [
        t.register_hook(partial(hook, key))  # type: ignore[no-untyped-call]
        for key, t in iter_tensors(output)
        if t.requires_grad
    ]
