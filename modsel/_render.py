"""Annotated module trees as text (terminals, logs) and HTML (notebooks).

Layout: one line per node, ``name: Class`` indented four spaces per level, then an aligned
column of props (and optionally of parameter counts). Big models stay readable: runs of more
than ``fold`` consecutive siblings whose subtrees are identical (same classes, child names,
parameter shapes and props) print once, followed by one line that counts the rest.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from ._document import ModuleSelector, preorder

__all__ = ["printable", "render_html", "render_text"]

INDENT = "    "
MAX_LABEL_COLUMN = 72  # the props column never starts further right than this
FOLD = 5  # fold runs of more than this many identical siblings


def printable(text: str) -> str:
    """``text`` with every character that is not printable (newlines, ANSI escapes, ...)
    written as its Python escape, so that a module name cannot forge lines of a tree."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


@dataclass(frozen=True)
class _Line:
    depth: int
    label: str  # "name: Class" or the fold summary
    params: tuple[int, int] | None  # (parameters in the subtree, how many of them are frozen)
    props: str


def render_text(
    root: ModuleSelector,
    *,
    params: bool = False,
    max_depth: int | None = None,
    fold: int | None = FOLD,
    only_selected: bool = False,
    header: bool = True,
) -> str:
    """The annotated tree below ``root``.

    ``params``: add a column with the parameter count of each subtree (and, when some
    parameters do not require grad, how many are frozen); ``max_depth``: print
    nodes at most this many levels below ``root``; ``fold``: fold runs of more than this many
    identical siblings (``None`` never folds); ``only_selected``: print only nodes with props
    and their ancestors.
    """
    rows = _rows(root, params=params, max_depth=max_depth, fold=fold, only_selected=only_selected)
    out = ["ModuleSelector:"] if header else []
    out.extend((left + props).rstrip() for left, props in rows)
    return "\n".join(out)


def render_html(
    root: ModuleSelector,
    *,
    params: bool = False,
    max_depth: int | None = None,
    fold: int | None = FOLD,
    only_selected: bool = False,
) -> str:
    """The same tree for notebooks: a ``<pre>`` block, props in bold colour."""
    rows = _rows(root, params=params, max_depth=max_depth, fold=fold, only_selected=only_selected)
    body = "\n".join(
        html.escape(left.rstrip() if not props else left)
        + (f'<b style="color:#b5176b">{html.escape(props)}</b>' if props else "")
        for left, props in rows
    )
    return f'<pre class="modsel-tree" style="line-height:1.25">ModuleSelector:\n{body}</pre>'


def _rows(
    root: ModuleSelector, *, params: bool, max_depth: int | None, fold: int | None, only_selected: bool
) -> list[tuple[str, str]]:
    """(everything left of the props column, padded; the props) for each printed line."""
    lines = _layout(root, params=params, max_depth=max_depth, fold=fold, only_selected=only_selected)
    width = min(MAX_LABEL_COLUMN, max((len(INDENT * ln.depth + ln.label) for ln in lines), default=0))
    counts = [ln.params for ln in lines if ln.params is not None]
    pwidth = max((len(f"{total:,}") for total, _ in counts), default=0)
    any_frozen = any(frozen for _, frozen in counts)
    fwidth = max((len(f"({frozen:,} frozen)") for _, frozen in counts if frozen), default=0)
    rows = []
    for ln in lines:
        left = (INDENT * ln.depth + ln.label).ljust(width) + "    "
        if params:
            total, frozen = ln.params if ln.params is not None else (None, 0)
            left += (f"{total:,}" if total is not None else "").rjust(pwidth) + "    "
            if any_frozen:
                left += (f"({frozen:,} frozen)" if frozen else "").ljust(fwidth) + "    "
        rows.append((left, ln.props))
    return rows


