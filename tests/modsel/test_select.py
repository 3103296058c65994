"""Stylesheets (``modsel.select``): props per module, ``explain()``, and the compiled ``Selector``."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from torch import nn

import modsel

from .models import Network, Shared

SHEET_1 = "SkipBlock #0: HookParam\nSkipBlock: HookModule"
SHEET_2 = "\n#bulk > Linear: a\n#bulk > #1: b\nSkipBlock Sequential: c\nSkipBlock LeakyReLU\n"


def props_by_path(root: modsel.ModuleSelector) -> dict[str, tuple[str, ...]]:
    return {path: node.props for path, node in root.named_modules()}


def expect(model: nn.Module, given: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """``given`` for the listed paths, ``()`` for every other module of ``model``."""
    every = [path for path, _ in model.named_modules(remove_duplicate=False)]
    assert set(given) <= set(every), set(given) - set(every)
    return {path: given.get(path, ()) for path in every}


def test_readme_stylesheet_1(net: Network) -> None:
    root = modsel.select(net, SHEET_1)
    expected = {
        "bulk.2": ("HookModule",),
        "bulk.3": ("HookModule",),
        "bulk.4": ("HookModule",),
        "bulk.2.seq.0": ("HookParam",),
        "bulk.3.seq.0": ("HookParam",),
        "bulk.4.seq.0": ("HookParam",),
    }
    assert props_by_path(root) == expect(net, expected)


def test_readme_stylesheet_2(net: Network) -> None:
    root = modsel.select(net, SHEET_2)
    expected = {
        "bulk.0": ("a",),
        "bulk.5": ("a",),
        "bulk.1": ("b",),
        "bulk.2.seq": ("c",),
        "bulk.3.seq": ("c",),
        "bulk.4.seq": ("c",),
        **{f"bulk.{b}.seq.{i}": ("all",) for b in (2, 3, 4) for i in (1, 3, 5)},
    }
    assert props_by_path(root) == expect(net, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear: a, b\n#0: c, a\nReLU, #0: d", {"0": ("a", "b", "c", "d"), "1": ("d",), "2": ("a", "b")}),
        ("#0: c, a\nLinear: a, b", {"0": ("c", "a", "b"), "2": ("a", "b")}),
        ("Linear: a; ReLU: b; *: z", {"": ("z",), "0": ("a", "z"), "1": ("b", "z"), "2": ("a", "z")}),
        ("Linear: x, x, y\nLinear: y", {"0": ("x", "y"), "2": ("x", "y")}),
        ("Linear\n#0: x", {"0": ("all", "x"), "2": ("all",)}),
        ("#0: x\nLinear", {"0": ("x", "all"), "2": ("all",)}),
        ("Linear: all", {"0": ("all",), "2": ("all",)}),
        ("Conv2d: x", {}),
        ("", {}),
        ("/* nothing */", {}),
    ],
)
def test_props_are_the_union_over_rules_in_rule_order(css: str, expected: dict[str, tuple[str, ...]]) -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    assert props_by_path(modsel.select(model, css)) == expect(model, expected)


def test_select_takes_a_parsed_stylesheet(net: Network) -> None:
    root = modsel.select(net, modsel.parse(SHEET_1))
    assert [node.path for node in root.modules("HookParam")] == [
        "bulk.2.seq.0",
        "bulk.3.seq.0",
        "bulk.4.seq.0",
    ]


def test_a_rule_without_props_gives_all_and_all_answers_every_prop(net: Network) -> None:
    root = modsel.select(net, "SkipBlock LeakyReLU\n#1: b")
    node = root.bulk[2].seq[1]
    assert node.props == ("all", "b")
    assert "b" in node
    assert "anything" in node
    assert root.bulk[1].props == ("b",)
    assert "b" in root.bulk[1]
    assert "anything" not in root.bulk[1]


def test_props_of_a_shared_module_depend_on_the_place() -> None:
    root = modsel.select(Shared(), "#b Linear: inside\nLinear: linear")
    assert root.a.props == ("linear",)
    assert root.b.inner.props == ("inside", "linear")
    assert root.c.props == ("linear",)


# ---- explain() -----------------------------------------------------------------------------------
def rule_line(text: str, rule: str) -> str:
    """The one line of ``explain()`` output that shows ``rule``."""
    lines = [line for line in text.splitlines() if f"`{rule}" in line]
    assert len(lines) == 1, text
    return lines[0]


def test_explain_names_the_rule_that_selects_and_why_the_others_do_not(net: Network) -> None:
    root = modsel.select(net, SHEET_2)
    text = modsel.explain(root.bulk[2].seq[1])
    first = text.splitlines()[0]
    assert "bulk.2.seq.1" in first
    assert "LeakyReLU" in first
    assert "all" in first
    assert "selects it" in rule_line(text, "SkipBlock LeakyReLU")
    for rule, failing in [
        ("#bulk > Linear", "Linear"),
        ("#bulk > #1", "#1"),
        ("SkipBlock Sequential", "Sequential"),
    ]:
        line = rule_line(text, rule)
        assert "does not select" in line
        reason = line.split("does not select", 1)[1]
        assert f"`{failing}`" in reason
        assert "does not match" in reason
    assert len(text.splitlines()) == 5  # the node, then one line per rule


def test_explain_says_which_part_of_a_complex_selector_fails(net: Network) -> None:
    root = modsel.select(net, SHEET_2)
    text = modsel.explain(root.bulk[3].seq[0])  # a Linear, but its parent is `seq`, not `#bulk`
    reason = rule_line(text, "#bulk > Linear").split("does not select", 1)[1]
    assert "`#bulk`" in reason
    assert "parent" in reason
    reason = rule_line(text, "SkipBlock LeakyReLU").split("does not select", 1)[1]
    assert "`LeakyReLU`" in reason


def test_explain_of_a_selected_module_names_its_props(net: Network) -> None:
    root = modsel.select(net, SHEET_2)
    text = modsel.explain(root.bulk[5])
    assert "bulk.5" in text.splitlines()[0]
    assert "a" in text.splitlines()[0].split(":", 1)[1]
    assert "selects it" in rule_line(text, "#bulk > Linear")
    assert "selects it" not in rule_line(text, "#bulk > #1")


def test_explain_of_a_selector_list_names_the_matching_selector(net: Network) -> None:
    root = modsel.select(net, "Conv2d, SkipBlock > Sequential: x")
    line = rule_line(modsel.explain(root.bulk[4].seq), "Conv2d, SkipBlock > Sequential")
    assert "selects it" in line
    assert "SkipBlock > Sequential" in line.split("selects it", 1)[1]


def test_explain_is_also_a_method_of_the_node(net: Network) -> None:
    root = modsel.select(net, SHEET_2)
    for node in (root, root.bulk[5], root.bulk[2].seq[1]):
        assert node.explain() == modsel.explain(node)


# ---- the compiled Selector -----------------------------------------------------------------------
def test_compile_is_cached_by_text() -> None:
    assert modsel.compile("SkipBlock #0") is modsel.compile("SkipBlock #0")
    assert modsel.compile("SkipBlock #0") is not modsel.compile("SkipBlock #1")
    assert modsel.compile("Linear").source == "Linear"


def test_selector_test_and_match_nodes(net: Network) -> None:
    selector = modsel.compile("SkipBlock #0")
    root = modsel.select(net, "")
    assert selector.test(root.bulk[2].seq[0])
    assert not selector.test(root.bulk[0])
    assert not selector.test(root.bulk[2].seq[1])
    assert [node.path for node in selector.match_nodes(root)] == [
        "bulk.2.seq.0",
        "bulk.3.seq.0",
        "bulk.4.seq.0",
    ]
    assert all(isinstance(node, modsel.ModuleSelector) for node in selector.match_nodes(root))
    assert [node.path for node in selector.match_nodes(root.bulk[3])] == ["bulk.3.seq.0"]
    assert [node.module for node in selector.match_nodes(root)] == [net.bulk[b].seq[0] for b in (2, 3, 4)]


def test_match_nodes_removes_duplicates_unless_asked_not_to() -> None:
    root = modsel.select(Shared(), "")
    selector = modsel.compile("Linear")
    assert [node.path for node in selector.match_nodes(root)] == ["a", "c"]
    assert [node.path for node in selector.match_nodes(root, remove_duplicate=False)] == ["a", "b.inner", "c"]


def test_selector_match_and_modsel_match_take_a_compiled_selector(net: Network) -> None:
    selector = modsel.compile("#bulk > Linear")
    expected = [("bulk.0", net.bulk[0]), ("bulk.5", net.bulk[5])]
    assert selector.match(net) == expected
    assert modsel.match(net, selector) == expected
    assert modsel.match(net, "#bulk > Linear") == expected


def test_match_returns_paths_and_modules_like_named_modules(net: Network) -> None:
    found = modsel.match(net, "*")
    assert found == list(net.named_modules())
    assert found[0] == ("", net)


@pytest.mark.parametrize(
    "css", ["Conv2d", "#nope", "Linear[in_features=99]", ":has(Conv2d)", "Linear Linear"]
)
def test_a_selector_that_matches_nothing_returns_an_empty_list(net: Network, css: str) -> None:
    assert modsel.match(net, css) == []
    assert modsel.compile(css).match(net) == []
    assert modsel.compile(css).match_nodes(modsel.select(net, "")) == []
    assert list(modsel.select(net, f"{css}: x").modules("x")) == []


def test_select_builds_a_tree_of_a_given_subclass(net: Network) -> None:
    class Mine(modsel.ModuleSelector):
        __slots__ = ()

    tree = modsel.select(net, "SkipBlock: x", node_class=Mine)
    assert all(type(node) is Mine for node in tree.modules())
    assert [n.path for n in tree.modules("x")] == ["bulk.2", "bulk.3", "bulk.4"]
    with pytest.raises(TypeError, match=r"node_class must be a subclass of modsel\.ModuleSelector"):
        modsel.select(net, "", node_class=dict)  # type: ignore[arg-type]
