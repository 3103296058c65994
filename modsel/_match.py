"""AST -> predicates over the module document, and the matching walk.

A selector compiles to closures. Complex selectors match right to left: the subject compound
is tested first (cheap, and false for most modules), then combinators walk to parents and
siblings. Chains take ``(node, anchor)``: ``anchor`` is ``None`` in the document and the
``:has()`` subject inside a relative selector. Per-parent facts (sibling positions, "a later
sibling matches", ":has() below") are memoised on the document nodes, so wide or deep trees
stay linear.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator
from typing import Any

from torch.nn import Module

from . import _pseudo
from ._ast import (
    AttributeSelector,
    ClassSelector,
    Complex,
    Compound,
    HasPseudo,
    IdSelector,
    LogicalPseudo,
    NthPseudo,
    PseudoClass,
    Relative,
    SelectorList,
    Simple,
    TypeSelector,
    UniversalSelector,
    walk_simple,
)
from ._document import (
    ModuleSelector,
    class_names_of,
    dismantle,
    grow,
    new_root,
    paused_gc,
    preorder,
    unreadable_attribute,
)
from ._parser import NUMBER, parse_selector

__all__ = ["Selector", "compile", "compile_list", "first_of_each_module", "match", "match_nodes"]

Pred = _pseudo.Pred


def _always(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
    return True


# ---- simple selectors ---------------------------------------------------------------------------
def _type_test(name: str) -> Pred:
    return lambda node, anchor=None, /: node._tag == name


def _id_test(name: str) -> Pred:
    return lambda node, anchor=None, /: node.name == name


def _class_test(name: str) -> Pred:
    return lambda node, anchor=None, /: name in class_names_of(node)


def _number(text: str) -> float | None:
    """A CSS number (``nan``, ``inf`` and ``1_000`` are words here, not numbers)."""
    return float(text) if NUMBER.match(text) else None


_NUMERIC_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
    "=": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
}

_STRING_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "=": lambda v, want: v == want,
    "!=": lambda v, want: v != want,
    "~=": lambda v, want: bool(want) and want in v.split(),
    "|=": lambda v, want: v == want or v.startswith(want + "-"),
    "^=": lambda v, want: bool(want) and v.startswith(want),
    "$=": lambda v, want: bool(want) and v.endswith(want),
    "*=": lambda v, want: bool(want) and want in v,
}


def _attribute_test(sel: AttributeSelector) -> Pred:
    name, op = sel.name, sel.op
    if op is None:

        def present(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
            attrs = node.attributes()
            if name in attrs:
                return True
            if type(attrs) is not dict:  # PartialAttributes: the module may have it
                raise unreadable_attribute(node, name)
            return False

        return present
    assert sel.value is not None
    fold = sel.flag == "i"
    want = sel.value.casefold() if fold else sel.value
    numeric = None if sel.quoted else _number(sel.value)

    if op in ("<", "<=", ">", ">=") or (op in ("=", "!=") and numeric is not None):
        target = numeric if numeric is not None else float(want)
        compare = _NUMERIC_COMPARE[op]

        def numeric_test(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
            attrs = node.attributes()
            value = attrs.get(name)
            if value is None:
                if type(attrs) is not dict:  # PartialAttributes: the module may have it
                    raise unreadable_attribute(node, name)
                return False
            number = _number(value)
            if number is None:  # not a number: only "!=" holds, by text
                return op == "!=" and value != want
            return compare(number, target)

        return numeric_test

    check = _STRING_COMPARE[op]

    def string_test(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        attrs = node.attributes()
        value = attrs.get(name)
        if value is None:
            if type(attrs) is not dict:  # PartialAttributes: the module may have it
                raise unreadable_attribute(node, name)
            return False
        return check(value.casefold() if fold else value, want)

    return string_test


def _nth_test(sel: NthPseudo) -> Pred:
    a, b = sel.a, sel.b
    from_end = "last" in sel.name
    kind: object = "of-type" if sel.name.endswith("of-type") else None
    if kind is None and sel.of is not None:
        kind = compile_list(sel.of)

    def fits(pos: int) -> bool:
        if pos <= 0:
            return False
        if a == 0:
            return pos == b
        k, rem = divmod(pos - b, a)
        return rem == 0 and k >= 0

    if kind is None:  # plain :nth-child / :nth-last-child: the position is known directly
        if from_end:

            def nth_last_child(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
                parent = node.parent
                return fits(1 if parent is None else len(parent._kids) - node._index)

            return nth_last_child
        return lambda node, anchor=None, /: fits(node._index + 1)
    key = object()
    return lambda node, anchor=None, /: fits(_pseudo.nth_position(node, kind, from_end, key))


# ---- :has() -------------------------------------------------------------------------------------
def _below(node: ModuleSelector, anchor: ModuleSelector) -> bool:
    parent = node.parent
    while parent is not None:
        if parent is anchor:
            return True
        parent = parent.parent
    return False


def _child_of(node: ModuleSelector, anchor: ModuleSelector) -> bool:
    return node.parent is anchor


def _next_of(node: ModuleSelector, anchor: ModuleSelector) -> bool:
    return anchor.parent is not None and node.parent is anchor.parent and node._index == anchor._index + 1


def _later_than(node: ModuleSelector, anchor: ModuleSelector) -> bool:
    return anchor.parent is not None and node.parent is anchor.parent and node._index > anchor._index


_RELATION = {" ": _below, ">": _child_of, "+": _next_of, "~": _later_than}


def _subtree(node: ModuleSelector) -> Iterator[ModuleSelector]:
    """Strict descendants of ``node``, pre-order."""
    stack = list(reversed(node._kids))
    while stack:
        current = stack.pop()
        yield current
        if current._kids:
            stack.extend(reversed(current._kids))


def _has_relative(rel: Relative) -> Pred:
    comb, cx = rel.combinator, rel.selector
    if len(cx.compounds) == 1:
        test = compile_compound(cx.compounds[0])
        if comb == ">":

            def has_child(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
                for kid in node._kids:  # a plain loop: no generator per node on this hot path  # noqa: SIM110
                    if test(kid):
                        return True
                return False

            return has_child
        if comb == "+":

            def has_next(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
                parent = node.parent
                index = node._index + 1
                return parent is not None and index < len(parent._kids) and test(parent._kids[index])

            return has_next
        if comb == "~":
            key = object()

            def has_later(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
                parent = node.parent
                if parent is None:
                    return False
                known = parent.memo(key)
                last: int | None = known.get(id(parent))
                if last is None:
                    last = known[id(parent)] = max(
                        (i for i, kid in enumerate(parent._kids) if test(kid)), default=-1
                    )
                return node._index < last

            return has_later
        return _has_below(test)

    chain = compile_complex(cx, anchored=comb)
    if comb in (" ", ">"):
        return lambda node, anchor=None, /: any(chain(cand, node) for cand in _subtree(node))

    def has_sibling_chain(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        parent = node.parent
        if parent is None:
            return False
        for sibling in parent._kids[node._index + 1 :]:
            if chain(sibling, node) or any(chain(cand, node) for cand in _subtree(sibling)):
                return True
        return False

    return has_sibling_chain


def _has_below(test: Pred) -> Pred:
    """``:has(X)`` for one compound X: some strict descendant passes ``test``. On the first
    query the whole document is tested once and every ancestor of each match is marked
    (stopping at one already marked), so all queries together cost O(n)."""
    key = object()

    def has_below(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        marked = node.memo(key)
        if not marked:
            root = node
            while root.parent is not None:
                root = root.parent
            marked[_DONE] = True
            for hit in filter(test, root.order if root.order is not None else preorder(root)):
                parent = hit.parent
                while parent is not None and id(parent) not in marked:
                    marked[id(parent)] = True
                    parent = parent.parent
        return id(node) in marked

    return has_below


_DONE = -1  # a key no id() can be: "this memo table is filled"


def _has_test(sel: HasPseudo) -> Pred:
    tests = [_has_relative(rel) for rel in sel.selectors]
    if len(tests) == 1:
        return tests[0]
    return lambda node, anchor=None, /: any(test(node) for test in tests)


# ---- compounds, complex selectors, lists --------------------------------------------------------
_COST = {
    TypeSelector: 0,
    IdSelector: 0,
    ClassSelector: 1,
    PseudoClass: 2,
    AttributeSelector: 3,
    NthPseudo: 4,
    LogicalPseudo: 5,
    HasPseudo: 6,
}
_EXPENSIVE = 4  # compounds with a simple selector this costly are tested after their context


def _simple_test(sel: Simple) -> Pred | None:
    if isinstance(sel, TypeSelector):
        return _type_test(sel.name)
    if isinstance(sel, UniversalSelector):
        return None
    if isinstance(sel, IdSelector):
        return _id_test(sel.name)
    if isinstance(sel, ClassSelector):
        return _class_test(sel.name)
    if isinstance(sel, AttributeSelector):
        return _attribute_test(sel)
    if isinstance(sel, PseudoClass):
        return _pseudo.SIMPLE[sel.name]
    if isinstance(sel, LogicalPseudo):
        return _pseudo.LOGICAL[sel.name]([compile_complex(cx) for cx in sel.selectors.selectors])
    if isinstance(sel, NthPseudo):
        return _nth_test(sel)
    if isinstance(sel, HasPseudo):
        return _has_test(sel)
    raise TypeError(f"not a simple selector: {sel!r}")  # pragma: no cover


def _cost(compound: Compound) -> int:
    return max((_COST.get(type(s), 0) for s in compound.selectors), default=0)


def compile_compound(compound: Compound) -> Pred:
    """One test for all simple selectors of a compound, cheapest first."""
    ordered = sorted(compound.selectors, key=lambda s: _COST.get(type(s), 0))
    tests = [t for t in (_simple_test(s) for s in ordered) if t is not None]
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda node, anchor=None, /: first(node) and second(node)
    if len(tests) == 3:
        first, second, third = tests
        return lambda node, anchor=None, /: first(node) and second(node) and third(node)
    return lambda node, anchor=None, /: all(test(node) for test in tests)


# The first descendant step of a chain walks up at most this many ancestors itself: cheaper
# than a memo on real models, which are shallow (a transformer's Linear is 3-6 levels down);
# above that it asks the per-document memo of ``_above``, so that a 10,000-deep chain stays
# linear. A tuple: iterating one costs less than a range.
_SHORT_WALK = (None,) * 16


def _above(prev: Pred) -> Callable[[ModuleSelector], bool]:
    """``passes(start)``: whether ``start`` or one of its ancestors passes ``prev`` (in the
    document: no anchor). Remembered per document, so every (node, step) is tested once: the
    answer of a node is found from the nearest remembered ancestor, top down, without
    recursion."""
    key = object()
    last: list[tuple[object, dict[int, bool]]] = [(None, {})]  # (a document's memo, the table)

    def passes(start: ModuleSelector) -> bool:
        memo = start._memo  # the document's memo (see ModuleSelector.memo)
        seen, known = last[0]  # one read: another thread may replace it meanwhile
        if memo is not seen:  # not the document of the last call: find its table
            table = memo.get(key)  # id(node) -> "it or an ancestor passes prev"
            if table is None:
                table = memo[key] = {}
            known = table
            last[0] = (memo, known)
        found = known.get(id(start))
        if found is not None:  # a sibling asked already: the common case
            return found
        unknown = []
        node: ModuleSelector | None = start
        while node is not None and id(node) not in known:
            unknown.append(node)
            node = node.parent
        answer = known[id(node)] if node is not None else False
        for above in reversed(unknown):  # top down: each from the one above it
            answer = answer or prev(above, None)
            known[id(above)] = answer
        return answer

    return passes


def _walk_up(parent: ModuleSelector | None, prev: Pred, anchor: ModuleSelector | None) -> bool:
    """Whether ``parent`` or an ancestor passes ``prev`` against a ``:has()`` anchor, walked
    (such a test depends on the anchor: nothing to remember)."""
    while parent is not None:
        if prev(parent, anchor):
            return True
        parent = parent.parent
    return False


def _descendant_of_type(tag: str, test: Pred) -> Pred:
    """``Type test``: some ancestor has the tag (compared inline: no call per ancestor)."""
    above = _above(lambda node, anchor=None, /: node._tag == tag)

    def descendant_of_type(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        if test is not _always and not test(node):
            return False
        parent = node.parent
        for _ in _SHORT_WALK:
            if parent is None:
                return False
            if parent._tag == tag:
                return True
            parent = parent.parent
        return parent is not None and above(parent)

    return descendant_of_type


def _descendant_walk(prev: Pred, test: Pred) -> Pred:
    """``prev test`` where ``prev`` walks no ancestors itself: walk up the first
    ``_SHORT_WALK`` ancestors, then ask the memo."""
    above = _above(prev)

    def descendant(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        if test is not _always and not test(node):
            return False
        parent = node.parent
        for _ in _SHORT_WALK:
            if parent is None:
                return False
            if prev(parent, anchor):
                return True
            parent = parent.parent
        if anchor is not None:
            return _walk_up(parent, prev, anchor)
        return parent is not None and above(parent)

    return descendant


def _descendant_step(prev: Pred, test: Pred) -> Pred:
    """``prev test`` where ``prev`` walks ancestors too (``A B C``, ``#x * * *``): walking
    again for each ancestor is exponential in the combinators on deep chains, so every
    ancestor is asked through the memo. A test against a ``:has()`` anchor is walked (it
    depends on the anchor)."""
    above = _above(prev)

    def descendant(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        if test is not _always and not test(node):
            return False
        parent = node.parent
        if anchor is not None:
            return _walk_up(parent, prev, anchor)
        return parent is not None and above(parent)

    return descendant


def _step(comb: str, prev: Pred, test: Pred, expensive: bool, prev_tag: str | None, walks: bool) -> Pred:
    """The test for ``prev comb test``: ``test`` holds for the node and ``prev`` for the node
    the combinator leads to. ``expensive``: check the (one) related node before ``test``.
    ``prev_tag``: ``prev`` is just "the tag is prev_tag", with no context of its own.
    ``walks``: ``prev`` walks ancestors or siblings itself (a descendant or ``~`` before)."""
    if comb == " ":
        if prev_tag is not None:
            return _descendant_of_type(prev_tag, test)
        return _descendant_step(prev, test) if walks else _descendant_walk(prev, test)
    if comb == ">" and prev_tag is not None:
        if test is _always:
            return lambda node, anchor=None, /: node.parent is not None and node.parent._tag == prev_tag

        def child_of_type(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
            parent = node.parent
            return parent is not None and parent._tag == prev_tag and test(node)

        return child_of_type
    if comb == ">":
        if test is _always:  # "A > *"

            def any_child(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
                parent = node.parent
                return parent is not None and prev(parent, anchor)

            return any_child
        if expensive:

            def child_late(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
                parent = node.parent
                return parent is not None and prev(parent, anchor) and test(node)

            return child_late

        def child(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
            parent = node.parent
            return parent is not None and test(node) and prev(parent, anchor)

        return child
    if comb == "+":

        def next_sibling(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
            index = node._index
            parent = node.parent
            return parent is not None and index > 0 and test(node) and prev(parent._kids[index - 1], anchor)

        return next_sibling
    key = object()

    def subsequent_sibling(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        parent = node.parent
        if parent is None or not test(node):
            return False
        # plain loops, not any() or next() over a generator: those would add a frame per
        # combinator to the nesting of the chain's calls
        kids = parent._kids
        if anchor is not None:  # depends on the anchor: no memo
            for kid in kids[: node._index]:  # noqa: SIM110
                if prev(kid, anchor):
                    return True
            return False
        known = parent.memo(key)
        first: int | None = known.get(id(parent))
        if first is None:
            first = len(kids)
            for i, kid in enumerate(kids):
                if prev(kid, None):
                    first = i
                    break
            known[id(parent)] = first
        return first < node._index

    return subsequent_sibling


# Complex selectors of more compounds than this are matched by ``_long_chain``'s loop: the
# closures of ``_step`` call each other, a Python frame per combinator, which ~1,000
# combinators turn into a RecursionError. Real selectors have 1-5 compounds; chains this long,
# nested ``MAX_NESTING`` deep (``:nth-child(n of A ~ ...)`` in each other), take ~300 frames at
# worst, well inside the default limit of 1,000 (tests/modsel/test_deep.py checks it).
MAX_CLOSURE_CHAIN = 8

# the goals of ``_long_chain``: P(j, x) "compounds 0..j match, ending at x"; UP(j, x) "x or an
# ancestor is a P(j, .)"; LEFT(j, x) "x or an earlier sibling is a P(j, .)"
_P, _UP, _LEFT = 0, 1, 2
# what the combinator before compound j asks of which node: the same goal kind of j - 1
_ASKS = {">": _P, "+": _P, " ": _UP, "~": _LEFT}


def _previous(node: ModuleSelector) -> ModuleSelector | None:
    parent = node.parent
    return parent._kids[node._index - 1] if parent is not None and node._index > 0 else None


def _long_chain(cx: Complex, anchored: str | None) -> Pred:
    """The test for a complex selector of many compounds, without recursion: an explicit
    stack of goals (see ``_P``), each answered once per document and remembered (per anchor
    in a relative selector of ``:has()``), so a match is linear in modules x compounds."""
    tests = [compile_compound(c) for c in cx.compounds]
    size = len(tests)
    goals = 3 * size  # goal g = kind * size + j; its memo key for node x: id(x) * goals + g
    asks = [0, *(_ASKS[comb] * size for comb in cx.combinators)]  # indexed by j
    to_parent = [False, *(comb in " >" for comb in cx.combinators)]
    relation = _RELATION[anchored] if anchored is not None else None
    key = object()

    def long_chain(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
        if (relation is not None and anchor is None) or not tests[-1](node):
            return False  # most nodes: the subject compound fails, nothing to remember
        y = node.parent if to_parent[-1] else _previous(node)
        if y is None:
            return False
        known: dict[int, Any] = node.memo(key)
        if relation is not None:  # the answers depend on the anchor: keep the latest anchor's
            latest = known.get(_DONE)  # (anchor, its table); :has() asks one anchor many times
            if latest is None or latest[0] is not anchor:
                latest = known[_DONE] = (anchor, {})
            known = latest[1]
        answer = False
        stack = [(asks[-1] + size - 2, y, 0)]  # (goal, node, phase); the subject's goal is not asked again
        pop, push = stack.pop, stack.append
        while stack:
            goal, x, phase = pop()
            at = id(x) * goals + goal
            kind, j = divmod(goal, size)
            if phase == 0:  # a new goal
                remembered = known.get(at)
                if remembered is not None:
                    answer = remembered
                    continue
                if kind != _P:  # UP / LEFT: first whether x itself is a P(j, .)
                    push((goal, x, 1))
                    push((j, x, 0))
                    continue
                if not tests[j](x) or (
                    j == 0 and relation is not None and (anchor is None or not relation(x, anchor))
                ):
                    answer = known[at] = False
                    continue
                if j == 0:
                    answer = known[at] = True
                    continue
                y = x.parent if to_parent[j] else _previous(x)
                if y is None:
                    answer = known[at] = False
                    continue
                push((goal, x, 1))  # then take the answer about y
                push((asks[j] + j - 1, y, 0))
            elif kind == _P or answer or phase == 2:
                known[at] = answer  # P: its combinator's answer; UP / LEFT: found, or the next's
            else:  # UP / LEFT where x is no P(j, .): ask the same of its parent / previous sibling
                y = x.parent if kind == _UP else _previous(x)
                if y is None:
                    answer = known[at] = False
                    continue
                push((goal, x, 2))
                push((goal, y, 0))
        return answer

    return long_chain


def compile_complex(cx: Complex, anchored: str | None = None) -> Pred:
    """The test for a complex selector. ``anchored``: the combinator that leads from a
    ``:has()`` anchor to the first compound (relative selectors)."""
    if len(cx.compounds) > MAX_CLOSURE_CHAIN:
        return _long_chain(cx, anchored)
    tests = [compile_compound(c) for c in cx.compounds]
    chain = tests[0]
    if anchored is not None:
        first, relation = tests[0], _RELATION[anchored]

        def chain(node: ModuleSelector, anchor: ModuleSelector | None = None, /) -> bool:
            return anchor is not None and first(node) and relation(node, anchor)

    # "Type > ..." and "Type ...": compare the tag inline instead of calling the type test
    first_tag = None
    lead = cx.compounds[0].selectors
    if anchored is None and len(lead) == 1 and isinstance(lead[0], TypeSelector):
        first_tag = lead[0].name
    walks = anchored is not None  # a relative selector's first test walks to its anchor
    for i, (comb, test, compound) in enumerate(zip(cx.combinators, tests[1:], cx.compounds[1:], strict=True)):
        prev_tag = first_tag if i == 0 else None
        chain = _step(comb, chain, test, _cost(compound) >= _EXPENSIVE, prev_tag, walks)
        walks = walks or comb in " ~"
    return chain


def compile_list(selectors: SelectorList) -> Pred:
    """The test for a selector list: any of its complex selectors matches the node."""
    tests = [compile_complex(cx) for cx in selectors.selectors]
    if len(tests) == 1:
        return tests[0]
    return lambda node, anchor=None, /: any(test(node) for test in tests)


def looks_below(selectors: SelectorList) -> bool:
    """Whether a test of one node may read the children of a node that comes *after* it in
    document order: ``:has()`` (descendants, later siblings) and ``:empty`` (it can be asked of
    later siblings through ``~`` or ``of S``). Other selectors can be tested during the walk
    that builds the tree, as each node's ancestors, siblings and children exist by then; these
    need the whole tree first."""
    return any(
        isinstance(simple, HasPseudo) or (isinstance(simple, PseudoClass) and simple.name == "empty")
        for simple in walk_simple(selectors)
    )


class Selector:
    """A compiled selector list (``modsel.compile``). Reusable and thread-safe: per-document
    memo lives on the document's nodes, not here."""

    __slots__ = ("_looks_below", "_test", "ast", "source")

    def __init__(self, source: str, ast: SelectorList) -> None:
        self.source = source
        self.ast = ast
        self._test = compile_list(ast)
        self._looks_below = looks_below(ast)

    def test(self, node: ModuleSelector) -> bool:
        """Whether the selector matches this node of a document (from ``modsel.select``)."""
        return self._test(node)

    def match(self, model: Module, *, remove_duplicate: bool = True) -> list[tuple[str, Module]]:
        """``(path, module)`` for each matching module, in ``named_modules()`` order.

        A module registered in several places is reported once (at its first matching place)
        unless ``remove_duplicate=False``.
        """
        test = self._test
        parents: list[ModuleSelector] = []
        with paused_gc():
            root = new_root(model)
            if self._looks_below:  # the whole tree first, then test
                hits = [node for node in grow(root, parents) if test(node)]
            else:
                hits = grow(root, parents, test)
            # C-level loops: this part runs once per match, up to 100k times
            modules = list(map(_MODULE_OF, hits))
            if remove_duplicate and len(set(map(id, modules))) != len(modules):
                hits = first_of_each_module(hits)
                modules = list(map(_MODULE_OF, hits))
            found = list(zip(map(_PATH_OF, hits), modules, strict=True))
            # free the tree while the collector is paused: alive at gc.enable(), its nodes would
            # be scanned by the next young collection for nothing (~0.15x of a match)
            dismantle(parents)
            del root, hits, parents, modules
        return found

    def match_nodes(self, root: ModuleSelector, remove_duplicate: bool = True) -> list[ModuleSelector]:
        """The matching nodes at and below ``root`` (of a built tree), in document order."""
        return match_nodes(self._test, root, remove_duplicate)

    def __repr__(self) -> str:
        return f"modsel.compile({self.source!r})"


def match_nodes(test: Pred, root: ModuleSelector, remove_duplicate: bool = True) -> list[ModuleSelector]:
    """Nodes of a built tree passing ``test``, pre-order; with ``remove_duplicate``, one per
    module."""
    found = list(filter(test, preorder(root)))
    return first_of_each_module(found) if remove_duplicate else found


_MODULE_OF = operator.attrgetter("module")
_PATH_OF = operator.attrgetter("path")


def first_of_each_module(nodes: list[ModuleSelector]) -> list[ModuleSelector]:
    """The nodes whose module has not appeared earlier in the list."""
    seen: set[int] = set()
    first = []
    for node in nodes:
        if id(node.module) not in seen:
            seen.add(id(node.module))
            first.append(node)
    return first


@functools.lru_cache(maxsize=1024)
def compile(selector: str) -> Selector:  # noqa: A001 - the public name the API asks for
    """Parse and compile a selector list; cached by text."""
    return Selector(selector, parse_selector(selector))


def match(
    model: Module, selector: str | Selector, *, remove_duplicate: bool = True
) -> list[tuple[str, Module]]:
    """``(path, module)`` for the modules of ``model`` that ``selector`` matches, in
    ``named_modules()`` order (root path ``""``)."""
    compiled = selector if isinstance(selector, Selector) else compile(selector)
    return compiled.match(model, remove_duplicate=remove_duplicate)
