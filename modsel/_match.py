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
from collections.abc import Callable, Iterator

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
)
from ._document import ModuleSelector, build, class_names_of
from ._parser import parse_selector

__all__ = ["Selector", "compile", "compile_list", "match", "match_nodes"]

Test = Callable[[ModuleSelector], bool]
Chain = Callable[[ModuleSelector, "ModuleSelector | None"], bool]


def _always(node: ModuleSelector) -> bool:
    return True


# ---- simple selectors ---------------------------------------------------------------------------
def _type_test(name: str) -> Test:
    return lambda node: node._tag == name


def _id_test(name: str) -> Test:
    return lambda node: node.name == name


def _class_test(name: str) -> Test:
    return lambda node: name in class_names_of(node)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _attribute_test(sel: AttributeSelector) -> Test:
    name, op = sel.name, sel.op
    if op is None:
        return lambda node: name in node.attributes()
    assert sel.value is not None
    fold = sel.flag == "i"
    want = sel.value.casefold() if fold else sel.value
    numeric = None if sel.quoted else _number(sel.value)

    def value_of(node: ModuleSelector) -> str | None:
        value = node.attributes().get(name)
        if value is not None and fold:
            value = value.casefold()
        return value

    if op in ("<", "<=", ">", ">=") or (op in ("=", "!=") and numeric is not None):
        target = numeric if numeric is not None else float(want)
        compare: Callable[[float], bool] = {
            "<": lambda x: x < target,
            "<=": lambda x: x <= target,
            ">": lambda x: x > target,
            ">=": lambda x: x >= target,
            "=": lambda x: x == target,
            "!=": lambda x: x != target,
        }[op]

        def numeric_test(node: ModuleSelector) -> bool:
            value = node.attributes().get(name)
            if value is None:
                return False
            number = _number(value)
            if number is None:  # not a number: only "!=" holds, by text
                return op == "!=" and value != want
            return compare(number)

        return numeric_test

    string_ops: dict[str, Callable[[str], bool]] = {
        "=": lambda v: v == want,
        "!=": lambda v: v != want,
        "~=": lambda v: bool(want) and want in v.split(),
        "|=": lambda v: v == want or v.startswith(want + "-"),
        "^=": lambda v: bool(want) and v.startswith(want),
        "$=": lambda v: bool(want) and v.endswith(want),
        "*=": lambda v: bool(want) and want in v,
    }
    check = string_ops[op]

    def string_test(node: ModuleSelector) -> bool:
        value = value_of(node)
        return value is not None and check(value)

    return string_test


def _nth_test(sel: NthPseudo) -> Test:
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

            def nth_last_child(node: ModuleSelector) -> bool:
                parent = node.parent
                return fits(1 if parent is None else len(parent._kids) - node._index)

            return nth_last_child
        return lambda node: fits(node._index + 1)
    return lambda node: fits(_pseudo.nth_position(node, kind, from_end))


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


def _has_relative(rel: Relative) -> Test:
    comb, cx = rel.combinator, rel.selector
    if len(cx.compounds) == 1:
        test = compile_compound(cx.compounds[0])
        if comb == ">":
            return lambda node: any(test(kid) for kid in node._kids)
        if comb == "+":

            def has_next(node: ModuleSelector) -> bool:
                parent = node.parent
                return (
                    parent is not None
                    and node._index + 1 < len(parent._kids)
                    and test(parent._kids[node._index + 1])
                )

            return has_next
        if comb == "~":
            key = object()

            def has_later(node: ModuleSelector) -> bool:
                parent = node.parent
                if parent is None:
                    return False
                cache = parent.cache()
                last = cache.get(key)
                if last is None:
                    last = cache[key] = max(
                        (i for i, kid in enumerate(parent._kids) if test(kid)), default=-1
                    )
                return node._index < last

            return has_later
        return _has_below(test)

    chain = compile_complex(cx, anchored=comb)
    if comb in (" ", ">"):
        return lambda node: any(chain(cand, node) for cand in _subtree(node))

    def has_sibling_chain(node: ModuleSelector) -> bool:
        parent = node.parent
        if parent is None:
            return False
        for sibling in parent._kids[node._index + 1 :]:
            if chain(sibling, node) or any(chain(cand, node) for cand in _subtree(sibling)):
                return True
        return False

    return has_sibling_chain


def _has_below(test: Test) -> Test:
    """``:has(X)`` for one compound X: some strict descendant passes ``test``. Computed for a
    whole subtree bottom-up on first use and memoised per node, so all queries cost O(n)."""
    key = object()

    def has_below(node: ModuleSelector) -> bool:
        cache = node.cache()
        known = cache.get(key)
        if known is not None:
            return known  # type: ignore[no-any-return]
        # post-order over the not-yet-known part of the subtree
        stack: list[tuple[ModuleSelector, bool]] = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            if not expanded:
                stack.append((current, True))
                for kid in current._kids:
                    if kid._cache is None or key not in kid._cache:
                        stack.append((kid, False))
                continue
            found = False
            for kid in current._kids:
                if test(kid) or kid.cache()[key]:
                    found = True
                    break
            current.cache()[key] = found
        return cache[key]  # type: ignore[no-any-return]

    return has_below


def _has_test(sel: HasPseudo) -> Test:
    tests = [_has_relative(rel) for rel in sel.selectors]
    if len(tests) == 1:
        return tests[0]
    return lambda node: any(test(node) for test in tests)


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


