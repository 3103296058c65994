"""Stylesheet + model -> annotated mirror tree (``modsel.select``), and why a node has its props."""

from __future__ import annotations

import functools
import html

from torch.nn import Module

from ._ast import Complex, Rule, SelectorList, Stylesheet
from ._document import SELECTED, ModuleSelector, grow, new_root, paused_gc
from ._match import Pred, compile_complex, compile_compound, compile_list
from ._parser import parse
from ._render import printable
from ._shown import MONOSPACE, Shown

__all__ = ["Explanation", "explain", "select"]


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


_STRESS = {
    "props": '<b style="color:#b5176b;background:rgba(181,23,107,.1)">{}</b>',
    "selects": '<b style="color:#1a7f37">{}</b>',
    "": "{}",
}


class Explanation(Shown):
    """What ``explain()`` returns: its text, a ``str`` that a REPL or notebook shows as is, and
    in notebooks (``_repr_html_``) a monospace block with the props and the rules that select
    the node in bold."""

    _parts: list[tuple[str, str, str]]

    def __new__(cls, parts: list[tuple[str, str, str]]) -> Explanation:
        """``parts``: (plain text, stressed text, how to stress it: ``props``,
        ``selects`` or ``""``) for each line."""
        self = super().__new__(cls, "\n".join(plain + stressed for plain, stressed, _ in parts))
        self._parts = parts
        return self

    def _repr_html_(self) -> str:
        body = "\n".join(
            html.escape(plain) + (_STRESS[kind].format(html.escape(stressed)) if stressed else "")
            for plain, stressed, kind in self._parts
        )
        return f'<div class="modsel-explain" style="{MONOSPACE}">{body}</div>'


def explain(node: ModuleSelector) -> Explanation:
    """Which rules of the stylesheet select ``node``, and for the others, what failed."""
    root = node
    while root.parent is not None:
        root = root.parent
    sheet = root.sheet
    where = printable(f"{node.path or '(root)'} ({node.tag})")  # a name cannot forge lines
    if sheet is None:
        return Explanation([(f"{where}: no stylesheet was applied (use modsel.select(model, css))", "", "")])
    parts = [
        (f"{where}: props ", ", ".join(node.props), "props")
        if node.props
        else (f"{where}: props (none)", "", "")
    ]
    if not sheet.rules:
        parts.append(("  the stylesheet has no rules", "", ""))
    for number, rule in enumerate(sheet.rules, 1):
        verdict = _verdict(rule, node)
        kind = "selects" if verdict.startswith("selects") else ""
        parts.append((f"  rule {number} (line {rule.position.line}) `{rule}`: ", verdict, kind))
    return Explanation(parts)


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
