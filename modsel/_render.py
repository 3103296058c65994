"""Annotated module trees as text (terminals, logs) and HTML (notebooks).

Layout: one line per node, ``name: Class`` indented four spaces per level, then an aligned
column of props (and optionally of parameter counts). Big models stay readable: runs of more
than ``fold`` consecutive siblings whose subtrees are identical (same classes, child names,
parameter shapes and props) print once, followed by one line that counts the rest; a node cut
by ``max_depth`` says how many modules, and how many selected ones, it hides.

Parameter counts are those of ``module.parameters()``: a tensor held in several places (tied
embeddings) counts once in every subtree that holds it, and each later holder is marked
``(tied with <first place>)``, so that the root's count is the one model cards give.

The HTML shows the same text in a monospace block (a notebook's CSS cannot make its columns
ragged); each node with children is a ``<details open>`` that folds its subtree. ``tree()``
returns a ``Tree``: the text, with that HTML for notebooks.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import NamedTuple

from ._document import SELECTED, ModuleSelector, preorder
from ._shown import MONOSPACE, Shown

__all__ = ["Tree", "printable", "render_html", "render_text", "render_tree"]

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
    note: str = ""  # after the props: a tie ("(tied with x)"), what a cut hides ("… 3 selected below")


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

    ``params``: add a column with the parameter count of each subtree, each tensor counted once
    however many modules hold it (and, when some parameters do not require grad, how many are
    frozen), and mark each module that holds a tensor an earlier one holds ``(tied with
    <path>)``; ``max_depth``: print nodes at most this many levels below ``root`` (a cut node
    says how many modules it hides, and in the props column how many selected ones);
    ``fold``: fold runs of more than this many identical siblings (``None`` never folds);
    ``only_selected``: print only nodes with props and their ancestors.
    """
    rows = _rows(root, params=params, max_depth=max_depth, fold=fold, only_selected=only_selected)
    return _text(rows, header)


def render_html(
    root: ModuleSelector,
    *,
    params: bool = False,
    max_depth: int | None = None,
    fold: int | None = FOLD,
    only_selected: bool = False,
    header: bool = True,
) -> str:
    """The same tree for notebooks (options as ``render_text``): a monospace block whose
    text is ``render_text``'s, each node with children a ``<details open>`` that folds its
    subtree, props in bold colour (tie marks and what a cut hides in italics)."""
    rows = _rows(root, params=params, max_depth=max_depth, fold=fold, only_selected=only_selected)
    return _html(rows, header=header)


class _Row(NamedTuple):
    depth: int
    left: str  # the indentation, the label and the count columns, padded to the props column
    props: str
    note: str


def _text(rows: list[_Row], header: bool) -> str:
    out = ["ModuleSelector:"] if header else []
    out.extend((r.left + r.props + (" " if r.props and r.note else "") + r.note).rstrip() for r in rows)
    return "\n".join(out)


class Tree(Shown):
    """The annotated tree ``ModuleSelector.tree()`` returns: its text, a ``str`` that a REPL or
    notebook shows as is, and in notebooks (``_repr_html_``) the same tree as ``render_html``."""

    _rows: list[_Row]
    _header: bool

    def __new__(cls, rows: list[_Row], header: bool = True) -> Tree:
        self = super().__new__(cls, _text(rows, header))
        self._rows, self._header = rows, header
        return self

    def _repr_html_(self) -> str:
        return _html(self._rows, self._header)


def render_tree(
    root: ModuleSelector,
    *,
    params: bool = False,
    max_depth: int | None = None,
    fold: int | None = FOLD,
    only_selected: bool = False,
    header: bool = True,
) -> Tree:
    """``render_text`` as a ``Tree`` (what ``ModuleSelector.tree`` returns), which keeps the
    rows for its HTML."""
    rows = _rows(root, params=params, max_depth=max_depth, fold=fold, only_selected=only_selected)
    return Tree(rows, header)


# The disclosure triangle is drawn in the two columns of indentation left of a node's name (the
# root's in the block's left padding) by an empty span that takes no width, so every line keeps
# render_text's text and the columns stay aligned; the browser's own marker is hidden.
_STYLE = (
    "<style>"
    ".modsel-tree summary{display:block;list-style:none;cursor:pointer}"
    ".modsel-tree summary::-webkit-details-marker{display:none}"
    ".modsel-tree summary:hover{background:rgba(127,127,127,.12)}"
    ".modsel-tree .modsel-fold::before{content:'\\25be';display:inline-block;width:2ch;"
    "margin-left:-2ch;color:#888}"
    ".modsel-tree details:not([open])>summary>.modsel-fold::before{content:'\\25b8'}"
    "</style>"
)
_PROPS = '<b style="color:#b5176b;background:rgba(181,23,107,.1)">'
_NOTE = '<i style="color:#b5176b">'


