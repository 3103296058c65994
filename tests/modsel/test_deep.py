"""Absurd but valid input: selectors of hundreds of combinators, models nested 10,000 deep, An+B
numbers of thousands of digits, non-modules in ``_modules``. Each gives its answer, or a modsel
error that says what is wrong, never a ``RecursionError``, a bare ``ValueError`` or an
``AttributeError`` from deep inside; and matching stays linear in modules x compounds.

Deep chains are built with a loop (``parent._modules["c"] = child``), which needs no
recursion; torch's own walks (``parameters()``, ``named_modules()``) recurse and fail on them.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import modsel
from modsel import _match
from modsel._document import walk_parameters
from modsel._parser import MAX_NESTING, parse_selector

from .models import Network, Shared, Weird, network

DEEP = 10_000


def chain(depth: int, leaf: nn.Module | None = None) -> nn.Sequential:
    """``depth`` modules, each the child ``c`` of the one above: Sequentials, then ``leaf`` (a
    Linear by default) at the bottom, path ``c.c. ... .c``."""
    root = nn.Sequential()
    node = root
    for _ in range(depth - 2):
        kid = nn.Sequential()
        node._modules["c"] = kid
        node = kid
    node._modules["c"] = leaf if leaf is not None else nn.Linear(1, 1)
    return root


def path_at(depth: int) -> str:
    """The path of the module ``depth`` levels below the root of a ``chain``."""
    return ".".join(["c"] * depth)


@pytest.fixture(scope="module")
def deep() -> nn.Sequential:
    return chain(DEEP)


# ---- long selectors: no recursion ------------------------------------------------------------------


def test_hundreds_of_subsequent_sibling_combinators() -> None:
    siblings = nn.ModuleList(nn.ReLU() for _ in range(502))
    css = " ~ ".join(["*"] * 500)
    assert modsel.paths(siblings, css) == ["499", "500", "501"]
    assert modsel.paths(siblings, css.replace("~", "+")) == ["499", "500", "501"]


def test_a_child_combinator_per_level_of_a_deep_model() -> None:
    model = chain(1200)
    css = " > ".join(["*"] * 1200)
    assert modsel.paths(model, css) == [path_at(1199)]
    with pytest.warns(UserWarning, match="selects no module"):
        assert modsel.paths(model, " > ".join(["*"] * 1201)) == []


def test_long_relative_selectors_in_has() -> None:
    model = nn.Sequential(nn.ModuleList(nn.ReLU() for _ in range(502)))
    assert modsel.paths(model, ":has(> * > " + " ~ ".join(["*"] * 500) + ")") == [""]
    assert modsel.paths(model, ":has(" + " ~ ".join(["*"] * 500) + ")") == ["", "0"]


def test_long_selectors_inside_logical_pseudo_classes() -> None:
    siblings = nn.ModuleList(nn.ReLU() for _ in range(502))
    long = " ~ ".join(["*"] * 500)
    assert modsel.paths(siblings, f":is({long})") == ["499", "500", "501"]
    assert modsel.paths(siblings, f"*:not({long})") == ["", *map(str, range(499))]
    assert modsel.paths(siblings, f":nth-child(2 of {long})") == ["500"]


def _at_depth(frames: int, call: Callable[[], object]) -> object:
    """``call()`` from ``frames`` Python frames deeper than here (a deep caller's stack)."""
    return call() if frames <= 0 else _at_depth(frames - 1, call)


def test_the_longest_chains_of_closures_nested_deepest_leave_room_on_the_stack() -> None:
    """Chains up to ``MAX_CLOSURE_CHAIN`` compounds are nested closures, one frame per
    combinator: nested as deep as the parser allows, a match needs a few hundred frames, so a
    caller 500 frames deep (default limit 1,000) still gets its answer."""
    rest = " ~ *" * (_match.MAX_CLOSURE_CHAIN - 1)
    css = ""
    for _ in range(MAX_NESTING - 1):  # each level's first compound holds the next level
        css = f":nth-child(n of *{css}{rest})"
    selector = modsel.compile(css)
    siblings = nn.ModuleList(nn.ReLU() for _ in range(20))
    assert sys.getrecursionlimit() >= 1000
    found = _at_depth(500 - len(inspect.stack(0)), lambda: selector.match(siblings))
    assert found == []  # a node needs 7 earlier siblings per level; every level is tested


# ---- An+B numbers ------------------------------------------------------------------------------------


def test_an_anb_number_of_thousands_of_digits_is_a_syntax_error() -> None:
    css = ":nth-child(" + "1" * 5000 + ")"
    with pytest.raises(modsel.SelectorSyntaxError) as info:
        modsel.compile(css)
    err = info.value
    assert err.reason == "a number in ':nth-child()' has 5,000 digits; at most 1,000 are allowed"
    assert (err.line, err.column) == (1, 12)


@pytest.mark.parametrize(
    ("css", "column"),
    [
        (":nth-last-child(" + "2" * 1001 + "n+1)", 17),
        (":nth-of-type(2n + " + "0" * 1001 + "1)", 19),
        (":nth-child(-" + "3" * 1001 + "n /* c */ - 1 of Linear)", 13),
    ],
)
def test_an_anb_number_of_more_than_1000_digits_is_a_syntax_error(css: str, column: int) -> None:
    with pytest.raises(modsel.SelectorSyntaxError, match="digits; at most 1,000 are allowed") as info:
        modsel.parse(css)
    assert (info.value.line, info.value.column) == (1, column)


def test_long_digit_runs_in_anb_comments_do_not_count() -> None:
    css = ":nth-child(2n /* " + "9" * 2000 + " */ + " + "1" * 1000 + ")"
    (rule,) = modsel.parse(css).rules
    (nth,) = rule.selectors.selectors[0].compounds[0].selectors
    assert nth == modsel.NthPseudo("nth-child", 2, int("1" * 1000))


def test_anb_numbers_follow_a_lowered_int_digit_limit() -> None:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        with pytest.raises(modsel.SelectorSyntaxError, match="has 700 digits; at most 640 are allowed"):
            modsel.parse(":nth-child(" + "7" * 700 + ")")
    finally:
        sys.set_int_max_str_digits(before)


# ---- a 10,000-deep model ------------------------------------------------------------------------------


def test_match_select_and_paths_on_a_deep_model(deep: nn.Sequential) -> None:
    leaf = path_at(DEEP - 1)
    assert modsel.paths(deep, "Linear") == [leaf]
    assert modsel.paths(deep, "Sequential Linear") == [leaf]
    assert modsel.paths(deep, "#c > Linear") == [leaf]
    assert modsel.paths(deep, ":root > * Linear") == [leaf]
    with pytest.warns(UserWarning, match="no module has the id 'nope'"):  # the hint walks 10,000 deep
        assert modsel.paths(deep, "Linear Sequential, #nope *, Linear *") == []
    assert modsel.paths(deep, ":has(> Linear)") == [path_at(DEEP - 2)]
    assert len(modsel.paths(deep, ":has(Linear)")) == DEEP - 1
    assert len(modsel.match(deep, "*")) == DEEP
    tree = modsel.select(deep, "Linear: leaf\n:root: top")
    node = tree
    while node._kids:
        node = node[0]
    assert node.path == leaf and node.props == ("leaf",) and node.depth == DEEP - 1
    assert "selects it" in node.explain()


def test_acting_on_a_deep_model(deep: nn.Sequential) -> None:
    n_params = 2  # the Linear's weight and bias, at the bottom
    with modsel.freeze(deep, ":root") as frozen:
        assert len(frozen.parameters) == n_params
        assert not any(p.requires_grad for _, p in walk_parameters([("", deep)]))
    assert all(p.requires_grad for _, p in walk_parameters([("", deep)]))
    with modsel.unfreeze(deep, "Sequential"):
        pass
    (group,) = modsel.param_groups(deep, {"Sequential": {"lr": 0.5}}, lr=1.0)
    assert group["lr"] == 0.5 and group["param_names"] == [
        f"{path_at(DEEP - 1)}.weight",
        f"{path_at(DEEP - 1)}.bias",
    ]
    regex = modsel.to_regex(deep, "Linear")
    assert re.fullmatch(regex, path_at(DEEP - 1)) and not re.fullmatch(regex, path_at(DEEP - 2))
    tree = modsel.select(deep, ":root: frozen")
    assert len(list(tree.parameters())) == n_params
    with tree.freeze():
        assert not deep.get_submodule(path_at(DEEP - 1)).weight.requires_grad


def test_rendering_a_deep_model() -> None:
    depth = 2500  # past the recursion limit; the text grows with the square of the depth
    tree = modsel.select(chain(depth), "Linear: leaf")
    text = tree.tree(params=True)
    lines = text.split("\n")
    assert len(lines) == depth + 1
    assert lines[-1].startswith("    " * (depth - 1) + "c: Linear") and lines[-1].endswith("leaf")
    assert tree._repr_html_().count("\n") == depth
    cut = tree.tree(max_depth=2).split("\n")[-1]
    assert cut == "        c: Sequential (+2497 modules)    … 1 selected below"


def test_parameters_of_a_node_are_torchs_without_recursion() -> None:
    for model in (network(), Shared(), Weird()):
        tree = modsel.select(model, "")
        assert [id(p) for p in tree.parameters()] == [id(p) for p in model.parameters()]
        named = list(walk_parameters([("", model)]))
        assert [(n, id(p)) for n, p in named] == [(n, id(p)) for n, p in model.named_parameters()]
        for node in tree.modules():
            assert [id(p) for p in node.parameters()] == [id(p) for p in node.module.parameters()]


def test_a_module_that_contains_itself_is_entered_once() -> None:
    model = chain(50)
    deepest_sequential = model.get_submodule(path_at(48))
    deepest_sequential._modules["back"] = model  # a cycle, 49 levels long
    deepest_sequential._modules["again"] = deepest_sequential
    assert len(modsel.match(model, "*", remove_duplicate=False)) == 50
    assert len(list(walk_parameters([("", model)]))) == 2


class _Unhashable(nn.Sequential):
    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq=True makes it


def test_cycles_through_modules_that_cannot_be_hashed_are_found_too() -> None:
    model = _Unhashable(nn.ReLU(), _Unhashable(nn.ReLU()))
    model[1]._modules["up"] = model
    model[1]._modules["me"] = model[1]
    assert modsel.paths(model, "*") == ["", "0", "1", "1.0"]


# ---- linear work on deep chains -------------------------------------------------------------------------


_PARENT_SLOT: Any = modsel.ModuleSelector.__dict__["parent"]


class _Counting(modsel.ModuleSelector):
    """A document node that counts how often anything reads a node's parent: the work of
    walking up."""

    __slots__ = ()
    reads = 0

    @property
    def parent(self) -> modsel.ModuleSelector | None:
        _Counting.reads += 1
        return _PARENT_SLOT.__get__(self)  # type: ignore[no-any-return]

    @parent.setter
    def parent(self, value: modsel.ModuleSelector | None) -> None:
        _PARENT_SLOT.__set__(self, value)


@pytest.fixture(scope="module")
def counted_chain() -> Iterator[tuple[int, modsel.ModuleSelector]]:
    depth = 3000
    _Counting.reads = 0
    tree = modsel.select(chain(depth), "", node_class=_Counting)
    # building the document walks up from no node (torch allows cycles: only a module placed
    # before is looked for among the ancestors, and here every module has one place)
    assert _Counting.reads <= 3 * depth
    yield depth, tree


@pytest.mark.parametrize(
    "css",
    [
        "Linear Sequential",  # the first step, of a type: no ancestor is a Linear
        "#nope *",  # the first step, not a type
        "#nope * *",  # a memoised later step
        "Sequential > #nope *",
        "#nope ~ * *",
        "#nope" + " *" * 20,  # more compounds than MAX_CLOSURE_CHAIN
        "#nope > *" + " > * *" * 10,
    ],
)
def test_failing_descendant_steps_read_each_parent_a_few_times(
    counted_chain: tuple[int, modsel.ModuleSelector], css: str
) -> None:
    depth, tree = counted_chain
    tree._memo.clear()  # a fresh document for each selector
    _Counting.reads = 0
    assert modsel.compile(css).match_nodes(tree) == []
    compounds = len(modsel.parse(css).rules[0].selectors.selectors[0].compounds)
    # walking every ancestor from every node would be depth^2 / 2 = 4.5 million reads
    assert _Counting.reads <= 20 * depth * compounds


# ---- the long-chain matcher agrees with the closures -----------------------------------------------------

MODELS = [
    network(),
    Shared(),
    Weird(),
    chain(30),
    nn.ModuleList(nn.Linear(1, 1) if i % 3 else nn.ReLU() for i in range(12)),
]
COMPOUNDS = [
    "*",
    "Linear",
    "Sequential",
    "ReLU",
    "#0",
    "#c",
    "#seq",
    ":first-child",
    ":not(Linear)",
    ":nth-child(odd)",
    ".Module",
    "[in_features=10]",
    ":is(#2, #3) > *",
    ":empty",
]
COMBINATORS = [" ", " > ", " + ", " ~ "]


@st.composite
def complex_selectors(draw: st.DrawFn) -> str:
    compounds = draw(st.lists(st.sampled_from(COMPOUNDS), min_size=2, max_size=6))
    css = compounds[0]
    for compound in compounds[1:]:
        css += draw(st.sampled_from(COMBINATORS)) + compound
    return css


def _by_long_chains(css: str, monkeypatch: pytest.MonkeyPatch) -> _match.Selector:
    with monkeypatch.context() as patch:
        patch.setattr(_match, "MAX_CLOSURE_CHAIN", 1)
        return _match.Selector(css, parse_selector(css))


WRAPS = ["{}", ":has({})", ":has(> {})", ":has(+ {})", ":has(~ {})", ":not({})", ":nth-child(odd of {})"]


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(complex_selectors(), st.sampled_from(WRAPS))
def test_the_long_chain_matcher_agrees_with_the_closures(
    monkeypatch: pytest.MonkeyPatch, css: str, wrap: str
) -> None:
    """Every selector matched by ``_long_chain`` (as if longer than MAX_CLOSURE_CHAIN) finds
    what the closures find, in and out of ``:has()``."""
    css = wrap.format(css)
    long = _by_long_chains(css, monkeypatch)
    for model in MODELS:
        expected = modsel.match(model, css, remove_duplicate=False)
        assert long.match(model, remove_duplicate=False) == expected, css


# ---- values in _modules that are not modules --------------------------------------------------------------


def _with_bad_child(value: Any) -> Network:
    model = network()
    model.get_submodule("bulk.2.seq")._modules["oops"] = value
    return model


@pytest.mark.parametrize("value", [3, "Linear", torch.zeros(1), nn.Linear])
def test_a_non_module_in_modules_is_a_target_error_naming_its_path(value: Any) -> None:
    model = _with_bad_child(value)
    message = (
        f"'bulk.2.seq.oops' is of type {type(value).__name__}, not an nn.Module: the module at "
        "'bulk.2.seq' holds it in its _modules under 'oops', where only modules and None may be"
    )
    for call in (
        lambda: modsel.match(model, "Linear"),
        lambda: modsel.match(model, ":has(Linear)"),
        lambda: modsel.select(model, "Linear: a"),
        lambda: modsel.freeze(model, "Linear"),
        lambda: modsel.param_groups(model, {"Linear": {"lr": 1.0}}),
        lambda: list(walk_parameters([("", model)])),
    ):
        with pytest.raises(modsel.TargetError) as info:
            call()
        assert str(info.value) == message


def test_a_non_module_child_of_the_root_is_named_too() -> None:
    model = nn.Sequential(nn.ReLU())
    model._modules["x"] = 3  # type: ignore[assignment]
    with pytest.raises(modsel.TargetError, match=r"^'x' is of type int, not an nn.Module: the root module"):
        modsel.match(model, "*")


def test_none_in_modules_is_still_skipped() -> None:
    model = nn.Sequential(nn.ReLU())
    model._modules["gone"] = None  # type: ignore[assignment]
    assert modsel.paths(model, "*") == ["", "0"]
    assert list(walk_parameters([("", model)])) == []
