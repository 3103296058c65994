"""The structural pseudo-classes without arguments: ``:first-child``, ``:last-child``,
``:only-child``, ``:first-of-type``, ``:last-of-type``, ``:only-of-type``, ``:empty``, ``:root``
and ``:scope``.

The root counts as a first, last and only child, and as the first, last and only of its type.
A ``None`` child is not a child.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .models import Network, Shared, network
from .util import assert_selector, in_seqs


def seq_and_children(*indices: int) -> list[str]:
    """Each SkipBlock's ``seq`` followed by the given children of it, in document order."""
    return [p for b in (2, 3, 4) for p in (f"bulk.{b}.seq", *[f"bulk.{b}.seq.{i}" for i in indices])]


class LastIsNone(nn.Module):
    """``x`` then a None registered after it: ``x`` is the first, last and only child."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Linear(1, 1)
        self.register_module("y", None)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":first-child", ["", "bulk", "bulk.0", *seq_and_children(0)]),
        (":last-child", ["", "bulk", *seq_and_children(5), "bulk.5"]),
        (":only-child", ["", "bulk", "bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]),
        ("Linear:first-child", ["bulk.0", *in_seqs(0)]),
        ("Linear:last-child", ["bulk.5"]),
        ("LeakyReLU:last-child", in_seqs(5)),
        ("#bulk > :first-child:last-child", []),
        (":first-child:last-child", ["", "bulk", "bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]),
    ],
)
def test_child_position(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":first-of-type", ["", "bulk", "bulk.0", "bulk.1", "bulk.2", *seq_and_children(0, 1)]),
        (
            ":last-of-type",
            [
                "",
                "bulk",
                "bulk.1",
                "bulk.2.seq",
                "bulk.2.seq.4",
                "bulk.2.seq.5",
                "bulk.3.seq",
                "bulk.3.seq.4",
                "bulk.3.seq.5",
                "bulk.4",
                "bulk.4.seq",
                "bulk.4.seq.4",
                "bulk.4.seq.5",
                "bulk.5",
            ],
        ),
        (":only-of-type", ["", "bulk", "bulk.1", "bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]),
        ("SkipBlock:first-of-type", ["bulk.2"]),
        ("SkipBlock:last-of-type", ["bulk.4"]),
        ("Linear:last-of-type", [*in_seqs(4), "bulk.5"]),
        ("#bulk > :only-of-type", ["bulk.1"]),
    ],
)
def test_type_position(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":empty", ["bulk.0", "bulk.1", *in_seqs(0, 1, 2, 3, 4, 5), "bulk.5"]),
        (
            ":not(:empty)",
            ["", "bulk", "bulk.2", "bulk.2.seq", "bulk.3", "bulk.3.seq", "bulk.4", "bulk.4.seq"],
        ),
        ("Sequential:empty", []),
        ("Linear:not(:empty)", []),
    ],
)
def test_empty_means_no_child_modules(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_empty_ignores_parameters_buffers_and_none_children() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(), nn.ModuleDict())
    holder = nn.Module()
    holder.register_module("gone", None)
    holder.register_buffer("state", torch.zeros(1))
    model.add_module("holder", holder)
    assert_selector(model, ":empty", ["0", "1", "2", "3", "holder"])


def test_a_lone_module_is_root_empty_and_every_kind_of_only() -> None:
    css = ":root:scope:empty:first-child:last-child:only-child:first-of-type:last-of-type:only-of-type"
    assert_selector(nn.Linear(1, 1), css, [""])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":root", [""]),
        (":scope", [""]),
        ("Network:root", [""]),
        ("Sequential:root", []),
        (":root > *", ["bulk"]),
        (":scope > *", ["bulk"]),
        (":root > * > Linear", ["bulk.0", "bulk.5"]),
        (":scope > #bulk > SkipBlock:first-of-type", ["bulk.2"]),
        (":root :root", []),
        ("* :root", []),
        (":not(:root):not(:scope)", [path for path, _ in network().named_modules()][1:]),
    ],
)
def test_root_and_scope(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_root_and_scope_of_a_submodule_are_that_submodule(net: Network) -> None:
    block = net.bulk[3]
    assert_selector(block, ":root", [""])
    assert_selector(block, ":scope", [""])
    assert_selector(block, ":scope > * > :first-child", ["seq.0"])
    assert_selector(block, "SkipBlock:first-child:only-of-type", [""])


def test_none_children_are_skipped() -> None:
    model = Shared()  # a, b (inner, relu), a None called `nothing`, c
    assert_selector(model, "#c:nth-child(3)", ["c"])
    assert_selector(model, "#c:last-child", ["c"])
    assert_selector(model, "Sequential + Linear", ["c"])
    assert_selector(LastIsNone(), "#x:last-child", ["x"])
    assert_selector(LastIsNone(), "#x:only-child", ["x"])
    assert_selector(LastIsNone(), "#x:only-of-type", ["x"])


@pytest.mark.parametrize(
    "css",
    [":FIRST-CHILD", ":First-Child", ":first-CHILD"],
)
def test_pseudo_class_names_are_case_insensitive(net: Network, css: str) -> None:
    assert_selector(net, css, ["", "bulk", "bulk.0", *seq_and_children(0)])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":ROOT", [""]),
        (":Scope", [""]),
        ("#bulk > :LAST-OF-TYPE", ["bulk.1", "bulk.4", "bulk.5"]),
        ("#bulk > :Only-Of-Type", ["bulk.1"]),
        ("SkipBlock :EMPTY:Last-Child", in_seqs(5)),
    ],
)
def test_more_names_are_case_insensitive(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)