def _simple_test(sel: Simple) -> Test | None:
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
        chains = [compile_complex(cx) for cx in sel.selectors.selectors]
        return _pseudo.LOGICAL[sel.name](chains)
    if isinstance(sel, NthPseudo):
        return _nth_test(sel)
    if isinstance(sel, HasPseudo):
        return _has_test(sel)
    raise TypeError(f"not a simple selector: {sel!r}")  # pragma: no cover


def compile_compound(compound: Compound) -> Test:
    """One test for all simple selectors of a compound, cheapest first."""
    ordered = sorted(compound.selectors, key=lambda s: _COST.get(type(s), 0))
    tests = [t for t in (_simple_test(s) for s in ordered) if t is not None]
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda node: first(node) and second(node)
    if len(tests) == 3:
        first, second, third = tests
        return lambda node: first(node) and second(node) and third(node)
    return lambda node: all(test(node) for test in tests)


def _step(comb: str, prev: Chain, test: Test) -> Chain:
    """Chain for ``prev comb test``: ``test`` holds for the node, ``prev`` for a related node."""
    if comb == " ":

        def descendant(node: ModuleSelector, anchor: ModuleSelector | None) -> bool:
            if not test(node):
                return False
            parent = node.parent
            while parent is not None:
                if prev(parent, anchor):
                    return True
                parent = parent.parent
            return False

        return descendant
    if comb == ">":

        def child(node: ModuleSelector, anchor: ModuleSelector | None) -> bool:
            parent = node.parent
            return parent is not None and test(node) and prev(parent, anchor)

        return child
    if comb == "+":

        def next_sibling(node: ModuleSelector, anchor: ModuleSelector | None) -> bool:
            index = node._index
            parent = node.parent
            return parent is not None and index > 0 and test(node) and prev(parent._kids[index - 1], anchor)

        return next_sibling
    key = object()

    def subsequent_sibling(node: ModuleSelector, anchor: ModuleSelector | None) -> bool:
        parent = node.parent
        if parent is None or not test(node):
            return False
        if anchor is not None:  # depends on the anchor: no memo
            return any(prev(kid, anchor) for kid in parent._kids[: node._index])
        cache = parent.cache()
        first = cache.get(key)
        if first is None:
            first = cache[key] = next(
                (i for i, kid in enumerate(parent._kids) if prev(kid, None)), len(parent._kids)
            )
        return first < node._index

    return subsequent_sibling


def compile_complex(cx: Complex, anchored: str | None = None) -> Chain:
    """A chain for a complex selector. ``anchored``: the combinator that leads from a ``:has()``
    anchor to the first compound (relative selectors)."""
    tests = [compile_compound(c) for c in cx.compounds]
    first = tests[0]
    chain: Chain
    if anchored is None:
        chain = lambda node, anchor: first(node)  # noqa: E731
    else:
        relation = _RELATION[anchored]

        def chain(node: ModuleSelector, anchor: ModuleSelector | None) -> bool:
            return anchor is not None and first(node) and relation(node, anchor)

    for comb, test in zip(cx.combinators, tests[1:], strict=True):
        chain = _step(comb, chain, test)
    return chain


def compile_list(selectors: SelectorList) -> Test:
    """A test for a selector list: any of its complex selectors matches the node."""
    chains = [compile_complex(cx) for cx in selectors.selectors]
    if len(chains) == 1:
        only = chains[0]
        return lambda node: only(node, None)
    return lambda node: any(chain(node, None) for chain in chains)


class Selector:
    """A compiled selector list (``modsel.compile``). Reusable and thread-safe: per-document
    memo lives on the document's nodes, not here."""

    __slots__ = ("_test", "ast", "source")

    def __init__(self, source: str, ast: SelectorList) -> None:
        self.source = source
        self.ast = ast
        self._test = compile_list(ast)

    def test(self, node: ModuleSelector) -> bool:
        """Whether the selector matches this node of a document (from ``modsel.select``)."""
        return self._test(node)

    def match(self, model: Module, *, remove_duplicate: bool = True) -> list[tuple[str, Module]]:
        """``(path, module)`` for each matching module, in ``named_modules()`` order.

        A module registered in several places is reported once (at its first matching place)
        unless ``remove_duplicate=False``.
        """
        return [(node.path, node.module) for node in self.match_nodes(build(model), remove_duplicate)]

    def match_nodes(self, root: ModuleSelector, remove_duplicate: bool = True) -> list[ModuleSelector]:
        """The matching nodes at and below ``root``, in document order."""
        return match_nodes(self._test, root, remove_duplicate)

    def __repr__(self) -> str:
        return f"modsel.compile({self.source!r})"


def match_nodes(test: Test, root: ModuleSelector, remove_duplicate: bool = True) -> list[ModuleSelector]:
    """Nodes passing ``test``, pre-order; with ``remove_duplicate``, one per module."""
    found: list[ModuleSelector] = []
    add = found.append
    seen: set[int] = set()
    stack = [root]
    pop, extend = stack.pop, stack.extend
    while stack:
        node = pop()
        if test(node):
            if remove_duplicate:
                key = id(node.module)
                if key in seen:
                    kids = node._kids
                    if kids:
                        extend(reversed(kids))
                    continue
                seen.add(key)
            add(node)
        kids = node._kids
        if kids:
            extend(reversed(kids))
    return found


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
