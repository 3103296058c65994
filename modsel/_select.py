"""Stylesheet + model -> annotated mirror tree (``modsel.select``), and why a node has its props."""

from __future__ import annotations

import functools

from torch.nn import Module

from ._ast import Complex, Rule, SelectorList, Stylesheet
from ._document import SELECTED, ModuleSelector, grow, new_root, paused_gc
from ._match import Pred, compile_complex, compile_compound, compile_list
from ._parser import parse

__all__ = ["explain", "select"]


@functools.lru_cache(maxsize=1024)
def _compiled(selectors: SelectorList) -> Pred:
    return compile_list(selectors)


def select(
    model: Module, css: str | Stylesheet, *, node_class: type[ModuleSelector] | None = None
) -> ModuleSelector:
    """The mirror tree of ``model`` with each node's props from the stylesheet ``css``.

    A module's props are the union, in rule order, of the props of every rule that selects it;
    a rule written without props gives ``all``. ``node_class``: a subclass of ModuleSelector to
    build the tree of (for libraries that add methods, like k1lib).
    """
    sheet = parse(css) if isinstance(css, str) else css
    if not isinstance(sheet, Stylesheet):
        raise TypeError(f"css must be a str or a modsel Stylesheet, not {type(css).__name__}")
    tests = [_compiled(rule.selectors) for rule in sheet.rules]
    with paused_gc():
        root = new_root(model, node_class)
        root.sheet = sheet
        nodes = grow(root)
        # rule by rule over all nodes (a C-level filter per rule), then merge in rule order
        # into the side table id(node) -> (props, rules)
        selected = root.memo(SELECTED)
        for rule, test in zip(sheet.rules, tests, strict=True):
            props = tuple(dict.fromkeys(rule.props))
            one = (props, (rule,))
            for node in filter(test, nodes):
                before = selected.get(id(node))
                if before is None:  # the common case: the first rule to select this node
                    selected[id(node)] = one
                else:
                    merged = before[0] + tuple(p for p in props if p not in before[0])
                    selected[id(node)] = (merged, (*before[1], rule))
    return root


def explain(node: ModuleSelector) -> str:
    """Which rules of the stylesheet select ``node``, and for the others, what failed."""
    root = node
    while root.parent is not None:
        root = root.parent
    sheet = root.sheet
    where = f"{node.path or '(root)'} ({node.tag})"
    if sheet is None:
        return f"{where}: no stylesheet was applied (use modsel.select(model, css))"
    lines = [f"{where}: props {', '.join(node.props) if node.props else '(none)'}"]
    if not sheet.rules:
        lines.append("  the stylesheet has no rules")
    for number, rule in enumerate(sheet.rules, 1):
        lines.append(f"  rule {number} (line {rule.position.line}) `{rule}`: {_verdict(rule, node)}")
    return "\n".join(lines)


def _verdict(rule: Rule, node: ModuleSelector) -> str:
    reasons = []
    for cx in rule.selectors.selectors:
        if compile_complex(cx)(node, None):
            return f"selects it (via `{cx}`)"
        reasons.append(_why_not(cx, node))
    return "does not select it: " + "; ".join(reasons)


def _why_not(cx: Complex, node: ModuleSelector) -> str:
    subject = cx.compounds[-1]
    if not compile_compound(subject)(node):
        return f"`{subject}` does not match this module"
    context = Complex(cx.compounds[:-1], cx.combinators[:-1])
    comb = cx.combinators[-1]
    relation = {
        " ": "an ancestor",
        ">": "the parent",
        "+": "the previous sibling",
        "~": "an earlier sibling",
    }[comb]
    return f"`{subject}` matches, but {relation} does not match `{context}`"
