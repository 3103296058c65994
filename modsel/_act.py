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
import difflib
import inspect
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor
from torch.nn import Module, Parameter
from torch.utils.hooks import RemovableHandle

from ._ast import ClassSelector, IdSelector, TypeSelector, walk_simple
from ._document import (
    ModuleSelector,
    class_names_of,
    dismantle,
    grow,
    new_root,
    paused_gc,
    walk_parameters,
)
from ._grad import Key, hook_grads
from ._match import Selector, match
from ._match import compile as compile_selector
from ._stack import warn_outside
from ._wrappers import unwrap

__all__ = ["Freeze", "freeze", "hooks", "param_groups", "paths", "tap", "to_regex", "unfreeze"]

Css = str | Selector
HookCallback = Callable[..., Any]


def _source(css: Css) -> str:
    return css.source if isinstance(css, Selector) else css


# ---- warnings -----------------------------------------------------------------------------------
# frames in these files are skipped when a warning looks for the user's line: modsel's own, and
# contextlib's __enter__ between a ``with modsel.hooks(...)`` and the generator body
_INTERNAL = (os.path.dirname(os.path.abspath(__file__)) + os.sep, contextlib.__file__)


def _warn(message: str) -> None:
    """A ``UserWarning`` attributed to the first caller outside modsel (and contextlib): the
    user's line, whether the action was called plainly or as a ``with`` block."""
    warn_outside(message, UserWarning, _INTERNAL)


def _warn_empty(what: str, css: Css, model: Module, result: str = "nothing was changed") -> None:
    """Warn that ``css`` selects nothing in ``model``, with close names for the type, class and
    id names of the selector that no module of the model has (class names change between
    library versions: a misspelt or renamed class is the usual cause)."""
    hints = "".join("; " + hint for hint in _hints(css, model))
    empty = f"selector {_source(css)!r} selects no module of {type(unwrap(model)).__name__}"
    _warn(f"modsel.{what}: {empty}{hints}; {result}")


def _hints(css: Css, model: Module) -> list[str]:
    """``no module is a 'GPT2Blok' (did you mean 'GPT2Block'?)`` for each type / class / id
    name in ``css`` that ``model`` does not have, in the order they are written."""
    selector = css if isinstance(css, Selector) else compile_selector(css)
    named = (TypeSelector, ClassSelector, IdSelector)
    wanted = [s for s in walk_simple(selector.ast) if isinstance(s, named)]
    if not wanted:
        return []
    tags: set[str] = set()
    classes: set[str] = set()
    ids: set[str] = set()
    parents: list[ModuleSelector] = []
    with paused_gc():
        for node in grow(new_root(model), parents):
            tags.add(node._tag)
            classes |= class_names_of(node)
            ids.add(node.name)
        dismantle(parents)
        del parents
    source = _source(css)
    hints: dict[str, None] = {}  # ordered, without repeats
    for simple in sorted(wanted, key=lambda s: source.find(s.name)):
        if isinstance(simple, TypeSelector):
            pool, missing, prefix = tags, f"no module is a {simple.name!r}", ""
        elif isinstance(simple, ClassSelector):
            pool, missing, prefix = classes, f"no module is a subclass of {simple.name!r}", "."
        else:
            pool, missing, prefix = ids, f"no module has the id {simple.name!r}", "#"
        if simple.name in pool:
            continue
        close = difflib.get_close_matches(simple.name, sorted(pool), n=3)
        if close:
            missing += " (did you mean " + " or ".join(repr(prefix + name) for name in close) + "?)"
        hints[missing] = None
    return list(hints)


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
    # named as in the unwrapped model, as paths and param_groups name them
    names = [name for name, param in walk_parameters([("", unwrap(model))]) if id(param) in owned]
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


def _same_value(x: Any, y: Any) -> bool:
    """Equal option values, strictly: values of the same type that compare ``True`` (so ``0``
    and ``False`` differ, and a tensor, which compares elementwise, equals only itself)."""
    if x is y:
        return True
    if type(x) is not type(y) or isinstance(x, Tensor):
        return False
    return (x == y) is True


