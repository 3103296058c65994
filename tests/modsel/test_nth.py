"""``:nth-child()``, ``:nth-last-child()`` (both with ``of S``), ``:nth-of-type()`` and
``:nth-last-of-type()``.

Network()'s ``bulk`` holds Linear, LeakyReLU, SkipBlock x3, Linear (positions 1-6); each
SkipBlock's ``seq`` holds Linear, LeakyReLU three times. The root is child 1 of 1 and the only
one of its type.
"""

from __future__ import annotations

import pytest
from torch import nn

from .conftest import WIDE
from .models import Network
from .util import assert_selector, in_seqs


def seq_and_child(index: int) -> list[str]:
    """Each SkipBlock's ``seq`` followed by its child ``index``, in document order."""
    return [p for b in (2, 3, 4) for p in (f"bulk.{b}.seq", f"bulk.{b}.seq.{index}")]


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk > :nth-child(1)", ["bulk.0"]),
        ("#bulk > :nth-child(6)", ["bulk.5"]),
        ("#bulk > :nth-child(7)", []),
        ("#bulk > :nth-child(2n+1)", ["bulk.0", "bulk.2", "bulk.4"]),
        ("#bulk > :nth-child(odd)", ["bulk.0", "bulk.2", "bulk.4"]),
        ("#bulk > :nth-child(2n)", ["bulk.1", "bulk.3", "bulk.5"]),
        ("#bulk > :nth-child(even)", ["bulk.1", "bulk.3", "bulk.5"]),
        ("#bulk > :nth-child(2n+0)", ["bulk.1", "bulk.3", "bulk.5"]),
        ("#bulk > :nth-child(-n+2)", ["bulk.0", "bulk.1"]),
        ("#bulk > :nth-child(n+5)", ["bulk.4", "bulk.5"]),
        ("#bulk > :nth-child(3n)", ["bulk.2", "bulk.5"]),
        ("#bulk > :nth-child(3n-1)", ["bulk.1", "bulk.4"]),
        ("#bulk > :nth-child(-2n+5)", ["bulk.0", "bulk.2", "bulk.4"]),
        ("#bulk > :nth-child(4n+10)", []),
        ("#bulk > :nth-child(-n)", []),
        ("#bulk > :nth-child(0n+3)", ["bulk.2"]),
        ("#bulk > :nth-child(+3)", ["bulk.2"]),
        ("#bulk > :nth-child(+n+6)", ["bulk.5"]),
        (":nth-child(0)", []),
        (":nth-child(-n+0)", []),
        (":nth-child(3)", ["bulk.2", *in_seqs(2)]),
        (":nth-child(n+6)", [*in_seqs(5), "bulk.5"]),
    ],
)
def test_nth_child(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_nth_child_n_and_1_include_the_root(net: Network) -> None:
    assert_selector(net, ":nth-child(n)", [path for path, _ in net.named_modules()])
    assert_selector(net, ":nth-child(1)", ["", "bulk", "bulk.0", *seq_and_child(0)])
    assert_selector(net, ":root:nth-child(1)", [""])
    assert_selector(net, ":root:nth-child(2)", [])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk > :nth-last-child(1)", ["bulk.5"]),
        ("#bulk > :nth-last-child(2)", ["bulk.4"]),
        ("#bulk > :nth-last-child(6)", ["bulk.0"]),
        ("#bulk > :nth-last-child(odd)", ["bulk.1", "bulk.3", "bulk.5"]),
        ("#bulk > :nth-last-child(even)", ["bulk.0", "bulk.2", "bulk.4"]),
        ("#bulk > :nth-last-child(-n+2)", ["bulk.4", "bulk.5"]),
        ("#bulk > :nth-last-child(n+5)", ["bulk.0", "bulk.1"]),
        (":nth-last-child(6)", ["bulk.0", *in_seqs(0)]),
        (":root:nth-last-child(1)", [""]),
        (":root:nth-last-child(2)", []),
    ],
)
def test_nth_last_child(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk > :nth-of-type(1)", ["bulk.0", "bulk.1", "bulk.2"]),
        ("#bulk > :nth-of-type(2)", ["bulk.3", "bulk.5"]),
        ("#bulk > :nth-of-type(3)", ["bulk.4"]),
        ("SkipBlock:nth-of-type(odd)", ["bulk.2", "bulk.4"]),
        ("Linear:nth-of-type(2)", [*in_seqs(2), "bulk.5"]),
        ("LeakyReLU:nth-of-type(n+2)", in_seqs(3, 5)),
        (
            "Sequential > :nth-of-type(3)",
            [
                "bulk.2.seq.4",
                "bulk.2.seq.5",
                "bulk.3.seq.4",
                "bulk.3.seq.5",
                "bulk.4",
                "bulk.4.seq.4",
                "bulk.4.seq.5",
            ],
        ),
        ("#seq > :nth-of-type(-n+1)", in_seqs(0, 1)),
        (":root:nth-of-type(1)", [""]),
        (":root:nth-of-type(2)", []),
    ],
)
def test_nth_of_type(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk > :nth-last-of-type(1)", ["bulk.1", "bulk.4", "bulk.5"]),
        ("#bulk > :nth-last-of-type(2)", ["bulk.0", "bulk.3"]),
        ("SkipBlock:nth-last-of-type(3)", ["bulk.2"]),
        ("#seq > :nth-last-of-type(2)", in_seqs(2, 3)),
        (":root:nth-last-of-type(1)", [""]),
    ],
)
def test_nth_last_of_type(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":nth-child(2 of Linear)", [*in_seqs(2), "bulk.5"]),
        (":nth-child(1 of Linear)", ["bulk.0", *in_seqs(0)]),
        (":nth-child(odd of SkipBlock)", ["bulk.2", "bulk.4"]),
        (":nth-child(2 of SkipBlock, LeakyReLU)", ["bulk.2", *in_seqs(3)]),
        (":nth-child(n+2 of #bulk > *)", ["bulk.1", "bulk.2", "bulk.3", "bulk.4", "bulk.5"]),
        (":nth-child(1 of :not(Linear))", ["", "bulk", "bulk.1", *seq_and_child(1)]),
        ("Linear:nth-child(1 of LeakyReLU)", []),
        (":nth-last-child(1 of Linear)", [*in_seqs(4), "bulk.5"]),
        (":nth-last-child(2 of Linear)", ["bulk.0", *in_seqs(2)]),
        (":nth-last-child(-n+2 of LeakyReLU)", ["bulk.1", *in_seqs(3, 5)]),
        (":nth-child(3 of Linear)", in_seqs(4)),
        (":nth-child(4 of Linear)", []),
    ],
)
def test_nth_child_of_selector(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk > :nth-child(1 of :not(:empty))", ["bulk.2"]),
        ("#bulk > :nth-last-child(1 of :not(:empty))", ["bulk.4"]),
        (":nth-child(3 of :empty)", [*in_seqs(2), "bulk.5"]),
        (":nth-last-child(3 of :empty)", ["bulk.0", *in_seqs(3)]),
    ],
)
def test_nth_child_of_empty(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_nth_child_of_selector_on_the_root() -> None:
    assert_selector(nn.Linear(1, 1), ":nth-child(1 of Linear)", [""])
    assert_selector(nn.Linear(1, 1), ":nth-last-child(1 of .Module)", [""])
    assert_selector(nn.Linear(1, 1), ":nth-child(1 of ReLU)", [])
    assert_selector(nn.Linear(1, 1), ":nth-child(2 of Linear)", [])


def test_nth_child_of_selector_differs_from_nth_of_type() -> None:
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(1, 1), MyLinear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    assert_selector(model, ":nth-child(2 of .Linear)", ["1"])
    assert_selector(model, ":nth-child(3 of .Linear)", ["3"])
    assert_selector(model, "Linear:nth-of-type(2)", ["3"])
    assert_selector(model, ".Linear:nth-of-type(2)", ["3"])
    assert_selector(model, ":nth-of-type(1)", ["", "0", "1", "2"])


@pytest.mark.parametrize(
    "css",
    [
        "#bulk > :NTH-CHILD(ODD)",
        "#bulk > :Nth-Child(Odd)",
        "#bulk > :nth-child(2N+1)",
        "#bulk > :nth-child( 2n + 1 )",
        "#bulk > :nth-child(2n+1 of *)",
        "#bulk > :nth-child(odd OF *)",
        "#bulk > :NTH-LAST-CHILD(EVEN)",
        "#bulk > :nth-last-child(2n)",
    ],
)
def test_names_and_keywords_are_case_insensitive(net: Network, css: str) -> None:
    assert_selector(net, css, ["bulk.0", "bulk.2", "bulk.4"])


@pytest.mark.parametrize(
    "css",
    ["#bulk > :NTH-OF-TYPE(1)", "#bulk > :Nth-Of-Type(n+1)[path]:nth-of-type(-N+1)"],
)
def test_of_type_names_are_case_insensitive(net: Network, css: str) -> None:
    assert_selector(net, css, ["bulk.0", "bulk.1", "bulk.2"])


# ---- the 7,000-wide ModuleList: index i holds Linear when i is even, ReLU when it is odd ----------
@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (":root > :nth-child(1)", ["0"]),
        (":nth-child(3500)", ["3499"]),
        (":nth-child(7000)", ["6999"]),
        (":nth-child(7001)", []),
        (":root > :nth-child(-n+3)", ["0", "1", "2"]),
        (":nth-child(n+6998)", ["6997", "6998", "6999"]),
        ("ReLU:nth-child(1000)", ["999"]),
        ("Linear:nth-child(1000)", []),
        (":nth-child(1000 of ReLU)", ["1999"]),
        (":nth-child(3500 of Linear)", ["6998"]),
        (":nth-child(3501 of Linear)", []),
    ],
)
def test_wide_nth_child(big: nn.ModuleList, css: str, expected: list[str]) -> None:
    assert_selector(big, css, expected)