def _html(rows: list[_Row], header: bool) -> str:
    """The rows as nested ``<details>``, without recursion: a stack of the open ones' depths.

    Each line ends with its newline (the last one without), inside its ``<summary>`` if it has
    one, so no text sits between blocks and the tags stripped leave ``_text``'s text.
    """
    out = [_STYLE, f'<div class="modsel-tree" style="{MONOSPACE};padding-left:2ch">']
    if header:
        out.append("ModuleSelector:\n" if rows else "ModuleSelector:")
    open_depths: list[int] = []
    for i, row in enumerate(rows):
        while open_depths and open_depths[-1] >= row.depth:
            open_depths.pop()
            out.append("</details>")
        last = i + 1 == len(rows)
        parent = not last and rows[i + 1].depth > row.depth
        indent = len(INDENT) * row.depth
        left = row.left if row.props or row.note else row.left.rstrip()
        line = "".join(
            (
                left[:indent],
                '<span class="modsel-fold"></span>' if parent else "",
                html.escape(left[indent:]),
                f"{_PROPS}{html.escape(row.props)}</b>" if row.props else "",
                " " if row.props and row.note else "",
                f"{_NOTE}{html.escape(row.note)}</i>" if row.note else "",
                "" if last else "\n",
            )
        )
        if parent:
            out.append(f"<details open><summary>{line}</summary>")
            open_depths.append(row.depth)
        else:
            out.append(line)
    out.append("</details>" * len(open_depths))
    out.append("</div>")
    return "".join(out)


def _rows(
    root: ModuleSelector, *, params: bool, max_depth: int | None, fold: int | None, only_selected: bool
) -> list[_Row]:
    """(depth; everything left of the props column, padded; the props; the note) for each
    printed line."""
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
        rows.append(_Row(ln.depth, left, ln.props, ln.note))
    return rows


@dataclass
class _Params:
    """The parameter facts of a tree: ``totals`` maps id(node) to (parameters, frozen ones) of
    its subtree, each tensor once; ``tied`` maps id(node) to the mark of a node holding a
    tensor that an earlier place holds; ``shared`` holds the id of every tensor held in more
    than one place (empty for most models, which lets fold lines add their runs' totals)."""

    totals: dict[int, tuple[int, int]]
    tied: dict[int, str]
    shared: set[int]


def _subtree_params(order: list[ModuleSelector]) -> _Params:
    """Distinct (parameters, frozen parameters) of each subtree in one bottom-up pass.

    Each subtree counts a tensor once, as ``module.parameters()`` does, however many of its
    modules (or slots of one module) hold it. Summing the children's totals counts a tensor
    held at k places k times in a subtree that holds them all; the fix is the classic one for
    counting distinct values per subtree: with the holders in document order, take the tensor
    off once at the lowest common ancestor of each two consecutive holders. The walk visits
    nodes in reverse document order, so each holder meets the one after it (the last holder seen)
    and their common ancestor is still to be totalled. Untied tensors cost a dict lookup; a
    tied one also walks up from each holder but the first to its common ancestor with the
    holder before it, which passes each edge of the subtree its holders span at most once
    (plus, at the first tie, one dict of document positions).
    """
    totals: dict[int, tuple[int, int]] = {}
    last: dict[int, ModuleSelector] = {}  # id(tensor) -> its holder earliest in document order so far
    late: list[ModuleSelector] = []  # the holder of each place that is not a tensor's first
    shared: set[int] = set()
    position: dict[int, int] = {}  # document position of each node, made at the first tie
    minus: dict[int, tuple[int, int]] = {}  # id(common ancestor) -> what its children counted twice
    for i in range(len(order) - 1, -1, -1):
        node = order[i]
        total = frozen = 0
        for p in node.module._parameters.values():
            if p is None:
                continue
            n = p.numel()
            total += n
            if not p.requires_grad:
                frozen += n
            key = id(p)
            after = last.get(key)
            last[key] = node
            if after is None:
                continue
            # p is held here and at ``after``, later in document order (or at an earlier slot
            # of this very node): their lowest common ancestor counts it twice, take it off there
            if not position:
                position = {id(m): j for j, m in enumerate(order)}
            shared.add(key)
            late.append(after)  # ``after`` is this node when an earlier slot holds p too
            common = after
            while position[id(common)] > i:
                parent = common.parent
                assert parent is not None  # order[0], the root, has position 0
                common = parent
            less = minus.get(id(common), (0, 0))
            minus[id(common)] = (less[0] + n, less[1] + (0 if p.requires_grad else n))
        for kid in node._kids:
            kid_total, kid_frozen = totals[id(kid)]
            total, frozen = total + kid_total, frozen + kid_frozen
        if minus and id(node) in minus:
            less = minus.pop(id(node))
            total, frozen = total - less[0], frozen - less[1]
        totals[id(node)] = (total, frozen)
    return _Params(totals, _tie_marks(late, last, shared), shared)


