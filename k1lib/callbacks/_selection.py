"""What a stylesheet selects for a tool (HookModule, HookParam, ...): the modules (and their
parameters) whose props include the tool's name or ``all``. The Learner's callbacks select
with ``l.css``; ``k1lib.watch`` with its own css."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

import modsel

from .. import _warn
from .._unwrap import unwrap

if TYPE_CHECKING:
    from .._learner import Learner

__all__ = [
    "modules_with",
    "parameters_of",
    "selected_modules",
    "selected_parameters",
    "warn_if_empty",
]


def modules_with(tree: modsel.ModuleSelector, prop: str) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of each module of ``tree`` having ``prop`` (or ``all``), in document
    order, each module once (a shared module at its first place)."""
    seen: set[int] = set()
    found: list[tuple[str, nn.Module]] = []
    for path, node in tree.named_modules(prop):
        if id(node.module) not in seen:
            seen.add(id(node.module))
            found.append((path, node.module))
    return found


def parameters_of(root: nn.Module, modules: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the parameters of ``modules`` (their whole subtrees), each once,
    named and ordered as in ``root.named_parameters()``."""
    chosen: set[int] = set()
    for _, module in modules:
        chosen.update(id(p) for p in module.parameters())
    return [(name, p) for name, p in root.named_parameters() if id(p) in chosen]


def warn_if_empty(found: Sequence[object], css: str, prop: str, what: str, where: str) -> None:
    """Warn that ``prop`` records nothing when ``found`` is empty although ``css`` asks for
    ``prop`` (``what``: ``"module with"`` or ``"module with parameters and"``; ``where``: the
    css's name in the message, ``l.css``)."""
    if not found and asks_for(css, prop):
        _warn.warn(
            f"{prop}: {where} selects no {what} the prop {prop!r} (or 'all'), so {prop} records "
            f"nothing; {where} is {css!r}"
        )


def selected_modules(learner: Learner, prop: str, warn: bool = True) -> list[tuple[str, nn.Module]]:
    """``modules_with`` of the learner's module tree (``l.css``). Warns when there is none."""
    found = modules_with(learner.moduleSelector, prop)
    if warn:
        warn_if_empty(found, learner.css, prop, "module with", "l.css")
    return found


def asks_for(css: str, prop: str) -> bool:
    """Whether a rule of ``css`` gives ``prop`` or ``all``: a stylesheet that never names the
    callback (``l.css = "#0: frozen"``) is not an empty selection worth a warning."""
    return any(prop in rule.props or "all" in rule.props for rule in modsel.parse(css).rules)


def selected_parameters(learner: Learner, prop: str, warn: bool = True) -> list[tuple[str, nn.Parameter]]:
    """``parameters_of`` the modules the css gives ``prop``, named as in the original module
    when the model is wrapped by ``torch.compile`` or DDP. Warns when there is none."""
    modules = selected_modules(learner, prop, warn=False)
    assert learner.model is not None  # moduleSelector needs it: raised above otherwise
    found = parameters_of(unwrap(learner.model), modules)
    if warn:
        warn_if_empty(found, learner.css, prop, "module with parameters and", "l.css")
    return found
