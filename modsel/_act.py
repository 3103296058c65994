"""Acting on selections: freeze, optimizer groups, hooks, taps and path regexes.

These helpers turn a selector into the everyday operations of fine-tuning: which parameters
train (``freeze`` / ``unfreeze``), with which options (``param_groups``), which layers to
watch (``hooks`` / ``tap``) and which paths a path-based API should target (``paths`` /
``to_regex`` for PEFT's ``target_modules`` or torchao's ``FqnToConfig``). Selection is always
``modsel.match(model, css)``: a module registered in several places is selected once.

Selecting a module acts on its whole subtree: freezing a block freezes every parameter below
it. This file only reads the module tree and sets ``requires_grad`` or registers hooks; it
never builds or keeps a ``ModuleSelector`` document.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor
from torch.nn import Module, Parameter
from torch.utils.hooks import RemovableHandle

from ._document import ModuleSelector, dismantle, grow, new_root, paused_gc, walk_parameters
from ._match import Selector, match
from ._match import compile as compile_selector

__all__ = ["Freeze", "freeze", "hooks", "param_groups", "paths", "tap", "to_regex", "unfreeze"]

Css = str | Selector
HookCallback = Callable[..., Any]


def _source(css: Css) -> str:
    return css.source if isinstance(css, Selector) else css


def _warn_empty(what: str, css: Css, model: Module) -> None:
    # stacklevel 3: the caller of the public function (a plain call) or of contextlib's wrapper
    warnings.warn(
        f"modsel.{what}: selector {_source(css)!r} selects no module of {type(model).__name__}; "
        "nothing was changed",
        UserWarning,
        stacklevel=3,
    )


def _tops(found: list[tuple[str, Module]]) -> list[Module]:
    """The selected modules that have no selected ancestor (match is pre-order, so a subtree
    follows its root): walking only these reaches every parameter below a selection once."""
    tops: list[Module] = []
    top: str | None = None
    for path, module in found:
        if top is not None and (top == "" or path.startswith(top)):
            continue
        tops.append(module)
        top = path + "." if path else ""
    return tops


def _owned(found: list[tuple[str, Module]]) -> dict[int, Parameter]:
    """``id -> parameter`` for every parameter of the selected modules and their descendants
    (walked without recursion, as every walk here: a 10,000-deep model is fine)."""
    return {id(param): param for _, param in walk_parameters(("", top) for top in _tops(found))}


# ---- freeze / unfreeze --------------------------------------------------------------------------
class Freeze:
    """The record of a ``freeze`` or ``unfreeze``: the change is made when it is created.

    Kept (a plain call), the change stays. Used as a context manager, or by calling
    ``restore()``, every touched parameter gets back exactly the ``requires_grad`` it had
    before, including parameters that were already in the requested state. ``parameters``
    lists the touched parameters by their ``model.named_parameters()`` names.
    """

    __slots__ = ("_before", "_restored", "parameters", "requires_grad", "selector")

    def __init__(
        self, selector: str, requires_grad: bool, before: list[tuple[Parameter, bool]], names: list[str]
    ) -> None:
        self.selector = selector
        self.requires_grad = requires_grad
        self.parameters = names
        self._before = before
        self._restored = False

    def restore(self) -> None:
        """Put back each touched parameter's previous ``requires_grad``. Only the first call
        acts: a second one would undo changes made in between by someone else."""
        if self._restored:
            return
        self._restored = True
        for param, flag in self._before:
            param.requires_grad_(flag)

    def __enter__(self) -> Freeze:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        verb = "unfreeze" if self.requires_grad else "freeze"
        state = ", restored" if self._restored else ""
        return f"<modsel.{verb} {self.selector!r}: {len(self.parameters)} parameters{state}>"


def _set_requires_grad(model: Module, css: Css, flag: bool, what: str) -> Freeze:
    found = match(model, css)
    if not found:
        _warn_empty(what, css, model)
    return set_requires_grad(model, found, flag, _source(css))


def set_requires_grad(model: Module, found: list[tuple[str, Module]], flag: bool, label: str) -> Freeze:
    """``freeze`` / ``unfreeze`` of already selected ``(path, module)`` pairs of ``model``
    (``ModuleSelector.freeze`` uses it with the nodes a stylesheet selected)."""
    if not found:
        return Freeze(label, flag, [], [])
    owned = _owned(found)
    before = [(param, param.requires_grad) for param in owned.values()]
    for param in owned.values():
        param.requires_grad_(flag)
    names = [name for name, param in walk_parameters([("", model)]) if id(param) in owned]
    return Freeze(label, flag, before, names)


def freeze(model: Module, css: Css) -> Freeze:
    """Set ``requires_grad=False`` on every parameter of the modules ``css`` selects and of
    their descendants; returns a ``Freeze`` that can undo it (``with modsel.freeze(m, "Linear"):``).

    A parameter shared between a selected and an unselected module is frozen too: it belongs to
    a selected module, and a tensor has one flag. A selector that selects nothing warns
    (``UserWarning``) and changes nothing.
    """
    return _set_requires_grad(model, css, False, "freeze")


def unfreeze(model: Module, css: Css) -> Freeze:
    """The opposite of ``freeze``: ``requires_grad=True`` on the selected subtrees' parameters,
    undone on leaving a ``with`` block or by ``restore()``."""
    return _set_requires_grad(model, css, True, "unfreeze")


# ---- param_groups -------------------------------------------------------------------------------
_RESERVED = ("params", "param_names")


def _same_options(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal option dicts, strictly: same keys, and values of the same type that compare
    ``True`` (so ``0`` and ``False`` differ, and tensor values, which compare elementwise, never
    merge unless they are the same object)."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if x is y:
            continue
        if type(x) is not type(y) or isinstance(x, Tensor):
            return False
        if (x == y) is not True:
            return False
    return True


def param_groups(model: Module, rules: dict[str, dict[str, Any]], **defaults: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups from selector rules, for ``torch.optim`` (``AdamW(groups)``).

    Every trainable parameter (``requires_grad``) appears in exactly one group; frozen ones in
    none. A parameter takes its options from the *last* rule, in dict order, that selects a
    module owning it directly or as an ancestor, laid over ``defaults``: a rule for a block
    covers everything below it, and a later rule for a deeper module overrides it (the CSS
    cascade by order; options do not mix between rules). Parameters no rule reaches take
    ``defaults``. Groups with equal options merge; they are ordered by their first parameter
    in ``named_parameters()`` order, and each holds ``params`` plus ``param_names`` (which
    torch's optimizers keep) so the result can be read. A rule that selects nothing warns.

    Example: ``param_groups(model, {"Embedding": {"lr": 1e-4}, "#head Linear": {"lr": 1e-3,
    "weight_decay": 0.0}}, lr=1e-3, weight_decay=0.01)``.
    """
    for key in _RESERVED:
        if key in defaults:
            raise ValueError(f"modsel.param_groups: {key!r} is set by param_groups, not a default")
    options: list[dict[str, Any]] = []
    own: dict[int, int] = {}  # id(module) -> index into options of the last rule selecting it
    parents: list[ModuleSelector] = []
    with paused_gc():
        # one document for all rules: building it is most of the cost of a match
        root = new_root(model)
        grow(root, parents)
        for css, opts in rules.items():
            if not isinstance(opts, dict):
                raise TypeError(
                    f"modsel.param_groups: the options of rule {css!r} must be a dict, "
                    f"not {type(opts).__name__}"
                )
            for key in _RESERVED:
                if key in opts:
                    raise ValueError(
                        f"modsel.param_groups: rule {css!r} sets {key!r}, which param_groups fills"
                    )
            nodes = compile_selector(css).match_nodes(root, remove_duplicate=False)
            if not nodes:
                _warn_empty("param_groups", css, model)
                continue
            index = len(options)
            options.append({**defaults, **opts})
            for node in nodes:
                own[id(node.module)] = index
        named, winner = _cascade(root, own)
        dismantle(parents)
        del root, parents
    default_index = len(options)
    options.append(dict(defaults))
    winner = {key: default_index if rule < 0 else rule for key, rule in winner.items()}
    # merge rules with equal options: each option index maps to the first equal one
    canonical = list(range(len(options)))
    for i in range(len(options)):
        for j in range(i):
            if canonical[j] == j and _same_options(options[i], options[j]):
                canonical[i] = j
                break
    groups: dict[int, dict[str, Any]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        index = canonical[winner[id(param)]]
        group = groups.get(index)
        if group is None:
            group = groups[index] = {"params": [], "param_names": [], **options[index]}
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def _cascade(root: ModuleSelector, own: dict[int, int]) -> tuple[list[tuple[str, Parameter]], dict[int, int]]:
    """``model.named_parameters()`` (same names, order and deduplication) read off the
    document, and for each parameter the last rule reaching it: the highest rule index among
    the modules that own it at any of their places, directly or as an ancestor."""
    named: list[tuple[str, Parameter]] = []
    winner: dict[int, int] = {}
    stack: list[tuple[ModuleSelector, int]] = [(root, -1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, inherited = pop()
        module = node.module
        rule = own.get(id(module), -1)
        if rule < inherited:
            rule = inherited
        if module._parameters:
            prefix = node.path + "." if node.path else ""
            for name, param in module._parameters.items():
                if param is None:
                    continue
                before = winner.get(id(param))
                if before is None:
                    named.append((prefix + name, param))
                    winner[id(param)] = rule
                elif rule > before:
                    winner[id(param)] = rule
        for kid in reversed(node._kids):
            push((kid, rule))
    return named, winner


# ---- hooks and tap ------------------------------------------------------------------------------
def _bind(callback: HookCallback, path: str) -> HookCallback:
    def hook(module: Module, *args: Any) -> Any:
        return callback(path, module, *args)

    return hook


@contextlib.contextmanager
def hooks(
    model: Module,
    css: Css,
    forward: HookCallback | None = None,
    forward_pre: HookCallback | None = None,
    backward: HookCallback | None = None,
) -> Iterator[list[str]]:
    """Hook the selected modules for the duration of a ``with`` block; yields their paths.

    Each callback receives the module's path first: ``forward(path, module, inputs, output)``,
    ``forward_pre(path, module, inputs)``, ``backward(path, module, grad_input, grad_output)``
    (``register_full_backward_hook``). What a callback returns is what the torch hook returns,
    so returning a value replaces the output / inputs / grad_input as torch documents;
    return ``None`` to only observe. Every handle is removed on exit, also when the body or
    a registration raises. A selector that selects nothing warns.
    """
    if forward is None and forward_pre is None and backward is None:
        raise TypeError("modsel.hooks: give at least one of forward=, forward_pre=, backward=")
    found = match(model, css)
    if not found:
        _warn_empty("hooks", css, model)
    with hook_found(found, forward, forward_pre, backward):
        yield [path for path, _ in found]


@contextlib.contextmanager
def hook_found(
    found: list[tuple[str, Module]],
    forward: HookCallback | None = None,
    forward_pre: HookCallback | None = None,
    backward: HookCallback | None = None,
) -> Iterator[None]:
    """``hooks`` for already selected ``(path, module)`` pairs; handles removed in ``finally``."""
    handles: list[RemovableHandle] = []
    try:
        for path, module in found:
            if forward_pre is not None:
                handles.append(module.register_forward_pre_hook(_bind(forward_pre, path)))
            if forward is not None:
                handles.append(module.register_forward_hook(_bind(forward, path)))
            if backward is not None:
                handles.append(module.register_full_backward_hook(_bind(backward, path)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def tap(model: Module, css: Css) -> Iterator[dict[str, Any]]:
    """Collect the outputs of the selected modules: yields a dict ``{path: output}`` that each
    forward pass inside the block fills (a module called twice keeps its last output).

    Outputs are stored as the module returned them (not detached or copied: keeping the graph
    or not is the caller's choice), and the model is not changed: the hooks return ``None`` and
    are removed on exit. A selector that selects nothing warns.
    """
    outputs: dict[str, Any] = {}

    def keep(path: str, module: Module, inputs: Any, output: Any) -> None:
        outputs[path] = output

    found = match(model, css)
    if not found:
        _warn_empty("tap", css, model)
    with hook_found(found, forward=keep):
        yield outputs


# ---- paths and regexes --------------------------------------------------------------------------
def paths(model: Module, css: Css) -> list[str]:
    """The paths of the selected modules, in ``named_modules()`` order (root ``""``): the list
    that PEFT's ``target_modules`` and similar name-based APIs take."""
    return [path for path, _ in match(model, css)]


_Trie = dict[str, "tuple[bool, _Trie]"]


def _trie_regex(trie: _Trie) -> str:
    """One alternation for the paths below a trie node. Siblings whose remaining patterns are
    equal share them (``(?:0|1)\\.linear1``), which keeps repeated layers short. Built bottom
    up with a stack, not by recursion: a path may be 10,000 names long."""
    below: dict[int, str] = {}  # id(trie node) -> its alternation, as a group when it has several
    stack: list[tuple[_Trie, bool]] = [(trie, False)]
    while stack:
        level, ready = stack.pop()
        if not ready:  # the levels below it first
            stack.append((level, True))
            stack.extend((kids, False) for _, kids in level.values() if kids)
            continue
        by_suffix: dict[str, list[str]] = {}
        for name, (terminal, kids) in level.items():
            if not kids:
                suffix = ""
            elif terminal:
                suffix = r"(?:\." + below.pop(id(kids)) + ")?"
            else:
                suffix = r"\." + below.pop(id(kids))
            by_suffix.setdefault(suffix, []).append(re.escape(name))
        parts = [_one_of(names) + suffix for suffix, names in by_suffix.items()]
        if level is trie:
            return "|".join(parts)
        below[id(level)] = _one_of(parts)
    raise AssertionError("unreachable: the trie itself is done last")  # pragma: no cover


def _one_of(alternatives: list[str]) -> str:
    """``a`` or ``(?:a|b)``: a group only around several (each alternative has no top-level
    "|" of its own: names are escaped, and deeper alternations are grouped already)."""
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def to_regex(model: Module, css: Css) -> str:
    """A regular expression that ``re.fullmatch``-es exactly the paths of the selected modules
    in ``model``, and no other path of it: for APIs that take a module-name regex (PEFT's
    ``target_modules``, torchao's ``FqnToConfig``).

    Every place of a selected module is included, so the regex works whether the consumer
    walks ``named_modules()`` with or without ``remove_duplicate``. Names are escaped; paths
    sharing a prefix share it in the pattern. Selecting nothing gives ``(?!)``, which matches
    nothing; selecting the root includes the empty path.
    """
    selected = {id(module) for _, module in match(model, css)}
    if not selected:
        return "(?!)"
    trie: _Trie = {}
    root_selected = False
    # every place, walked by modsel (which, unlike named_modules, stops at reference cycles)
    for path, module in match(model, "*", remove_duplicate=False):
        if id(module) not in selected:
            continue
        if not path:
            root_selected = True
            continue
        level = trie
        parts = path.split(".")
        for i, part in enumerate(parts):
            terminal, kids = level.get(part, (False, {}))
            level[part] = (terminal or i == len(parts) - 1, kids)
            level = kids
    if not trie:
        return ""
    body = _trie_regex(trie)
    return f"(?:{body})?" if root_selected else body