def _tie_marks(
    late: list[ModuleSelector], first: dict[int, ModuleSelector], shared: set[int]
) -> dict[int, str]:
    """``tied with A, B`` for each node holding a tied tensor at a place that is not its first
    (document order: nodes in pre-order, a node's slots in registration order), naming the
    first place of each such tensor (its path, ``root`` for the root; ``path.slot`` when it is
    an earlier slot of the same node: ``root.weight``)."""
    marks: dict[int, str] = {}
    for node in {id(node): node for node in late}.values():
        targets: dict[str, None] = {}  # ordered set
        seen_here: dict[int, str] = {}  # id(tensor) -> its first slot in this node
        for slot, p in node.module._parameters.items():
            if p is None or id(p) not in shared:
                continue
            key = id(p)
            origin = first[key]
            if origin is not node:
                targets[printable(origin.path or origin.name)] = None
            elif key in seen_here:
                targets[printable(f"{node.path or node.name}.{seen_here[key]}")] = None
            else:
                seen_here[key] = slot
        if targets:
            marks[id(node)] = "tied with " + ", ".join(targets)
    return marks


def _run_params(run: list[ModuleSelector], counts: _Params) -> tuple[int, int]:
    """(parameters, frozen ones) of a folded run of siblings, each tensor once: the sum of their
    subtrees' totals unless some tensor of the tree is tied, then counted by walking them (runs
    are hidden, so no node is walked twice by one render)."""
    if not counts.shared:
        totals = [counts.totals[id(n)] for n in run]
        return sum(t for t, _ in totals), sum(f for _, f in totals)
    seen: set[int] = set()
    total = frozen = 0
    for top in run:
        for node in preorder(top):
            for p in node.module._parameters.values():
                if p is None or (id(p) in counts.shared and id(p) in seen):
                    continue
                seen.add(id(p))
                total += p.numel()
                if not p.requires_grad:
                    frozen += p.numel()
    return total, frozen


def _signatures(order: list[ModuleSelector], marks: dict[int, str]) -> dict[int, int]:
    """An id per node such that equal ids mean identical subtrees (classes, child names,
    parameter shapes and trainability, props, tie marks), built bottom-up with interning so
    it stays linear."""
    intern: dict[tuple[object, ...], int] = {}
    sig: dict[int, int] = {}
    for node in reversed(order):
        shapes = tuple(
            (k, tuple(p.shape), p.requires_grad) for k, p in node.module._parameters.items() if p is not None
        )
        key = (
            node._tag,
            node.props,
            shapes,
            tuple((kid.name, sig[id(kid)]) for kid in node._kids),
            marks.get(id(node)),
        )
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
    counts = _subtree_params(order) if params else _Params({}, {}, set())
    marks = counts.tied
    sigs = _signatures(order, marks) if fold is not None else {}
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
            total = _run_params(run, counts) if params else None
            lines.append(_Line(depth, label, total, printable(", ".join(node.props))))
            continue
        kids = node._kids
        if keep is not None:
            kids = [kid for kid in kids if id(kid) in keep]
        label = f"{printable(node.name)}: {printable(node._tag)}"
        # the tie mark goes after the columns, as the cut's note: a long path in the label
        # would push this line's counts out of line with the others
        mark = marks.get(id(node))
        notes = [f"({mark})"] if mark else []
        if max_depth is not None and depth >= max_depth and kids:
            below, selected = _hidden_below(node)
            label += f" (+{below} module{'' if below == 1 else 's'})"
            if selected:
                notes.append(f"… {selected} selected below")
            kids = []
        note = " ".join(notes)
        props = printable(", ".join(node.props))
        lines.append(_Line(depth, label, counts.totals.get(id(node)) if params else None, props, note))
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


def _hidden_below(node: ModuleSelector) -> tuple[int, int]:
    """(modules, selected modules) below ``node``, which a cut by ``max_depth`` hides: every
    place counts, as the uncut tree would print it."""
    table: dict[int, tuple[tuple[str, ...], object]] = node._memo.get(SELECTED) or {}  # as .props reads
    modules = selected = 0
    for below in preorder(node):
        modules += 1
        entry = table.get(id(below))
        if entry is not None and entry[0]:
            selected += 1
    return modules - 1, selected - (1 if node.props else 0)
