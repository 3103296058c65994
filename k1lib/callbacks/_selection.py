"""What the learner's css selects for a callback: modules (and their parameters) whose props
include the callback's name or ``all``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

import modsel

from .. import _warn
from .._unwrap import unwrap

if TYPE_CHECKING:
    from .._learner import Learner

__all__ = ["selected_modules", "selected_parameters"]


def selected_modules(learner: Learner, prop: str, warn: bool = True) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of each module the css gives ``prop`` (or ``all``), in document order,
    each module once (a shared module at its first place). Warns when there is none."""
    seen: set[int] = set()
    found: list[tuple[str, nn.Module]] = []
    for path, node in learner.moduleSelector.named_modules(prop):
        if id(node.module) not in seen:
            seen.add(id(node.module))
            found.append((path, node.module))
    if not found and warn and asks_for(learner.css, prop):
        _warn.warn(
            f"{prop}: l.css selects no module with the prop {prop!r} (or 'all'), so {prop} records "
            f"nothing; l.css is {learner.css!r}"
        )
    return found


def asks_for(css: str, prop: str) -> bool:
    """Whether a rule of ``css`` gives ``prop`` or ``all``: a stylesheet that never names the
    callback (``l.css = "#0: frozen"``) is not an empty selection worth a warning."""
    return any(prop in rule.props or "all" in rule.props for rule in modsel.parse(css).rules)


def selected_parameters(learner: Learner, prop: str, warn: bool = True) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the parameters of the modules the css gives ``prop`` (their
    whole subtrees), each once, named and ordered as in ``model.named_parameters()`` (of the
    original module when the model is wrapped by ``torch.compile`` or DDP)."""
    chosen: set[int] = set()
    for _, module in selected_modules(learner, prop, warn=False):
        chosen.update(id(p) for p in module.parameters())
    assert learner.model is not None  # moduleSelector needs it: raised above otherwise
    found = [(name, p) for name, p in unwrap(learner.model).named_parameters() if id(p) in chosen]
    if not found and warn and asks_for(learner.css, prop):
        _warn.warn(
            f"{prop}: l.css selects no module with parameters and the prop {prop!r} (or 'all'), so "
            f"{prop} records nothing; l.css is {learner.css!r}"
        )
    return found