def test_wide_nth_child_every_thousandth(big: nn.ModuleList) -> None:
    assert_selector(big, ":nth-child(1000n)", [str(i) for i in range(999, WIDE, 1000)])
    assert_selector(big, ":nth-child(1000n+1 of Linear)", [str(2 * k) for k in range(0, WIDE // 2, 1000)])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("ReLU:nth-last-child(1)", ["6999"]),
        (":root > :nth-last-child(1)", ["6999"]),
        (":nth-last-child(7000)", ["0"]),
        (":nth-last-child(3500)", ["3500"]),
        (":root > :nth-last-child(-n+3)", ["6997", "6998", "6999"]),
        (":nth-last-child(2 of Linear)", ["6996"]),
        (":nth-last-child(3500 of ReLU)", ["1"]),
    ],
)
def test_wide_nth_last_child(big: nn.ModuleList, css: str, expected: list[str]) -> None:
    assert_selector(big, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear:nth-of-type(1)", ["0"]),
        ("Linear:nth-of-type(1000)", ["1998"]),
        ("ReLU:nth-of-type(1000)", ["1999"]),
        (":root > :nth-of-type(3500)", ["6998", "6999"]),
        (":root > :nth-of-type(3501)", []),
        (":root > :nth-last-of-type(1)", ["6998", "6999"]),
        (":root > :nth-last-of-type(2)", ["6996", "6997"]),
        ("Linear:nth-last-of-type(3500)", ["0"]),
    ],
)
def test_wide_nth_of_type(big: nn.ModuleList, css: str, expected: list[str]) -> None:
    assert_selector(big, css, expected)
