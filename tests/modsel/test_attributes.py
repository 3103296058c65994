"""Attribute selectors: presence, the CSS operators with ``i``/``s`` flags, numbers, ``path``.

A module's attributes are its public ``__dict__`` entries that are bool/int/float/str (or
tuples/lists of them) as strings, one ``"true"``/``"false"`` per registered parameter slot, and
``path``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modsel

from .models import Network
from .util import assert_selector


class Tagged(nn.Module):
    """Plain attributes of every kind, some that selectors see and some that they do not."""

    def __init__(self) -> None:
        super().__init__()
        self.kind = "conv-block"
        self.tags = "fast small"
        self.label = "Hello"
        self.names = ["ab", "cd"]
        self.mixed = (1, 2.5, True, "x")
        self.empty = ""
        self.count = 0
        self.fill = "nan"
        self._hidden = "secret"
        self.blob = object()
        self.nested = ((1, 2),)
        self.nothing = None
        self.gain = nn.Parameter(torch.ones(1))
        self.register_parameter("shift", None)
        self.register_buffer("scale", torch.ones(1))


class AttrNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(32, 512)
        self.nob = nn.Linear(512, 10, bias=False)
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(8)
        self.act = nn.LeakyReLU(0.2)
        self.drop = nn.Dropout(0.5)
        self.tag = Tagged()


ALL = ["", "lin", "nob", "conv", "norm", "act", "drop", "tag"]


@pytest.fixture(scope="module")
def model() -> AttrNet:
    torch.manual_seed(0)
    return AttrNet()


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[in_features]", ["lin", "nob"]),
        ("[kind]", ["tag"]),
        ("[empty]", ["tag"]),
        ("[count]", ["tag"]),
        ("[names]", ["tag"]),
        ("[mixed]", ["tag"]),
        ("[training]", ALL),
        ("[In_features]", []),
        ("[IN_FEATURES]", []),
        ("[_hidden]", []),
        ("[blob]", []),
        ("[nested]", []),
        ("[nothing]", []),
        ("[scale]", []),
        ("[forward]", []),
        ("[nonexistent]", []),
    ],
)
def test_presence(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[kind=conv-block]", ["tag"]),
        ('[kind="conv-block"]', ["tag"]),
        ("[kind='conv-block']", ["tag"]),
        ("[kind=conv]", []),
        ("[padding_mode=zeros]", ["conv"]),
        ("[padding_mode=Zeros]", []),
        ("[label=Hello]", ["tag"]),
        ("[label=hello]", []),
        ("[empty='']", ["tag"]),
        ('[tags="fast small"]', ["tag"]),
    ],
)
def test_equals_is_exact_and_case_sensitive(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[training=true]", ALL),
        ("[training=false]", []),
        ("[training=True]", []),
        ("[inplace=false]", ["act", "drop"]),
        ("[elementwise_affine=true]", ["norm"]),
        ("[transposed=false]", ["conv"]),
    ],
)
def test_bools_read_true_and_false(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


def test_training_follows_eval() -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.Dropout())
    model[1].eval()
    assert_selector(model, "[training=false]", ["1"])
    assert_selector(model, "[training=true]", ["", "0"])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ('[kernel_size="3,3"]', ["conv"]),
        ('[kernel_size="3, 3"]', []),
        ('[kernel_size="(3, 3)"]', []),
        ('[stride="1,1"]', ["conv"]),
        ("[normalized_shape=8]", ["norm"]),
        ('[normalized_shape="8"]', ["norm"]),
        ('[names="ab,cd"]', ["tag"]),
        ('[mixed="1,2.5,true,x"]', ["tag"]),
        ("[kernel_size=3]", []),
    ],
)
def test_tuples_and_lists_are_comma_joined(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[weight]", ["lin", "nob", "conv", "norm"]),
        ("[bias]", ["lin", "nob", "conv", "norm"]),
        ("[bias=true]", ["lin", "conv", "norm"]),
        ("[bias=false]", ["nob"]),
        ("Linear[bias=false]", ["nob"]),
        ("Linear[bias=true]", ["lin"]),
        ("[weight=false]", []),
        ("[gain=true]", ["tag"]),
        ("[shift=false]", ["tag"]),
        ("[shift=true]", []),
    ],
)
def test_parameter_slots(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


def test_parameter_slots_of_multihead_attention() -> None:
    # kdim == vdim == embed_dim: one packed in_proj_weight, the separate q/k/v slots hold None
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    assert_selector(model, "[in_proj_weight=true]", ["0"])
    assert_selector(model, "[q_proj_weight=false]", ["0"])
    assert_selector(model, "[q_proj_weight=true]", [])
    assert_selector(model, "[in_proj_bias=true]", ["0"])
    assert_selector(model, "[bias_k]", [])  # a plain None attribute, not a parameter slot


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[in_features=32]", ["lin"]),
        ("[in_features=32.0]", ["lin"]),
        ("[in_features=3.2e1]", ["lin"]),
        ("[in_features=+32]", ["lin"]),
        ('[in_features="32"]', ["lin"]),
        ('[in_features="32.0"]', []),
        ("[in_features=3]", []),
        ("[eps=1e-5]", ["norm"]),
        ("[eps=1e-05]", ["norm"]),
        ("[eps=0.00001]", ["norm"]),
        ("[eps=1E-5]", ["norm"]),
        ('[eps="1e-05"]', ["norm"]),
        ("[negative_slope=0.2]", ["act"]),
        ('[negative_slope="0.2"]', ["act"]),
        ("[p=0.5]", ["drop"]),
        ("[p=.5]", ["drop"]),
        ("[count=0]", ["tag"]),
        ("[count=-0]", ["tag"]),
    ],
)
def test_unquoted_numbers_compare_numerically(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear[out_features>=512]", ["lin"]),
        ("[out_features>=512]", ["lin"]),
        ("[out_features>512]", []),
        ("[out_features<512]", ["nob"]),
        ("[out_features<=10]", ["nob"]),
        ("[out_features<10]", []),
        ("[in_features>100]", ["nob"]),
        ("[out_features>=5e2]", ["lin"]),
        ("Linear[out_features!=512]", ["nob"]),
        ("Linear[out_features!=7]", ["lin", "nob"]),
        ("[p<1]", ["drop"]),
        ("[p>0.5]", []),
        ("[eps<1e-4]", ["norm"]),
        ("[negative_slope>0.1]", ["act"]),
        ("[count<=0]", ["tag"]),
        ("[count>-1]", ["tag"]),
        ("[kind>0]", []),
        ("[training>0]", []),
        ("[kernel_size>=1]", []),
    ],
)
def test_numeric_comparisons(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[in_features!=32]", ["nob"]),
        ("[padding_mode!=reflect]", ["conv"]),
        ("[padding_mode!=zeros]", []),
        ("[kind!=conv-block]", []),
        ("[kind!=5]", ["tag"]),
        ("[label!=hello]", ["tag"]),
        ("[nonexistent!=x]", []),
        ("[nonexistent!=5]", []),
        ("[nonexistent<5]", []),
    ],
)
def test_not_equal_compares_numbers_or_text_and_needs_the_attribute(
    model: AttrNet, css: str, expected: list[str]
) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[tags~=fast]", ["tag"]),
        ("[tags~=small]", ["tag"]),
        ("[tags~=fas]", []),
        ('[tags~="fast small"]', []),
        ('[tags~=""]', []),
        ("[kind~=conv-block]", ["tag"]),
        ("[kind~=conv]", []),
    ],
)
def test_word_match(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[kind|=conv]", ["tag"]),
        ("[kind|=conv-block]", ["tag"]),
        ("[kind|=con]", []),
        ("[kind|=block]", []),
        ("[padding_mode|=zeros]", ["conv"]),
    ],
)
def test_dash_match(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[kind^=conv]", ["tag"]),
        ("[kind^=c]", ["tag"]),
        ("[kind^=block]", []),
        ("[kind$=block]", ["tag"]),
        ("[kind$=conv]", []),
        ("[padding_mode$=os]", ["conv"]),
        ("[kind*=v-b]", ["tag"]),
        ("[kind*=conv-block]", ["tag"]),
        ("[kind*=x]", []),
        ("[label^=Hel]", ["tag"]),
        ("[label^=hel]", []),
    ],
)
def test_prefix_suffix_substring(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


@pytest.mark.parametrize("op", ["^=", "$=", "*="])
@pytest.mark.parametrize("name", ["kind", "empty", "label", "path"])
def test_empty_value_with_prefix_suffix_substring_matches_nothing(model: AttrNet, op: str, name: str) -> None:
    assert_selector(model, f'[{name}{op}""]', [])
    assert_selector(model, f"[{name}{op}'']", [])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[label=hello i]", ["tag"]),
        ('[label="HELLO" i]', ["tag"]),
        ("[label=hello I]", ["tag"]),
        ("[label=hello s]", []),
        ("[label=Hello s]", ["tag"]),
        ("[label^=hel i]", ["tag"]),
        ("[label$=LLO i]", ["tag"]),
        ("[label*=ELL i]", ["tag"]),
        ("[tags~=FAST i]", ["tag"]),
        ("[kind|=CONV i]", ["tag"]),
        ("[padding_mode=ZEROS i]", ["conv"]),
        ("[padding_mode=ZEROS s]", []),
    ],
)
def test_case_flags(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


def test_unquoted_identifier_that_python_reads_as_a_float_is_still_a_string(model: AttrNet) -> None:
    # `nan` is an identifier in CSS, not a number: [fill=nan] compares the text
    assert_selector(model, '[fill="nan"]', ["tag"])
    assert_selector(model, "[fill=nan]", ["tag"])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ('[path=""]', [""]),
        ("[path='']", [""]),
        ("[path=bulk]", ["bulk"]),
        ('[path="bulk.2.seq.0"]', ["bulk.2.seq.0"]),
        ('[path^="bulk.2."]', ["bulk.2.seq", *[f"bulk.2.seq.{i}" for i in range(6)]]),
        ('[path$=".0"]', ["bulk.0", "bulk.2.seq.0", "bulk.3.seq.0", "bulk.4.seq.0"]),
        ("[path*=seq]", [f"bulk.{b}.seq{s}" for b in (2, 3, 4) for s in ["", *[f".{i}" for i in range(6)]]]),
        ("[path|=bulk]", ["bulk"]),
        ("[path=BULK i]", ["bulk"]),
        ("Linear[path^=bulk][path$='5']", ["bulk.5"]),
    ],
)
def test_path_attribute(net: Network, css: str, expected: list[str]) -> None:
    assert_selector(net, css, expected)


def test_path_is_present_on_every_module(net: Network) -> None:
    assert_selector(net, "[path]", [path for path, _ in net.named_modules()])


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Linear[in_features=32][out_features=512]", ["lin"]),
        ("Linear[in_features=32][out_features=10]", []),
        ("[bias][in_features]", ["lin", "nob"]),
        ("[bias=false][out_features<=10]", ["nob"]),
        ("Conv2d[kernel_size='3,3'][padding_mode=zeros][bias=true]", ["conv"]),
    ],
)
def test_several_attributes_in_one_compound(model: AttrNet, css: str, expected: list[str]) -> None:
    assert_selector(model, css, expected)


class Unprintable(str):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_an_attribute_that_cannot_be_written_as_text_is_absent_not_fatal() -> None:
    odd = torch.nn.Linear(1, 1)
    odd.tag = Unprintable("x")  # type: ignore[assignment]
    odd.huge = 10**5000  # str() refuses ints this long
    model = torch.nn.Sequential(odd, torch.nn.Linear(1, 1))
    found = [path for path, _ in modsel.match(model, "Linear[in_features=1]")]
    assert found == ["0", "1"]
    assert modsel.match(model, "[tag]") == [] and modsel.match(model, "[huge]") == []
