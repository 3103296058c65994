"""The module document: shared modules, ``None`` children, odd ids, cycles, TorchScript, and the
``ModuleSelector`` navigation API."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

import pytest
import torch
from torch import nn

import modsel

from .models import Network, Shared, Weird, network
from .util import assert_selector, paths

T = TypeVar("T")
README_SHEET = "SkipBlock #0: HookParam\nSkipBlock: HookModule"


# ---- shared modules and None children ------------------------------------------------------------
def test_shared_module_is_reported_once_like_named_modules() -> None:
    model = Shared()  # a; b (inner = a, relu); a None called `nothing`; c
    assert_selector(model, "*", ["", "a", "b", "b.relu", "c"])
    assert paths(model, "*") == [path for path, _ in model.named_modules()]
    assert_selector(model, "Linear", ["a", "c"])


def test_shared_module_is_reported_at_every_place_without_remove_duplicate() -> None:
    model = Shared()
    expected = ["", "a", "b", "b.inner", "b.relu", "c"]
    assert_selector(model, "*", expected, remove_duplicate=False)
    assert expected == [path for path, _ in model.named_modules(remove_duplicate=False)]
    assert_selector(model, "Linear", ["a", "b.inner", "c"], remove_duplicate=False)


def test_shared_module_is_matched_at_each_place_and_reported_at_its_first_matching_place() -> None:
    model = Shared()
    assert_selector(model, "#inner", ["b.inner"])
    assert_selector(model, "Sequential > Linear", ["b.inner"])
    assert_selector(model, "#inner, #a", ["a"])
    assert_selector(model, "#b > :first-child", ["b.inner"])
    assert_selector(model, ":root > Linear:first-child", ["a"])
    found = modsel.match(model, "#inner")
    assert len(found) == 1
    assert found[0][1] is model.a


def test_shared_container_is_matched_at_both_places() -> None:
    inner = nn.Sequential(nn.Linear(1, 1), nn.ReLU())
    model = nn.Sequential()
    model.add_module("p", inner)
    model.add_module("q", inner)
    assert_selector(model, "*", ["", "p", "p.0", "p.1"])
    assert_selector(model, "*", ["", "p", "p.0", "p.1", "q", "q.0", "q.1"], remove_duplicate=False)
    assert_selector(model, "#q > *", ["q.0", "q.1"])
    assert_selector(model, "#q > *, Linear", ["p.0", "q.1"])
    assert_selector(model, "Sequential + Sequential", ["q"])


def test_shared_module_gets_props_at_each_place_separately() -> None:
    root = modsel.select(Shared(), "Sequential > Linear: x\n#a: y")
    assert root.a.props == ("y",)
    assert root.b.inner.props == ("x",)
    assert root.a.module is root.b.inner.module


def test_none_children_are_not_in_the_document() -> None:
    model = Shared()
    assert_selector(model, "#nothing, #missing", [])
    assert_selector(model, ":root > *", ["a", "b", "c"])
    root = modsel.select(model, "")
    assert [name for name, _ in root.named_children()] == ["a", "b", "c"]
    assert len(root) == 3


# ---- ids that are not identifiers ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#my-head", ["heads.my-head"]),
        ("#my\\-head", ["heads.my-head"]),
        ("#with\\ space", ["heads.with space"]),
        ("#with\\20 space", ["heads.with space"]),
        ("#ünïcode", ["heads.ünïcode"]),
        ("#\\fc nïcode", ["heads.ünïcode"]),
        ("#ÜNÏCODE", []),
        ("#\\33 d", ["heads.3d"]),
        ("#3d", ["heads.3d"]),
        ("Conv3d#\\33 d", ["heads.3d"]),
        ("#with", []),
        ("#space", []),
        ("#heads > :nth-child(2)", ["heads.with space"]),
        ('[path="heads.with space"]', ["heads.with space"]),
        ("#my-head + #with\\ space + Linear", ["heads.ünïcode"]),
    ],
)
def test_module_dict_keys_are_selected_with_css_escapes(css: str, expected: list[str]) -> None:
    assert_selector(Weird(), css, expected)


def test_weird_keys_keep_their_paths() -> None:
    assert_selector(
        Weird(), "*", ["", "heads", "heads.my-head", "heads.with space", "heads.ünïcode", "heads.3d"]
    )


# ---- cycles --------------------------------------------------------------------------------------
def run_with_timeout(fn: Callable[[], T], seconds: float = 5.0) -> T:
    """``fn()`` in a daemon thread; fails the test instead of hanging the run."""
    result: list[T] = []
    errors: list[Exception] = []

    def target() -> None:
        try:
            result.append(fn())
        except Exception as err:  # re-raised in the test's thread below
            errors.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish in {seconds} s (a cycle is walked forever?)"
    if errors:
        raise errors[0]
    return result[0]


def cycle() -> nn.Sequential:
    a = nn.Sequential(nn.Linear(1, 1))
    b = nn.Sequential()
    a.add_module("b", b)
    b.add_module("a", a)  # a contains b contains a
    return a


def test_a_module_cycle_does_not_hang() -> None:
    model = cycle()
    assert run_with_timeout(lambda: paths(model, "*")) == ["", "0", "b"]
    assert run_with_timeout(lambda: paths(model, "Linear")) == ["0"]
    assert run_with_timeout(lambda: len(modsel.select(model, "*: x").props)) == 1


def test_a_module_is_not_entered_again_below_itself() -> None:
    model = cycle()  # the root's child b holds the root again: that place is left out
    assert run_with_timeout(lambda: paths(model, "*", remove_duplicate=False)) == ["", "0", "b"]
    assert run_with_timeout(lambda: paths(model, ":has(Linear)", remove_duplicate=False)) == [""]
    assert run_with_timeout(lambda: paths(model, "#b:empty")) == ["b"]
    root = run_with_timeout(lambda: modsel.select(model, "*: x"))
    assert list(root.b.children()) == []
    assert [node.path for node in root.modules("x")] == ["", "0", "b"]


def test_a_module_that_contains_itself_does_not_hang() -> None:
    model = nn.Sequential(nn.ReLU())
    model.add_module("me", model)
    assert run_with_timeout(lambda: paths(model, "*")) == ["", "0"]
    assert run_with_timeout(lambda: paths(model, "Sequential")) == [""]


def test_a_module_that_contains_itself_has_no_place_below_itself() -> None:
    model = nn.Sequential(nn.ReLU())
    model.add_module("me", model)
    assert run_with_timeout(lambda: paths(model, "*", remove_duplicate=False)) == ["", "0"]
    assert run_with_timeout(lambda: paths(model, "Sequential", remove_duplicate=False)) == [""]
    assert run_with_timeout(lambda: paths(model, "#me")) == []


# ---- TorchScript ---------------------------------------------------------------------------------
class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seq = nn.Sequential(nn.ReLU(), nn.Linear(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(self.lin(x))


@pytest.fixture(scope="module")
def scripted() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        return torch.jit.script(Scripted())


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("*", ["", "lin", "seq", "seq.0", "seq.1"]),
        ("Scripted", [""]),
        ("Linear", ["lin", "seq.1"]),
        ("Sequential > ReLU", ["seq.0"]),
        ("ReLU + Linear", ["seq.1"]),
        ("#seq > Linear:last-child", ["seq.1"]),
        ("RecursiveScriptModule", []),
        (".Module", ["", "lin", "seq", "seq.0", "seq.1"]),
    ],
)
def test_torchscript_modules_are_matched_by_their_original_class_name(
    scripted: nn.Module, css: str, expected: list[str]
) -> None:
    assert_selector(scripted, css, expected)


# ---- the navigation API --------------------------------------------------------------------------
def test_root_node(net: Network) -> None:
    root = modsel.select(net, README_SHEET)
    assert root.name == "root"
    assert root.path == ""
    assert root.parent is None
    assert root.depth == 0
    assert root.module is net
    assert root.nn is net
    assert root.props == ()


def test_walking_down_by_attribute_and_index(net: Network) -> None:
    root = modsel.select(net, README_SHEET)
    node = root.bulk[2].seq[0]
    assert node.name == "0"
    assert node.path == "bulk.2.seq.0"
    assert node.depth == 4
    assert node.module is net.bulk[2].seq[0]
    assert node.nn is net.bulk[2].seq[0]
    assert node.props == ("HookParam",)
    assert node.parent is root.bulk[2].seq
    assert node.parent.parent is root.bulk[2]
    assert node.parent.parent.name == "2"
    assert node.parent.parent.parent.parent is root
    assert root.bulk.name == "bulk"
    assert root.bulk.depth == 1


def test_int_and_str_indexing(net: Network) -> None:
    root = modsel.select(net, "")
    assert root["bulk"] is root.bulk
    assert root.bulk["2"] is root.bulk[2]
    assert root.bulk[5] is root.bulk["5"]
    assert root.bulk[-1] is root.bulk[5]
    assert root.bulk[2]["seq"][3].path == "bulk.2.seq.3"
    shared = modsel.select(Shared(), "")
    assert shared.b[1].name == "relu"  # int: the i-th child
    assert shared.b["relu"] is shared.b[1]  # str: the child of that name
    assert shared[2].name == "c"  # the None child takes no index
    weird = modsel.select(Weird(), "")
    assert weird.heads[3].path == "heads.3d"
    assert weird.heads["3d"] is weird.heads[3]
    assert weird.heads["with space"].path == "heads.with space"
    assert getattr(weird.heads, "my-head").path == "heads.my-head"
    assert weird.heads["ünïcode"].name == "ünïcode"


def test_children_and_named_children(net: Network) -> None:
    root = modsel.select(net, "")
    assert [child.name for child in root.children()] == ["bulk"]
    assert [child.name for child in root.bulk.children()] == ["0", "1", "2", "3", "4", "5"]
    assert [(name, child.path) for name, child in root.bulk[3].named_children()] == [("seq", "bulk.3.seq")]
    assert list(root.bulk[0].children()) == []
    assert [child.module for child in root.bulk.children()] == list(net.bulk.children())
    assert len(root.bulk) == 6
    assert [child.name for child in root.bulk[2].seq] == ["0", "1", "2", "3", "4", "5"]


def test_modules_and_named_modules_with_and_without_a_prop(net: Network) -> None:
    root = modsel.select(net, README_SHEET)
    everything = [path for path, _ in net.named_modules()]
    assert [node.path for node in root.modules()] == everything
    assert [path for path, _ in root.named_modules()] == everything
    assert [node.path for node in root.modules("HookParam")] == [
        "bulk.2.seq.0",
        "bulk.3.seq.0",
        "bulk.4.seq.0",
    ]
    assert [path for path, _ in root.named_modules("HookModule")] == ["bulk.2", "bulk.3", "bulk.4"]
    assert all(path == node.path for path, node in root.named_modules("HookModule"))
    assert list(root.modules("Nothing")) == []
    assert [node.path for node in root.bulk[3].modules()] == ["bulk.3", "bulk.3.seq"] + [
        f"bulk.3.seq.{i}" for i in range(6)
    ]
    assert [path for path, _ in root.bulk[3].named_modules("HookParam")] == ["bulk.3.seq.0"]


def test_in_tests_a_prop_or_all(net: Network) -> None:
    root = modsel.select(net, README_SHEET)
    assert "HookParam" in root.bulk[2].seq[0]
    assert "HookModule" not in root.bulk[2].seq[0]
    assert "HookModule" in root.bulk[2]
    assert "HookParam" not in root.bulk[2]
    assert "HookParam" not in root
    everything = modsel.select(net, "SkipBlock LeakyReLU")
    assert everything.bulk[2].seq[1].props == ("all",)
    assert "anything" in everything.bulk[2].seq[1]
    assert "all" in everything.bulk[2].seq[1]
    assert "anything" not in everything.bulk[2].seq[0]
    assert [node.path for node in everything.modules("whatever")] == [
        f"bulk.{b}.seq.{i}" for b in (2, 3, 4) for i in (1, 3, 5)
    ]


def test_unknown_child_raises_attribute_error_with_close_matches(net: Network) -> None:
    root = modsel.select(net, "")
    with pytest.raises(AttributeError, match="'bulk'"):
        _ = root.bulks
    with pytest.raises(AttributeError, match="'seq'"):
        _ = root.bulk[2].seqq
    with pytest.raises(AttributeError):
        _ = root.bulk[0].weight  # a parameter is not a child
    assert not hasattr(root, "nope")
    assert getattr(root, "nope", None) is None


def test_unknown_child_raises_key_error_with_close_matches(net: Network) -> None:
    root = modsel.select(net, "")
    with pytest.raises(KeyError, match="'bulk'"):
        _ = root["bulks"]
    with pytest.raises(KeyError, match="'seq'"):
        _ = root.bulk[2]["sec"]
    with pytest.raises(KeyError):
        _ = root.bulk["7"]
    with pytest.raises(KeyError):
        _ = root.bulk[0]["0"]


def test_child_index_out_of_range_raises_index_error(net: Network) -> None:
    root = modsel.select(net, "")
    with pytest.raises(IndexError):
        _ = root.bulk[6]
    with pytest.raises(IndexError):
        _ = root.bulk[0][0]


# ---- memory: match() tears its mirror tree down itself -----------------------------------------
def _live_nodes() -> int:
    # type(), not isinstance(): isinstance reads __class__, which some torch objects warn on
    return sum(1 for obj in gc.get_objects() if type(obj) is modsel.ModuleSelector)


@pytest.mark.parametrize("css", ["Linear", "SkipBlock Linear", ":has(> Linear)", "Linear ~ :empty"])
def test_match_frees_its_tree_without_the_cycle_collector(css: str) -> None:
    model = network()
    gc.collect()
    before = _live_nodes()
    was_enabled = gc.isenabled()
    gc.disable()  # only reference counting may free the nodes
    try:
        assert modsel.match(model, css)
        assert _live_nodes() == before
    finally:
        if was_enabled:
            gc.enable()


def test_a_dropped_select_tree_is_collected() -> None:
    model = network()
    gc.collect()
    before = _live_nodes()
    tree = modsel.select(model, "SkipBlock: x")
    assert _live_nodes() > before
    del tree
    gc.collect()
    assert _live_nodes() == before