def _same_options(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal option dicts: the same keys, each with ``_same_value`` values."""
    return a.keys() == b.keys() and all(_same_value(x, b[key]) for key, x in a.items())


def param_groups(model: Module, rules: dict[str, dict[str, Any]], **defaults: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups from selector rules, for ``torch.optim`` (``AdamW(groups)``).

    Every trainable parameter (``requires_grad``) appears in exactly one group; frozen ones in
    none. Options cascade one by one, as CSS properties do: a parameter starts from
    ``defaults``, then each rule, in dict order, that selects a module owning it (directly or
    as an ancestor) sets the options it names and leaves the others as they were. So a rule for
    a block covers everything below it, a later rule overrides the options it sets (order
    decides, not depth or specificity), and rules setting different options all apply:
    ``{"LlamaRMSNorm, Embedding": {"weight_decay": 0.0}, "#lm_head": {"lr": 1e-4}}`` gives a
    tied ``lm_head.weight`` (which is ``embed_tokens.weight``) both.

    A tensor reached through several modules (tied weights, a module registered twice) takes
    the rules of all its places in that order; when rules at different places set one option
    to different values, the later rule wins and a ``UserWarning`` names the tensor's paths,
    the option and each rule's value.

    Groups with equal options merge into one; groups are ordered by their first parameter in
    ``named_parameters()`` order, parameters within a group in that order too, and each group
    holds ``params`` plus ``param_names`` (which torch's optimizers keep) so the result can be
    read. A rule that selects nothing warns.

    Example: ``param_groups(model, {"Embedding": {"lr": 1e-4}, "#head Linear": {"lr": 1e-3,
    "weight_decay": 0.0}}, lr=1e-3, weight_decay=0.01)``.
    """
    for key in _RESERVED:
        if key in defaults:
            raise ValueError(f"modsel.param_groups: {key!r} is set by param_groups, not a default")
    chosen: list[tuple[str, dict[str, Any]]] = []  # the rules that select something; bit i is chosen[i]
    own: dict[int, int] = {}  # id(module) -> bits of the rules selecting it at any of its places
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
            bit = 1 << len(chosen)
            chosen.append((css, opts))
            for node in nodes:
                own[id(node.module)] = own.get(id(node.module), 0) | bit
        named, reach, places = _cascade(root, own)
        dismantle(parents)
        del root, parents
    options: list[dict[str, Any]] = []  # distinct option sets, in the order groups first need them
    index_of: dict[int, int] = {}  # rule bits -> index into options
    groups: dict[int, dict[str, Any]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        mask = reach[id(param)]
        shared = places.get(id(param))
        if shared is not None:
            shared[0] = (name, shared[0][1])  # the first place's name: named_parameters()'s
            _warn_conflicts(chosen, shared)
        index = index_of.get(mask)
        if index is None:
            opts = _options(chosen, mask, defaults)[0]
            # merge equal option sets: the first equal one stands for all
            index = next((i for i, o in enumerate(options) if _same_options(o, opts)), len(options))
            if index == len(options):
                options.append(opts)
            index_of[mask] = index
        group = groups.get(index)
        if group is None:
            group = groups[index] = {"params": [], "param_names": [], **options[index]}
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def _options(
    chosen: list[tuple[str, dict[str, Any]]], mask: int, defaults: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, int]]:
    """The options given by the rules whose bits are in ``mask``: ``defaults``, then each
    rule's options in rule order (a rule overrides only what it sets); and for each option a
    rule set, the index of the rule that won it."""
    opts = dict(defaults)
    winner: dict[str, int] = {}
    index = 0
    while mask:
        if mask & 1:
            for key, value in chosen[index][1].items():
                opts[key] = value
                winner[key] = index
        mask >>= 1
        index += 1
    return opts, winner


def _warn_conflicts(chosen: list[tuple[str, dict[str, Any]]], places: list[tuple[str, int]]) -> None:
    """Warn for each option that the rules at different places of one tensor set to different
    values (``places``: ``(path, rule bits)`` per place); the later rule wins it."""
    winners = [(path, _options(chosen, mask, {})[1]) for path, mask in places]
    keys = dict.fromkeys(key for _, winner in winners for key in winner)
    for key in keys:
        setters = [(path, winner[key]) for path, winner in winners if key in winner]
        values = [chosen[rule][1][key] for _, rule in setters]
        if all(_same_value(value, values[0]) for value in values):
            continue
        last = max(rule for _, rule in setters)
        pairs = zip(setters, values, strict=True)
        each = ", ".join(f"{chosen[rule][0]!r} sets {value!r} at {path}" for (path, rule), value in pairs)
        _warn(
            f"modsel.param_groups: the tensor {' = '.join(path for path, _ in places)} is shared, "
            f"and rules set {key!r} to different values at its places ({each}); the later rule "
            f"{chosen[last][0]!r} wins: {key}={chosen[last][1][key]!r}"
        )


def _cascade(
    root: ModuleSelector, own: dict[int, int]
) -> tuple[list[tuple[str, Parameter]], dict[int, int], dict[int, list[tuple[str, int]]]]:
    """``model.named_parameters()`` (same names, order and deduplication) read off the
    document; for each parameter the bits of the rules reaching it (selecting a module that
    owns it at any of its places, directly or as an ancestor); and for a parameter met at
    several places with different rules, ``(path, bits)`` per place (the first place's path is
    left ``""``: it is the one in ``named``)."""
    named: list[tuple[str, Parameter]] = []
    reach: dict[int, int] = {}
    places: dict[int, list[tuple[str, int]]] = {}
    stack: list[tuple[ModuleSelector, int]] = [(root, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, inherited = pop()
        module = node.module
        mask = inherited | own.get(id(module), 0)
        if module._parameters:
            prefix = node.path + "." if node.path else ""
            for name, param in module._parameters.items():
                if param is None:
                    continue
                before = reach.get(id(param))
                if before is None:
                    named.append((prefix + name, param))
                    reach[id(param)] = mask
                    continue
                seen = places.get(id(param))
                if seen is None:  # the second place: reach still holds the first one's bits
                    seen = places[id(param)] = [("", before)]
                seen.append((prefix + name, mask))
                reach[id(param)] = before | mask
        for kid in reversed(node._kids):
            push((kid, mask))
    # only places that disagree can conflict
    return named, reach, {key: seen for key, seen in places.items() if len({m for _, m in seen}) > 1}


# ---- hooks and tap ------------------------------------------------------------------------------
def _bind(callback: HookCallback, path: str) -> HookCallback:
    def hook(module: Module, *args: Any) -> Any:
        return callback(path, module, *args)

    return hook


def _backward_caller(callback: HookCallback) -> Callable[[str, Module, Tensor, Key], Any]:
    """How to call ``backward``: as ``backward(path, module, grad, key=key)``, or positionally
    when it takes ``*args`` without a ``key``. A callback written for torch's full backward
    hook, ``(path, module, grad_input, grad_output)``, is refused here, before anything is
    hooked: called positionally it would take the key for ``grad_output`` without a word."""
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: positional
        return lambda path, module, grad, key: callback(path, module, grad, key)
    try:
        signature.bind("path", None, None, key=())
    except TypeError:
        if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
            return lambda path, module, grad, key: callback(path, module, grad, key)
        raise TypeError(
            f"modsel.hooks: backward={getattr(callback, '__name__', callback)!r} must take "
            f"(path, module, grad, key), called once per output tensor with key=...; its "
            f"signature is {signature} (torch's full backward hook's (grad_input, grad_output) "
            "is not what modsel passes)"
        ) from None
    return lambda path, module, grad, key: callback(path, module, grad, key=key)


def _grad_capture(
    call: Callable[[str, Module, Tensor, Key], Any], path: str, live: list[bool]
) -> HookCallback:
    """A forward hook that puts a tensor hook on each output tensor that requires grad: it
    calls ``call(path, module, grad, key)`` (``_backward_caller``) while ``live[0]`` (the
    ``with`` block runs)."""

    def hook(module: Module, inputs: Any, output: Any) -> None:
        def on_grad(key: Key, grad: Tensor) -> Tensor | None:
            return call(path, module, grad, key) if live[0] else None

        hook_grads(output, on_grad)

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

    Each callback receives the module's path first: ``forward(path, module, inputs, output)``
    and ``forward_pre(path, module, inputs)`` are torch's forward hooks: what they return is
    what the torch hook returns (a value replaces the output / inputs; ``None`` only observes).

    ``backward(path, module, grad, key)`` sees the gradient of the module's output: for each
    call of the module inside the block, a tensor hook on each output tensor that requires grad
    calls it once per backward pass with that tensor's gradient. ``key`` says which tensor:
    ``()`` for a tensor output, ``(0,)`` for the first item of a tuple, ``("logits",)`` for a
    dict or ``ModelOutput`` field (Hugging Face blocks return those), longer when nested;
    a tensor no loss depends on gets no call. Returning a tensor replaces that gradient for the
    rest of the backward pass (as ``Tensor.register_hook``); return ``None`` to only observe.
    ``key`` is passed by keyword (positionally to a ``*args`` callback), so a callback written
    for torch's full backward hook, ``(path, module, grad_input, grad_output)``, is refused with
    a TypeError when the block starts. There is no ``grad_input``: torch's full backward hook,
    which has it, wraps the output in a
    view that an in-place op after the module (ResNets' ``ReLU(inplace=True)`` after a
    ``BatchNorm2d``) makes fail. An output changed in place later still reports the gradient of
    the value the module returned. A backward pass after the block calls nothing.

    Every handle is removed on exit, also when the body or a registration raises. A selector
    that selects nothing warns.
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
    """``hooks`` for already selected ``(path, module)`` pairs; handles removed in ``finally``.
    The gradient capture is a forward hook registered after ``forward``, so it hooks the output
    that ``forward`` may have replaced."""
    # one signature check for every module, and a callback of the wrong shape raises first
    call = _backward_caller(backward) if backward is not None else None
    handles: list[RemovableHandle] = []
    live = [True]
    try:
        for path, module in found:
            if forward_pre is not None:
                handles.append(module.register_forward_pre_hook(_bind(forward_pre, path)))
            if forward is not None:
                handles.append(module.register_forward_hook(_bind(forward, path)))
            if call is not None:
                handles.append(module.register_forward_hook(_grad_capture(call, path, live)))
        yield
    finally:
        live[0] = False  # tensor hooks already on outputs stay there: they must stop calling
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
    that PEFT's ``target_modules`` and similar name-based APIs take.

    Selecting nothing returns ``[]`` and warns, with the close class names (and ids) the model
    has for a name it does not: class names change between library versions, and an empty
    list only fails later, far away ("Target modules [] not found").
    """
    found = [path for path, _ in match(model, css)]
    if not found:
        _warn_empty("paths", css, model, "returning []")
    return found


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
    sharing a prefix share it in the pattern. Selecting the root includes the empty path.
    Selecting nothing gives ``(?!)``, a regex that matches nothing (not even ``""``), and warns
    as ``paths`` does.
    """
    selected = {id(module) for _, module in match(model, css)}
    if not selected:
        _warn_empty("to_regex", css, model, "returning '(?!)', which matches no path")
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
