"""The tree and explanations in notebooks: the HTML tree (monospace, collapsible ``<details>``,
aligned columns, escaped names, iterative on deep chains) and the ``str`` subclasses that
``tree()`` and ``explain()`` return (their repr is the text, their ``_repr_html_`` the HTML)."""

from __future__ import annotations

import copy
import pickle
import re
import sys
from html.parser import HTMLParser
from typing import Any

import pytest
from IPython.core.formatters import DisplayFormatter
from IPython.lib.pretty import pretty
from torch import nn

import modsel

from .models import network
from .util import shown_text

PROPS_CSS = "SkipBlock: PROP\nSkipBlock Linear: PROP\n#bulk > #0: PROP, other"
OPTIONS: list[dict[str, Any]] = [
    {},
    {"fold": 2},
    {"max_depth": 2},
    {"params": True, "only_selected": True},
    {"params": True, "fold": None},
]


class _Lines(HTMLParser):
    """The visible lines of modsel's HTML, each with: inside a ``<summary>``?, the visible
    column of each ``<b>`` (props) and ``<i>`` (note), and the ``<details>`` tags seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.in_summary: list[bool] = [False]
        self.props_at: list[int | None] = [None]
        self.nesting: list[int] = [0]  # how many <details> hold each line
        self.details: list[dict[str, str | None]] = []
        self._open = 0
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "details":
            self.details.append(dict(attrs))
            self._open += 1
        elif tag == "summary":
            self.in_summary[-1] = True
        elif tag == "style":
            self._style = True
        elif tag == "b":
            self.props_at[-1] = len(self.lines[-1])

    def handle_endtag(self, tag: str) -> None:
        if tag == "details":
            self._open -= 1
        elif tag == "style":
            self._style = False

    def handle_data(self, data: str) -> None:
        if self._style:
            return
        first, *rest = data.split("\n")
        self.lines[-1] += first
        self.nesting[-1] = self._open
        for line in rest:
            self.nesting.append(self._open)
            self.lines.append(line)
            self.in_summary.append(False)  # a summary's line ends inside it: <summary>...\n</summary>
            self.props_at.append(None)


def parse(markup: str) -> _Lines:
    parser = _Lines()
    parser.feed(markup)
    parser.close()
    assert parser._open == 0, "every <details> is closed"
    return parser


def has_children(text: str) -> list[bool]:
    """For each line of a tree's text (the header skipped), whether the next line is deeper."""
    lines = text.split("\n")[1:]
    depth = [(len(line) - len(line.lstrip(" "))) // 4 for line in lines]
    return [i + 1 < len(lines) and depth[i + 1] > depth[i] for i in range(len(lines))]


def block_style(markup: str) -> str:
    found = re.search(r'<div class="modsel-tree" style="([^"]*)"', markup)
    assert found, "the tree is one styled block"
    return found.group(1)


# ---- the HTML tree --------------------------------------------------------------------------------


def test_the_block_forces_a_monospace_font() -> None:
    out = modsel.render_html(modsel.select(network(), PROPS_CSS))
    style = block_style(out)
    assert re.search(r"font-family:[^;]*\bui-monospace\b[^;]*,\s*monospace(;|$)", style)
    assert "white-space:pre" in style
    assert "<pre" not in out  # a notebook's CSS for <pre> cannot change the font


@pytest.mark.parametrize("options", OPTIONS)
def test_details_for_every_node_with_children_and_none_for_leaves(options: dict[str, Any]) -> None:
    root = modsel.select(network(), PROPS_CSS)
    text = root.tree(**options)
    lines = parse(modsel.render_html(root, **options))
    assert lines.lines == text.split("\n")
    parents = has_children(text)
    assert lines.in_summary == [False, *parents]  # the header, then one summary per parent
    assert len(lines.details) == sum(parents) > 0
    assert all("open" in attrs for attrs in lines.details)
    depth = [0] + [(len(line) - len(line.lstrip(" "))) // 4 for line in lines.lines[1:]]
    assert lines.nesting == [0] + [d + p for d, p in zip(depth[1:], parents, strict=True)]


def test_the_browser_marker_is_hidden_and_the_glyph_takes_no_width() -> None:
    out = modsel.render_html(modsel.select(network(), ""))
    assert "list-style:none" in out and "summary::-webkit-details-marker{display:none}" in out
    # the glyph sits in the two columns left of the name: as wide as its negative margin
    assert re.search(r"\.modsel-fold::before\{[^}]*width:2ch;margin-left:-2ch", out)
    assert "padding-left:2ch" in block_style(out)  # room for the root's glyph
    assert out.count('<span class="modsel-fold"></span>') == out.count("<summary>")
    for summary in re.findall(r"<summary>(.*?)</summary>", out, re.S):
        indent = len(summary) - len(summary.lstrip(" "))
        assert indent % 4 == 0 and summary[indent:].startswith('<span class="modsel-fold"></span>')


@pytest.mark.parametrize("options", OPTIONS)
def test_props_start_in_the_text_renderers_column(options: dict[str, Any]) -> None:
    root = modsel.select(network(), PROPS_CSS)
    text = root.tree(**options)
    out = modsel.render_html(root, **options)
    assert "monospace" in block_style(out)  # the same column on screen needs a fixed width
    lines = parse(out)
    columns = {i: at for i, at in enumerate(lines.props_at) if at is not None}
    expected = {i: line.index("PROP") for i, line in enumerate(text.split("\n")) if "PROP" in line}
    assert columns == expected and len(set(columns.values())) == 1


def test_props_are_highlighted_and_notes_italic() -> None:
    root = modsel.select(network(), PROPS_CSS)
    out = modsel.render_html(root, max_depth=2)
    assert re.search(r'<b style="color:#b5176b;background:[^"]*">PROP, other</b>', out)
    assert re.search(r'<b style="[^"]*">PROP</b> <i style="[^"]*">… 3 selected below</i>', out)


class Evil(nn.Module):
    """A class whose name is markup (a class name can be any string)."""


Evil.__name__ = Evil.__qualname__ = "<img src=x onerror=alert(1)>&"


def evil_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module("<script>", nn.Sequential(Evil(), nn.ReLU()))
    model.add_module("a&b", Evil())
    return model


def test_names_and_classes_are_escaped() -> None:
    root = modsel.select(evil_model(), "#\\<script\\> > ReLU: x")
    out = modsel.render_html(root)
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;: Sequential" in out
    assert "a&amp;b: &lt;img src=x onerror=alert(1)&gt;&amp;" in out
    assert shown_text(out) == root.tree()
    explained = root["<script>"][1].explain()
    assert "`#\\<script\\> > ReLU`" in explained  # the rule, as the selector wrote it
    assert "<script>" not in explained._repr_html_() and "&lt;script\\&gt;" in explained._repr_html_()
    assert shown_text(explained._repr_html_()) == explained


def test_a_deep_chain_renders_without_recursion() -> None:
    depth = 3000
    assert depth > sys.getrecursionlimit()
    model = nn.Sequential()
    node = model
    for _ in range(depth - 2):
        node._modules["c"] = node = nn.Sequential()
    node._modules["c"] = nn.Linear(1, 1)
    tree = modsel.select(model, "Linear: leaf")
    out = tree.tree()._repr_html_()
    assert out == modsel.render_html(tree)
    assert out.count("<details open><summary>") == depth - 1
    assert out.endswith("</details>" * (depth - 1) + "</div>")
    assert shown_text(out) == tree.tree()


def test_fold_and_cut_lines_are_plain_lines() -> None:
    root = modsel.select(network(), PROPS_CSS)
    for options, wanted in (
        ({"fold": 2}, "        3…4: SkipBlock ×2 (same as 2)"),
        ({"max_depth": 2}, "        2: SkipBlock (+7 modules)"),
    ):
        lines = parse(modsel.render_html(root, **options))
        (i,) = [i for i, line in enumerate(lines.lines) if line.startswith(wanted)]
        assert not lines.in_summary[i] and lines.nesting[i] == 2  # in root's and bulk's <details>


# ---- what tree() and explain() return -------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"params": True, "max_depth": 2}, {"header": False}])
def test_tree_returns_a_tree_that_shows_as_its_text(options: dict[str, Any]) -> None:
    root = modsel.select(network(), PROPS_CSS)
    tree = root.tree(**options)
    text = modsel.render_text(root, **options)
    assert isinstance(tree, modsel.Tree) and isinstance(tree, str)
    assert tree == text and repr(tree) == text and pretty(tree) == text
    assert type(str(tree)) is str and str(tree) == text
    assert shown_text(tree._repr_html_()) == text  # without the header if the text has none
    if "header" not in options:
        assert tree._repr_html_() == modsel.render_html(root, **options)


def test_a_notebook_gets_the_text_and_the_html() -> None:
    """What IPython sends a notebook for a cell's value: text/plain is the text, not the
    quoted one-line repr of a str, and text/html is there."""
    root = modsel.select(network(), PROPS_CSS)
    for shown in (root.tree(params=True), root.bulk[0].explain()):
        data, _ = DisplayFormatter().format(shown)
        assert data["text/plain"] == shown
        assert data["text/html"] == shown._repr_html_()


def test_tree_pickles_copies_slices_and_adds_as_plain_text() -> None:
    tree = modsel.select(network(), PROPS_CSS).tree()
    assert isinstance(tree, modsel.Tree)
    for plain in (pickle.loads(pickle.dumps(tree)), copy.copy(tree), copy.deepcopy(tree)):
        assert type(plain) is str and plain == tree
    assert type(tree[:5]) is str and type(tree + "!") is str and type(f"{tree}") is str
    assert tree.splitlines()[0] == "ModuleSelector:" and "root: Network" in tree
    assert len(pickle.dumps(tree)) < 2 * len(tree.encode()) + 100  # the model does not come along


def test_explain_returns_an_explanation_that_shows_as_its_text() -> None:
    root = modsel.select(network(), PROPS_CSS)
    node = root.bulk[2].seq[0]
    for explained in (node.explain(), modsel.explain(node)):
        assert isinstance(explained, modsel.Explanation) and isinstance(explained, str)
        assert repr(explained) == str(explained) == pretty(explained)
        assert "\n" in repr(explained) and not repr(explained).startswith("'")
        assert explained.splitlines()[0] == "bulk.2.seq.0 (Linear): props PROP"
        out = explained._repr_html_()
        assert "monospace" in out and shown_text(out) == explained
        assert re.search(r'<b style="[^"]*">PROP</b>', out)
        assert re.search(r'<b style="[^"]*">selects it \(via `SkipBlock Linear`\)</b>', out)
        assert type(pickle.loads(pickle.dumps(explained))) is str


def test_explain_without_a_stylesheet_is_an_explanation_too() -> None:
    root = modsel.select(network(), "")
    root.sheet = None
    explained = root.explain()
    assert isinstance(explained, modsel.Explanation)
    assert repr(explained) == "(root) (Network): no stylesheet was applied (use modsel.select(model, css))"
    assert shown_text(explained._repr_html_()) == explained


def test_render_html_takes_the_header_option_as_render_text_does() -> None:
    node = modsel.select(nn.Sequential(nn.Linear(1, 1)), "Linear: a")
    assert "ModuleSelector:" in modsel.render_html(node)
    without = modsel.render_html(node, header=False)
    assert "ModuleSelector:" not in without and "0: Linear" in without
