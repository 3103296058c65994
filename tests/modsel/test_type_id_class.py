"""Type (``Linear``), universal (``*``), id (``#bulk``) and class (``.Linear``, by MRO) selectors."""

from __future__ import annotations

import pytest
from torch import nn

from .models import Network
from .util import assert_selector

# every node of Network(), in named_modules() order
NETWORK_ALL = [
    "",
    "bulk",
    "bulk.0",
    "bulk.1",
    "bulk.2",
    "bulk.2.seq",
    *[f"bulk.2.seq.{i}" for i in range(6)],
    "bulk.3",
    "bulk.3.seq",
    *[f"bulk.3.seq.{i}" for i in range(6)],
    "bulk.4",
    "bulk.4.seq",
    *[f"bulk.4.seq.{i}" for i in range(6)],
    "bulk.5",
]

LINEARS = [
    "bulk.0",
    "bulk.2.seq.0",
    "bulk.2.seq.2",
    "bulk.2.seq.4",
    "bulk.3.seq.0",
    "bulk.3.seq.2",
    "bulk.3.seq.4",
    "bulk.4.seq.0",
    "bulk.4.seq.2",
    "bulk.4.seq.4",
    "bulk.5",
]

LEAKY_RELUS = [
    "bulk.1",
    "bulk.2.seq.1",
    "bulk.2.seq.3",
    "bulk.2.seq.5",
    "bulk.3.seq.1",
    "bulk.3.seq.3",
    "bulk.3.seq.5",
    "bulk.4.seq.1",
    "bulk.4.seq.3",
    "bulk.4.seq.5",
]


class MyLinear(nn.Linear):
    """A subclass: its tag is ``MyLinear``, its classes include ``Linear``."""


def test_network_has_the_shape_these_tests_assume(net: Network) -> None:
    assert [path for path, _ in net.named_modules()] == NETWORK_ALL


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear", LINEARS),
        ("LeakyReLU", LEAKY_RELUS),
        ("SkipBlock", ["bulk.2", "bulk.3", "bulk.4"]),
        ("Sequential", ["bulk", "bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]),
        ("Network", [""]),
    ],
)
def test_type_is_the_class_name(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize("css", ["linear", "LINEAR", "Lin", "Linea", "Linears", "skipblock", "Module"])
def test_type_is_exact_and_case_sensitive(net: Network, css: str) -> None:
    assert_selector(net, css, [])


def test_universal_matches_every_module_including_the_root(net: Network) -> None:
    assert_selector(net, "*", NETWORK_ALL)


def test_type_does_not_match_subclasses() -> None:
    model = nn.Sequential(nn.Linear(1, 1), MyLinear(1, 1))
    assert_selector(model, "Linear", ["0"])
    assert_selector(model, "MyLinear", ["1"])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("#bulk", ["bulk"]),
        ("#seq", ["bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]),
        ("#0", ["bulk.0", "bulk.2.seq.0", "bulk.3.seq.0", "bulk.4.seq.0"]),
        ("#5", ["bulk.2.seq.5", "bulk.3.seq.5", "bulk.4.seq.5", "bulk.5"]),
        ("#2", ["bulk.2", "bulk.2.seq.2", "bulk.3.seq.2", "bulk.4.seq.2"]),
        ("#root", [""]),
        ("#Bulk", []),
        ("#BULK", []),
        ("#6", []),
        ("#bul", []),
    ],
)
def test_id_is_the_registered_name(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_root_id_is_root_whatever_the_model() -> None:
    model = nn.Sequential(nn.Linear(1, 1))
    assert_selector(model, "#root", [""])
    assert_selector(model, "Sequential#root", [""])


def test_root_of_a_submodule_is_called_root(net: Network) -> None:
    assert_selector(net.bulk[2], "#root", [""])
    assert_selector(net.bulk[2], "SkipBlock#2", [])
    assert_selector(net.bulk[2], "SkipBlock#root", [""])
    assert_selector(net.bulk[2], "#seq", ["seq"])


def test_a_child_named_root_also_has_the_id_root() -> None:
    model = nn.Sequential()
    model.add_module("root", nn.Linear(1, 1))
    model.add_module("other", nn.ReLU())
    assert_selector(model, "#root", ["", "root"])
    assert_selector(model, "Linear#root", ["root"])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear#0", ["bulk.0", "bulk.2.seq.0", "bulk.3.seq.0", "bulk.4.seq.0"]),
        ("LeakyReLU#0", []),
        ("LeakyReLU#1", ["bulk.1", "bulk.2.seq.1", "bulk.3.seq.1", "bulk.4.seq.1"]),
        ("Sequential#bulk", ["bulk"]),
        ("SkipBlock#bulk", []),
        ("*#bulk", ["bulk"]),
        ("#bulk#bulk", ["bulk"]),
        ("#bulk#seq", []),
        ("Linear#5", ["bulk.5"]),
    ],
)
def test_type_and_id_in_one_compound(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        (".Linear", LINEARS),
        (".LeakyReLU", LEAKY_RELUS),
        (".SkipBlock", ["bulk.2", "bulk.3", "bulk.4"]),
        (".Network", [""]),
        (".Module", NETWORK_ALL),
        (".object", NETWORK_ALL),
        (".linear", []),
        (".module", []),
        (".Conv2d", []),
    ],
)
def test_class_is_any_name_in_the_mro(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_class_matches_subclasses() -> None:
    model = nn.Sequential(nn.Linear(1, 1), MyLinear(1, 1), nn.ReLU())
    assert_selector(model, ".Linear", ["0", "1"])
    assert_selector(model, ".MyLinear", ["1"])
    assert_selector(model, ".Module", ["", "0", "1", "2"])


def test_class_linear_finds_the_linear_inside_multihead_attention() -> None:
    model = nn.Sequential(nn.MultiheadAttention(4, 2), nn.Linear(4, 4))
    assert_selector(model, ".Linear", ["0.out_proj", "1"])
    assert_selector(model, "Linear", ["1"])
    assert_selector(model, "NonDynamicallyQuantizableLinear", ["0.out_proj"])
    assert_selector(model, ".NonDynamicallyQuantizableLinear", ["0.out_proj"])
    assert_selector(model, ".Module", ["", "0", "0.out_proj", "1"])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear.Linear", LINEARS),
        (".Linear.Module", LINEARS),
        ("LeakyReLU.Linear", []),
        ("*.SkipBlock", ["bulk.2", "bulk.3", "bulk.4"]),
        (".Linear#5", ["bulk.5"]),
        ("#0.Linear", ["bulk.0", "bulk.2.seq.0", "bulk.3.seq.0", "bulk.4.seq.0"]),
        (".Sequential#seq", ["bulk.2.seq", "bulk.3.seq", "bulk.4.seq"]),
    ],
)
def test_class_in_compounds(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)
