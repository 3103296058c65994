"""``:has()`` with relative selectors: descendant (default), ``>``, ``+`` and ``~``.

In ``:has(A B)`` and ``:has(> A B)`` every compound is below the subject; ``A`` must be a strict
descendant of the subject (or its child), never the subject itself.
"""

from __future__ import annotations

import pytest
from torch import nn

from .models import Network, Shared
from .util import assert_selector, in_seqs

CONTAINERS = ["", "bulk", "bulk.2", "bulk.2.seq", "bulk.3", "bulk.3.seq", "bulk.4", "bulk.4.seq"]
SEQS = ["bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]
LEAVES = ["bulk.0", "bulk.1", *in_seqs(0, 1, 2, 3, 4, 5), "bulk.5"]
# the modules that have a later sibling: every child but the last of its parent (not the root)
NOT_LAST = [
    "bulk.0",
    "bulk.1",
    "bulk.2",
    *[f"bulk.2.seq.{i}" for i in range(5)],
    "bulk.3",
    *[f"bulk.3.seq.{i}" for i in range(5)],
    "bulk.4",
    *[f"bulk.4.seq.{i}" for i in range(5)],
]


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":has(Linear)", CONTAINERS),
        (":has(*)", CONTAINERS),
        (":has(#0)", CONTAINERS),
        (":has(:not(Linear))", CONTAINERS),
        (":has(SkipBlock)", ["", "bulk"]),
        (":has(Conv2d)", []),
        ("SkipBlock:has(LeakyReLU)", ["bulk.2", "bulk.3", "bulk.4"]),
        ("#bulk > :has(Linear)", ["bulk.2", "bulk.3", "bulk.4"]),
        (":has(> #seq) LeakyReLU", in_seqs(1, 3, 5)),
    ],
)
def test_has_descendant(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":has(> Linear)", ["bulk", *SEQS]),
        (":has(> #0)", ["bulk", *SEQS]),
        (":has(> Sequential)", ["", "bulk.2", "bulk.3", "bulk.4"]),
        (":has(> SkipBlock)", ["bulk"]),
        (":has(> Linear[in_features=1])", ["bulk"]),
        (":has(> LeakyReLU:last-child)", SEQS),
        (":has(> Network)", []),
    ],
)
def test_has_child(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":has(+ LeakyReLU)", ["bulk.0", *in_seqs(0, 2, 4)]),
        (":has(+ SkipBlock)", ["bulk.1", "bulk.2", "bulk.3"]),
        (":has(+ *)", NOT_LAST),
        (":has(+ #1, + #2, + #3, + #4, + #5)", NOT_LAST),
        ("LeakyReLU:has(+ Linear)", in_seqs(1, 3)),
        (":has(+ LeakyReLU):has(~ SkipBlock)", ["bulk.0"]),
        (":has(+ Network)", []),
    ],
)
def test_has_next_sibling(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (
            ":has(~ Linear)",
            [
                "bulk.0",
                "bulk.1",
                "bulk.2",
                *[f"bulk.2.seq.{i}" for i in range(4)],
                "bulk.3",
                *[f"bulk.3.seq.{i}" for i in range(4)],
                "bulk.4",
                *[f"bulk.4.seq.{i}" for i in range(4)],
            ],
        ),
        (":has(~ SkipBlock)", ["bulk.0", "bulk.1", "bulk.2", "bulk.3"]),
        (":has(~ #5)", NOT_LAST),
        (":has(~ *)", NOT_LAST),
        (":has(~ Network)", []),
    ],
)
def test_has_subsequent_sibling(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_root_has_no_siblings(net: Network) -> None:
    assert_selector(net, ":root:has(+ *)", [])
    assert_selector(net, ":root:has(~ *)", [])
    assert_selector(nn.Linear(1, 1), ":has(+ *), :has(~ *), :has(*), :has(> *)", [])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        # the first compound must be strictly below the subject: a SkipBlock is not its own
        # descendant, so it does not match :has(SkipBlock > Sequential)
        (":has(SkipBlock > Sequential)", ["", "bulk"]),
        ("SkipBlock:has(SkipBlock > Sequential)", []),
        ("SkipBlock:has(SkipBlock Linear)", []),
        (":has(SkipBlock Linear)", ["", "bulk"]),
        (":has(Sequential Linear)", ["", "bulk", "bulk.2", "bulk.3", "bulk.4"]),
        (":has(> Sequential > Linear)", ["", "bulk.2", "bulk.3", "bulk.4"]),
        (":has(> Sequential Linear)", ["", "bulk.2", "bulk.3", "bulk.4"]),
        (":has(> SkipBlock > Sequential)", ["bulk"]),
        (":has(> SkipBlock > Linear)", []),
        (":has(> :is(Linear, LeakyReLU) + LeakyReLU)", ["bulk", *SEQS]),
        (":has(Linear + LeakyReLU ~ SkipBlock)", ["", "bulk"]),
    ],
)
def test_has_with_complex_relative_selectors_below(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":has(+ SkipBlock ~ Linear)", ["bulk.1", "bulk.2", "bulk.3"]),
        (":has(+ SkipBlock + SkipBlock)", ["bulk.1", "bulk.2"]),
        (":has(~ SkipBlock Linear)", ["bulk.0", "bulk.1", "bulk.2", "bulk.3"]),
        (":has(~ SkipBlock > Sequential > Linear)", ["bulk.0", "bulk.1", "bulk.2", "bulk.3"]),
        (":has(~ SkipBlock > Linear)", []),
        (":has(~ LeakyReLU + Linear)", in_seqs(0, 1, 2)),
        (":has(+ LeakyReLU + Linear)", in_seqs(0, 2)),
    ],
)
def test_has_with_complex_relative_selectors_beside(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":has(> Sequential, + SkipBlock)", ["", "bulk.1", "bulk.2", "bulk.3", "bulk.4"]),
        (":has(> Linear, > SkipBlock)", ["bulk", *SEQS]),
        (":has(Conv2d, ~ #5)", NOT_LAST),
        (":has(Conv2d, > Conv2d, + Conv2d, ~ Conv2d)", []),
    ],
)
def test_has_takes_a_relative_selector_list(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":not(:has(*))", LEAVES),
        (":not(:has(> *))", LEAVES),
        ("Sequential:not(:has(SkipBlock))", SEQS),
        (":has(Linear) :has(> Linear)", ["bulk", *SEQS]),
        (":is(:has(> SkipBlock), :has(+ SkipBlock))", ["bulk", "bulk.1", "bulk.2", "bulk.3"]),
    ],
)
def test_has_combined_with_other_selectors(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize("css", [":HAS(> Linear)", ":Has(> Linear)", ":has(>Linear)", ":has( >  Linear )"])
def test_has_name_is_case_insensitive_and_spacing_is_free(net: Network, css: str) -> None:
    assert_selector(net, css, ["bulk", *SEQS])


def test_has_on_a_shared_module() -> None:
    model = Shared()
    assert_selector(model, ":has(#inner)", ["", "b"])
    assert_selector(model, ":has(> Linear)", ["", "b"])
    assert_selector(model, ":has(> ReLU)", ["b"])
    assert_selector(model, ":has(+ Sequential)", ["a"])
    assert_selector(model, ":has(~ Linear)", ["a", "b"])


def test_has_descendant_on_a_deep_chain() -> None:
    model: nn.Module = nn.Linear(1, 1)
    for _ in range(60):
        model = nn.Sequential(model)
    containers = [".".join(["0"] * depth) for depth in range(60)]
    assert_selector(model, ":has(Linear)", containers)
    assert_selector(model, ":has(> Linear)", [containers[-1]])
    assert_selector(model, ":has(> Sequential > Sequential > Linear)", [containers[-3]])
