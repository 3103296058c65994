"""The logical pseudo-classes ``:not()``, ``:is()`` and ``:where()``, each over a selector list."""

from __future__ import annotations

import pytest

from .models import Network
from .util import assert_selector, in_seqs

NETWORK_ALL = [
    "",
    "bulk",
    "bulk.0",
    "bulk.1",
    *[p for b in (2, 3, 4) for p in (f"bulk.{b}", f"bulk.{b}.seq", *[f"bulk.{b}.seq.{i}" for i in range(6)])],
    "bulk.5",
]
LINEARS = ["bulk.0", *in_seqs(0, 2, 4), "bulk.5"]
CONTAINERS = ["", "bulk", "bulk.2", "bulk.2.seq", "bulk.3", "bulk.3.seq", "bulk.4", "bulk.4.seq"]


def without(*excluded: str) -> list[str]:
    return [path for path in NETWORK_ALL if path not in excluded]


def test_network_has_the_shape_these_tests_assume(net: Network) -> None:
    assert [path for path, _ in net.named_modules()] == NETWORK_ALL


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":not(Linear)", without(*LINEARS)),
        (":not(Linear, LeakyReLU)", CONTAINERS),
        (":not(LeakyReLU, Linear)", CONTAINERS),
        (":not(*)", []),
        (":not(Conv2d)", NETWORK_ALL),
        (":not(:not(Linear))", LINEARS),
        (":not(:root)", NETWORK_ALL[1:]),
        ("Linear:not([in_features=10])", ["bulk.0"]),
        ("Linear:not(#0):not(#5)", in_seqs(2, 4)),
        ("#bulk > :not(SkipBlock)", ["bulk.0", "bulk.1", "bulk.5"]),
        (":not(:is(Linear, LeakyReLU)):not(:root)", CONTAINERS[1:]),
    ],
)
def test_not(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear:not(#bulk > *)", in_seqs(0, 2, 4)),
        (":not(SkipBlock *)", ["", "bulk", "bulk.0", "bulk.1", "bulk.2", "bulk.3", "bulk.4", "bulk.5"]),
        (":not(#bulk > :is(Linear, LeakyReLU))", without("bulk.0", "bulk.1", "bulk.5")),
        (":not(Linear + *)", without("bulk.1", *in_seqs(1, 3, 5))),
        (":not(LeakyReLU ~ *)", without(*in_seqs(2, 3, 4, 5), "bulk.2", "bulk.3", "bulk.4", "bulk.5")),
        ("LeakyReLU:not(SkipBlock > * > *)", ["bulk.1"]),
    ],
)
def test_not_with_complex_arguments(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


IS_CASES = [
    (
        "(Linear, SkipBlock)",
        [
            "bulk.0",
            "bulk.2",
            *[f"bulk.2.seq.{i}" for i in (0, 2, 4)],
            "bulk.3",
            *[f"bulk.3.seq.{i}" for i in (0, 2, 4)],
            "bulk.4",
            *[f"bulk.4.seq.{i}" for i in (0, 2, 4)],
            "bulk.5",
        ],
    ),
    ("(Conv2d)", []),
    ("(*)", NETWORK_ALL),
    ("(Conv2d, *)", NETWORK_ALL),
    ("(#bulk > *)", ["bulk.0", "bulk.1", "bulk.2", "bulk.3", "bulk.4", "bulk.5"]),
    ("(SkipBlock Linear, #5)", [*in_seqs(0, 2, 4, 5), "bulk.5"]),
    ("(SkipBlock Linear)", in_seqs(0, 2, 4)),
    ("(SkipBlock, Network) > Sequential", ["bulk", "bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]),
    ("(#bulk > *) LeakyReLU", in_seqs(1, 3, 5)),
    ("(:not(Linear), #0)", without(*in_seqs(2, 4), "bulk.5")),
    ("(Linear):is(#0)", ["bulk.0", *in_seqs(0)]),
    ("(:is(:is(Linear)))", LINEARS),
]


@pytest.mark.parametrize(("argument", "expected"), IS_CASES)
@pytest.mark.parametrize("name", ["is", "where"])
def test_is_and_where(net: Network, name: str, argument: str, expected: list[str]) -> None:
    assert_selector(net, f":{name}{argument}", expected)


def test_is_not_then_descendant(net: Network) -> None:
    expected = [
        "bulk.2.seq",
        "bulk.2.seq.1",
        "bulk.2.seq.3",
        "bulk.2.seq.5",
        "bulk.3.seq",
        "bulk.3.seq.1",
        "bulk.3.seq.3",
        "bulk.3.seq.5",
        "bulk.4.seq",
        "bulk.4.seq.1",
        "bulk.4.seq.3",
        "bulk.4.seq.5",
    ]
    assert_selector(net, ":is(SkipBlock) :not(Linear)", expected)
    assert_selector(net, ":where(SkipBlock) :not(Linear)", expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("SkipBlock :is(#seq > Linear + LeakyReLU)", in_seqs(1, 3, 5)),
        (":where(#bulk) > :where(Linear)", ["bulk.0", "bulk.5"]),
        (":is(#bulk) > :not(:is(SkipBlock, LeakyReLU))", ["bulk.0", "bulk.5"]),
        (":where(SkipBlock + SkipBlock) Linear#0", ["bulk.3.seq.0", "bulk.4.seq.0"]),
    ],
)
def test_logical_pseudo_classes_inside_complex_selectors(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize("css", [":NOT(LeakyReLU)", ":Not(LeakyReLU)", ":not(LeakyReLU)"])
def test_not_name_is_case_insensitive(net: Network, css: str) -> None:
    assert_selector(net, css, without("bulk.1", *in_seqs(1, 3, 5)))


@pytest.mark.parametrize("css", [":IS(Linear)", ":Is(Linear)", ":WHERE(Linear)", ":Where(Linear)"])
def test_is_and_where_names_are_case_insensitive(net: Network, css: str) -> None:
    assert_selector(net, css, LINEARS)


@pytest.mark.parametrize("css", [":is(linear)", ":where(LINEAR)", ":is(#BULK)"])
def test_arguments_stay_case_sensitive(net: Network, css: str) -> None:
    assert_selector(net, css, [])