def _subtree_params(order: list[ModuleSelector]) -> dict[int, tuple[int, int]]:
    """(parameters, frozen parameters) of each subtree, keyed by id of the node, bottom-up in
    one pass. A parameter shared by two places counts at each place, as the tree shows it twice.
    """
    totals: dict[int, tuple[int, int]] = {}
    for node in reversed(order):
        own = [p for p in node.module._parameters.values() if p is not None]
        total = sum(p.numel() for p in own)
        frozen = sum(p.numel() for p in own if not p.requires_grad)
        for kid in node._kids:
            kid_total, kid_frozen = totals[id(kid)]
            total, frozen = total + kid_total, frozen + kid_frozen
        totals[id(node)] = (total, frozen)
    return totals


def _signatures(order: list[ModuleSelector]) -> dict[int, int]:
    """An id per node such that equal ids mean identical subtrees (classes, child names,
    parameter shapes and trainability, props), built bottom-up with interning so it stays
    linear."""
    intern: dict[tuple[object, ...], int] = {}
    sig: dict[int, int] = {}
    for node in reversed(order):
        shapes = tuple(
            (k, tuple(p.shape), p.requires_grad) for k, p in node.module._parameters.items() if p is not None
        )
        key = (node._tag, node.props, shapes, tuple((kid.name, sig[id(kid)]) for kid in node._kids))
        sig[id(node)] = intern.setdefault(key, len(intern))
    return sig


def _layout(
    root: ModuleSelector,
    *,
    params: bool,
    max_depth: int | None,
    fold: int | None,
    only_selected: bool,
) -> list[_Line]:
    order = list(preorder(root))  # one walk serves the counts, signatures and selection
    counts = _subtree_params(order) if params else {}
    sigs = _signatures(order) if fold is not None else {}
    keep: set[int] | None = None
    if only_selected:
        keep = set()
        for node in order:
            if node.props:
                current: ModuleSelector | None = node
                while current is not None and id(current) not in keep:
                    keep.add(id(current))
                    if current is root:
                        break
                    current = current.parent
    lines: list[_Line] = []
    # explicit stack of (node, depth below root, fold run or None) to stay iterative on deep trees
    stack: list[tuple[ModuleSelector, int, list[ModuleSelector] | None]] = [(root, 0, None)]
    while stack:
        node, depth, run = stack.pop()
        if run is not None:
            first, last, name = printable(run[0].name), printable(run[-1].name), printable(node.name)
            label = f"{first}…{last}: {printable(node._tag)} ×{len(run)} (same as {name})"
            total = (
                (sum(counts[id(n)][0] for n in run), sum(counts[id(n)][1] for n in run)) if params else None
            )
            lines.append(_Line(depth, label, total, printable(", ".join(node.props))))
            continue
        kids = node._kids
        if keep is not None:
            kids = [kid for kid in kids if id(kid) in keep]
        label = f"{printable(node.name)}: {printable(node._tag)}"
        hidden = max_depth is not None and depth >= max_depth and kids
        if hidden:
            below = _count_below(node)
            label += f" (+{below} module{'' if below == 1 else 's'})"
            kids = []
        props = printable(", ".join(node.props))
        lines.append(_Line(depth, label, counts.get(id(node)) if params else None, props))
        pending: list[tuple[ModuleSelector, int, list[ModuleSelector] | None]] = []
        i = 0
        while i < len(kids):
            kid = kids[i]
            j = i + 1
            if fold is not None:
                while j < len(kids) and sigs[id(kids[j])] == sigs[id(kid)]:
                    j += 1
            pending.append((kid, depth + 1, None))
            if fold is not None and j - i > fold:
                pending.append((kid, depth + 1, kids[i + 1 : j]))
            else:
                pending.extend((k, depth + 1, None) for k in kids[i + 1 : j])
            i = j
        stack.extend(reversed(pending))
    return lines


def _count_below(node: ModuleSelector) -> int:
    return sum(1 for _ in preorder(node)) - 1
