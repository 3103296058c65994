"""Combinators (descendant, ``>``, ``+``, ``~``) and selector lists (``,``)."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

import modsel

from .conftest import WIDE
from .models import Network, network
from .util import assert_selector, in_seqs

LINEARS = ["bulk.0", *in_seqs(0, 2, 4), "bulk.5"]
SEQS = ["bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("SkipBlock Linear", in_seqs(0, 2, 4)),
        ("#bulk Linear", LINEARS),
        ("Network Linear", LINEARS),
        ("Network SkipBlock", ["bulk.2", "bulk.3", "bulk.4"]),
        ("SkipBlock LeakyReLU", in_seqs(1, 3, 5)),
        ("Linear Linear", []),
        ("SkipBlock SkipBlock", []),
        ("Sequential Sequential", SEQS),
        ("Sequential Sequential Linear", in_seqs(0, 2, 4)),
        ("#seq #0", in_seqs(0)),
        ("* *", [path for path, _ in network().named_modules()][1:]),
    ],
)
def test_descendant(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk > Linear", ["bulk.0", "bulk.5"]),
        ("Network > Linear", []),
        ("Network > Sequential", ["bulk"]),
        ("Sequential > Sequential", []),
        ("#bulk > SkipBlock > LeakyReLU", []),
        ("#bulk > SkipBlock > Sequential > LeakyReLU", in_seqs(1, 3, 5)),
        ("Network > Sequential > SkipBlock > Sequential > Linear", in_seqs(0, 2, 4)),
        ("* > * > * > * > *", in_seqs(0, 1, 2, 3, 4, 5)),
        ("* > * > * > * > * > *", []),
    ],
)
def test_child(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        # the nearest ancestor that matches `*` is not always the one whose parent is Network
        ("Network > * Linear", LINEARS),
        ("Network > * > * Linear", in_seqs(0, 2, 4)),
        ("Network > * > * > * Linear", in_seqs(0, 2, 4)),
        ("Network > * > * > * > * Linear", []),
        ("#bulk > * LeakyReLU", in_seqs(1, 3, 5)),
        ("SkipBlock > * Linear", in_seqs(0, 2, 4)),
        ("Sequential > SkipBlock Linear", in_seqs(0, 2, 4)),
    ],
)
def test_mixed_descendant_and_child_backtrack(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear + LeakyReLU", ["bulk.1", *in_seqs(1, 3, 5)]),
        ("LeakyReLU + Linear", in_seqs(2, 4)),
        ("SkipBlock + SkipBlock", ["bulk.3", "bulk.4"]),
        ("SkipBlock + Linear", ["bulk.5"]),
        ("LeakyReLU + SkipBlock", ["bulk.2"]),
        ("#5 + *", []),
        ("#0 + * + * + * + * + *", [*in_seqs(5), "bulk.5"]),
        ("LeakyReLU + SkipBlock + SkipBlock + SkipBlock", ["bulk.4"]),
        ("Network + *", []),
    ],
)
def test_next_sibling(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (
            "LeakyReLU ~ Linear",
            [
                "bulk.2.seq.2",
                "bulk.2.seq.4",
                "bulk.3.seq.2",
                "bulk.3.seq.4",
                "bulk.4.seq.2",
                "bulk.4.seq.4",
                "bulk.5",
            ],
        ),
        (
            "Linear ~ Linear",
            [
                "bulk.2.seq.2",
                "bulk.2.seq.4",
                "bulk.3.seq.2",
                "bulk.3.seq.4",
                "bulk.4.seq.2",
                "bulk.4.seq.4",
                "bulk.5",
            ],
        ),
        ("SkipBlock ~ SkipBlock", ["bulk.3", "bulk.4"]),
        ("SkipBlock ~ Linear", ["bulk.5"]),
        ("#5 ~ *", []),
        ("#1 ~ #0", []),
        ("Network ~ *", []),
        ("LeakyReLU + SkipBlock ~ SkipBlock", ["bulk.3", "bulk.4"]),
    ],
)
def test_subsequent_sibling(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_subsequent_sibling_of_the_first_child(net: Network) -> None:
    expected = [
        "bulk.1",
        "bulk.2",
        *[f"bulk.2.seq.{i}" for i in range(1, 6)],
        "bulk.3",
        *[f"bulk.3.seq.{i}" for i in range(1, 6)],
        "bulk.4",
        *[f"bulk.4.seq.{i}" for i in range(1, 6)],
        "bulk.5",
    ]
    assert_selector(net, "#0 ~ *", expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk > :not(:empty) ~ Linear", ["bulk.5"]),
        (":not(:empty) ~ Linear", ["bulk.5"]),
        (":not(:empty) ~ *", ["bulk.3", "bulk.4", "bulk.5"]),
        (":not(:empty) + *", ["bulk.3", "bulk.4", "bulk.5"]),
        (":empty ~ SkipBlock", ["bulk.2", "bulk.3", "bulk.4"]),
        (
            ":not(:not(:empty) ~ *):not(:empty)",
            ["", "bulk", "bulk.2", "bulk.2.seq", "bulk.3.seq", "bulk.4.seq"],
        ),
    ],
)
def test_siblings_are_judged_by_their_own_children(net: Network, css: str, expected: list[str]) -> None:
    # an earlier sibling's :empty depends on its children, whatever order the tree is walked in
    assert_selector(net, css, expected)


def test_an_earlier_sibling_that_is_not_empty_is_not_empty() -> None:
    model = nn.Sequential(
        nn.Sequential(nn.ReLU()), nn.Linear(1, 1), nn.Sequential(nn.ReLU()), nn.Linear(1, 1)
    )
    assert_selector(model, "Sequential:empty ~ Linear", [])
    assert_selector(model, "Sequential:not(:empty) ~ Linear", ["1", "3"])
    model = nn.Sequential(nn.Linear(1, 1), nn.Sequential(nn.ReLU()), nn.Linear(1, 1))
    assert_selector(model, ":not(:empty) ~ Linear", ["2"])
    assert_selector(model, "Linear ~ :not(:empty) ~ Linear", ["2"])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#0 + LeakyReLU ~ #4", ["bulk.2.seq.4", "bulk.3.seq.4", "bulk.4", "bulk.4.seq.4"]),
        ("SkipBlock + SkipBlock Linear#0", ["bulk.3.seq.0", "bulk.4.seq.0"]),
        ("SkipBlock ~ SkipBlock > Sequential > :last-child", ["bulk.3.seq.5", "bulk.4.seq.5"]),
        ("#bulk > Linear ~ SkipBlock Linear", in_seqs(0, 2, 4)),
        ("#bulk > Linear + * ~ SkipBlock > * > #1 ~ Linear", in_seqs(2, 4)),
        ("Linear ~ SkipBlock Linear + LeakyReLU", in_seqs(1, 3, 5)),
        ("#bulk > LeakyReLU ~ * > Sequential", SEQS),
    ],
)
def test_all_combinators_together(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk>Linear", ["bulk.0", "bulk.5"]),
        ("#bulk  >  Linear", ["bulk.0", "bulk.5"]),
        ("#bulk\t>\tLinear", ["bulk.0", "bulk.5"]),
        ("Linear+LeakyReLU", ["bulk.1", *in_seqs(1, 3, 5)]),
        ("SkipBlock~SkipBlock", ["bulk.3", "bulk.4"]),
        ("SkipBlock    LeakyReLU", in_seqs(1, 3, 5)),
        ("SkipBlock\tLeakyReLU", in_seqs(1, 3, 5)),
        ("  SkipBlock LeakyReLU  ", in_seqs(1, 3, 5)),
    ],
)
def test_whitespace_around_combinators(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear, LeakyReLU", ["bulk.0", "bulk.1", *in_seqs(0, 1, 2, 3, 4, 5), "bulk.5"]),
        ("LeakyReLU, Linear", ["bulk.0", "bulk.1", *in_seqs(0, 1, 2, 3, 4, 5), "bulk.5"]),
        ("LeakyReLU,Linear", ["bulk.0", "bulk.1", *in_seqs(0, 1, 2, 3, 4, 5), "bulk.5"]),
        ("#5, #0", ["bulk.0", *in_seqs(0, 5), "bulk.5"]),
        ("SkipBlock, SkipBlock", ["bulk.2", "bulk.3", "bulk.4"]),
        ("SkipBlock, .SkipBlock, #bulk > SkipBlock", ["bulk.2", "bulk.3", "bulk.4"]),
        ("Conv2d, #bulk", ["bulk"]),
        ("Conv2d, Conv3d", []),
        ("#bulk > Linear, SkipBlock Linear#0", ["bulk.0", *in_seqs(0), "bulk.5"]),
        (":root, :root > *", ["", "bulk"]),
        ("SkipBlock + SkipBlock, Linear + SkipBlock", ["bulk.3", "bulk.4"]),
    ],
)
def test_selector_lists_report_in_document_order(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


# ---- the 7,000-wide ModuleList: index i holds Linear when i is even, ReLU when it is odd ----------
@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#6997 ~ *", ["6998", "6999"]),
        ("#6997 ~ Linear", ["6998"]),
        ("#6999 ~ *", []),
        ("#3 ~ #2", []),
        ("#0 ~ #6999", ["6999"]),
        ("Linear#6000 ~ ReLU:nth-last-child(-n+4)", ["6997", "6999"]),
        ("ReLU#6001 ~ Linear#6000", []),
        ("#3 + *", ["4"]),
        ("#6998 + *", ["6999"]),
        ("Linear + Linear", []),
    ],
)
def test_wide_siblings(big: nn.ModuleList, css: str, expected: list[str]) -> None:
    assert_selector(big, css, expected)


def test_wide_every_linear_after_a_relu(big: nn.ModuleList) -> None:
    linears_after_the_first = [str(i) for i in range(2, WIDE, 2)]
    assert_selector(big, "ReLU ~ Linear", linears_after_the_first)
    assert_selector(big, "ReLU + Linear", linears_after_the_first)
    assert_selector(big, "#4 ~ ReLU", [str(i) for i in range(5, WIDE, 2)])


def test_wide_has_a_later_sibling(big: nn.ModuleList) -> None:
    assert_selector(big, ":has(~ #6999)", [str(i) for i in range(WIDE - 1)])
    assert_selector(big, ":has(+ #6999)", ["6998"])
    assert_selector(big, ":has(~ #0)", [])


# ---- matching stays linear on deep chains ---------------------------------------------------------


def chain(depth: int) -> nn.Module:
    """``depth`` modules, each the only child of the one above."""
    model: nn.Module = nn.Identity()
    for _ in range(depth - 1):
        model = nn.Sequential(model)
    return model


def test_failing_descendant_chains_test_each_node_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from modsel import _match

    calls = 0
    real = _match._id_test

    def counted(name: str) -> _match.Pred:
        test = real(name)

        def counting(node: Any, anchor: Any = None, /) -> bool:
            nonlocal calls
            calls += 1
            return test(node)

        return counting

    monkeypatch.setattr(_match, "_id_test", counted)
    depth, steps = 24, 10  # walking every ancestor at every step: C(24, 10) ~ 2 million tests
    css = "#nope" + " *" * steps
    assert modsel.match(chain(depth), css) == []
    # the first step walks the ancestors (quadratic in the depth), every later one is remembered
    assert calls <= depth * (depth + 1) // 2
    # and a match found through the chain is the same as before
    assert [p for p, _ in modsel.match(chain(6), "Sequential * * Identity")] == ["0.0.0.0.0"]
