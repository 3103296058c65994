"""Attributes on real models: TorchScript modules (scripted, saved and loaded, traced), the
``type`` attribute that tells PEFT's ``Linear`` from torch's, and enum-valued attributes.

The eager, scripted and loaded models must agree on every attribute selector; where TorchScript
kept too little to tell (a traced module), a selector asking for what it lacks raises
``modsel.TargetError`` instead of matching nothing.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modsel
from modsel._document import PartialAttributes, _saved_class_name

from ..real_models import lora, resnet
from .util import assert_selector, paths

# torch.jit.script / save / load / trace warn that TorchScript is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


# ---- TorchScript: the same attributes as the eager model ---------------------------------------
def _save_and_load(model: nn.Module, path: Path) -> Any:
    torch.jit.save(model, str(path))
    return torch.jit.load(str(path))


@pytest.fixture(scope="module")
def eager() -> nn.Module:
    return resnet().eval()


@pytest.fixture(scope="module")
def scripted(eager: nn.Module) -> Any:
    return torch.jit.script(eager)


@pytest.fixture(scope="module")
def loaded(scripted: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _save_and_load(scripted, tmp_path_factory.mktemp("jit") / "resnet.pt")


def test_scripted_resnet_strided_convolutions(scripted: Any) -> None:
    # the reproduction of issue 13: [] before, as stride was read from vars(module)
    assert modsel.paths(scripted, 'Conv2d[stride="2,2"]') == ["layer2.0.conv1", "layer2.0.downsample.0"]


def test_loaded_resnet_strided_convolutions(scripted: Any, tmp_path: Path) -> None:
    loaded = _save_and_load(scripted, tmp_path / "resnet.pt")
    assert paths(loaded, 'Conv2d[stride="2,2"]') == ["layer2.0.conv1", "layer2.0.downsample.0"]
    assert paths(loaded, "Linear[in_features=16][bias=true]") == ["fc"]


CONVS = [
    "conv1",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer1.1.conv1",
    "layer1.1.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer2.0.downsample.0",
    "layer2.1.conv1",
    "layer2.1.conv2",
]
NORMS = [path.replace("conv", "bn").replace("downsample.0", "downsample.1") for path in CONVS]


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ('Conv2d[stride="2,2"]', ["layer2.0.conv1", "layer2.0.downsample.0"]),
        ('Conv2d[kernel_size="1,1"]', ["layer2.0.downsample.0"]),
        ('Conv2d[padding="1,1"][in_channels=8][out_channels=16]', ["layer2.0.conv1"]),
        ("Conv2d[padding_mode=zeros][groups=1]", CONVS),
        ("Conv2d[bias=false]", CONVS),
        ("Conv2d[bias=true]", []),
        ("[weight=true][bias=false]", CONVS),
        ("BatchNorm2d[training=false]", NORMS),
        ("BatchNorm2d[training=true]", []),
        ("BatchNorm2d[eps<0.001]", NORMS),
        ("BatchNorm2d[eps=1e-5][momentum>=0.1][affine=true]", NORMS),
        ("BatchNorm2d[num_features>8]", [p for p in NORMS if p.startswith("layer2")]),
        ("Linear[in_features=16]", ["fc"]),
        ("Linear[out_features>=10][bias=true]", ["fc"]),
        ("ReLU[inplace=true]", ["relu", *[f"layer{i}.{j}.relu" for i in (1, 2) for j in (0, 1)]]),
        ('[type="torch.nn.modules.conv.Conv2d"]', CONVS),
        ('[type="tests.real_models.BasicBlock"]', ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]),
        ('[type^="tests."]:not(BasicBlock)', [""]),
        ("[training=false]:not([type^=torch])", ["", "layer1.0", "layer1.1", "layer2.0", "layer2.1"]),
        ("[stride]", CONVS),
        ("[running_mean]", []),  # a buffer: not an attribute, scripted or not
        ("[_reversed_padding_repeated_twice]", []),  # private
    ],
)
def test_eager_scripted_and_loaded_models_agree(
    eager: nn.Module, scripted: Any, loaded: Any, css: str, expected: list[str]
) -> None:
    assert_selector(eager, css, expected)
    assert_selector(scripted, css, expected)
    assert_selector(loaded, css, expected)


def test_every_module_has_the_eager_attributes_when_scripted_and_loaded(
    eager: nn.Module, scripted: Any, loaded: Any
) -> None:
    trees = [modsel.select(model, "") for model in (eager, scripted, loaded)]
    for (path, node), (_, script_node), (_, load_node) in zip(
        *(t.named_modules() for t in trees), strict=True
    ):
        assert script_node.attributes() == node.attributes(), path
        assert load_node.attributes() == node.attributes(), path
        assert type(script_node.attributes()) is dict and type(load_node.attributes()) is dict


class Layout(enum.Enum):
    NCHW = "nchw"
    NHWC = "nhwc"


class Gate(nn.Module):
    """A scripted user class: its own scalars, an enum, a constant and a None slot."""

    __constants__ = ("width",)

    def __init__(self) -> None:
        super().__init__()
        self.width = 4
        self.kind = "gated"
        self.scale = 0.5
        self.layout = Layout.NHWC
        self.sizes = [2, 3]
        self.proj = nn.Linear(4, 4, bias=False)
        self.register_parameter("shift", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.scale


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("Gate[kind=gated][scale=0.5][width=4]", [""]),
        ("[layout=nhwc]", [""]),
        ('[sizes="2,3"]', [""]),
        ("[shift=false]", [""]),
        ("Linear[bias=false]", ["proj"]),
        ('[type="tests.modsel.test_real_attributes.Gate"]', [""]),
        ("[training=true]", ["", "proj"]),
    ],
)
def test_a_scripted_user_module(css: str, expected: list[str], tmp_path: Path) -> None:
    eager = Gate()
    assert_selector(eager, css, expected)
    scripted = torch.jit.script(eager)
    assert_selector(scripted, css, expected)
    assert_selector(_save_and_load(scripted, tmp_path / "gate.pt"), css, expected)


@pytest.mark.parametrize(
    ("saved", "python"),
    [
        ("__torch__.torch.nn.modules.conv.___torch_mangle_1.Conv2d", "torch.nn.modules.conv.Conv2d"),
        ("__torch__.tests.real_models.SmallResNet", "tests.real_models.SmallResNet"),
        ("__torch__.Net", "__main__.Net"),
        ("__torch__.___torch_mangle_3.Net", "__main__.Net"),
    ],
)
def test_the_class_name_of_a_loaded_module(saved: str, python: str) -> None:
    assert _saved_class_name(saved) == python


# ---- traced modules: refused, not silently empty -------------------------------------------------
@pytest.fixture(scope="module")
def traced(eager: nn.Module) -> Any:
    return torch.jit.trace(eager, torch.randn(1, 1, 16, 16))


def test_a_traced_model_refuses_attributes_it_lacks(traced: Any) -> None:
    with pytest.raises(modsel.TargetError, match=r"'stride': it is a torch\.jit\.trace module"):
        paths(traced, '[stride="2,2"]')
    with pytest.raises(modsel.TargetError, match=r"on the eager model, or on one made by torch\.jit\.script"):
        paths(traced, "[in_features]")


def test_a_traced_model_has_the_traced_classes_names(traced: Any, eager: nn.Module) -> None:
    assert paths(traced, "Conv2d") == CONVS  # not TracedModule, which every module was
    assert modsel.select(traced, "").tree() == modsel.select(eager, "").tree()


def test_a_traced_model_still_has_path_training_parameter_slots_and_type(traced: Any) -> None:
    assert paths(traced, "[path$=conv1][training=false][weight=true]") == [
        p for p in CONVS if p.endswith("conv1")
    ]
    assert paths(traced, '[type="torch.nn.modules.conv.Conv2d"]') == CONVS
    assert paths(traced, "[type][path=fc]") == ["fc"]


def test_a_loaded_trace_refuses_the_constants_it_lost(traced: Any, tmp_path: Path) -> None:
    loaded = _save_and_load(traced, tmp_path / "traced.pt")
    with pytest.raises(modsel.TargetError, match=r"conv1 \(Conv2d\) has the attribute 'stride'.*'stride'"):
        paths(loaded, 'Conv2d[stride="2,2"]')
    with pytest.raises(modsel.TargetError, match="Linear declares"):
        paths(loaded, "Linear[in_features=16]")
    assert paths(loaded, "BatchNorm2d[training=false]") == NORMS  # what it kept still matches
    node = modsel.select(loaded, "").layer2[0].conv1
    assert isinstance(node.attributes(), PartialAttributes)
    assert node.attributes()["type"] == "torch.nn.modules.conv.Conv2d"


# ---- type: which Linear ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peft_model() -> Any:
    return lora()


ADAPTED = [f"base_model.model.model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]


def test_type_tells_peft_linear_from_torch_linear(peft_model: Any) -> None:
    # Llama, 2 layers: 7 Linears each and lm_head; LoRA wraps q_proj and v_proj in PEFT's own
    # Linear, which holds torch's Linear (base_layer) and two adapter Linears
    assert len(paths(peft_model, "Linear")) == 15 + 4 * 3
    assert len(paths(peft_model, 'Linear[type^="torch.nn."]')) == 11 + 4 * 3
    assert paths(peft_model, 'Linear[type="peft.tuners.lora.layer.Linear"]') == ADAPTED
    wrappers = [path for path, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    assert paths(peft_model, 'Linear[type^="peft."]') == wrappers == ADAPTED
    assert paths(peft_model, 'Linear[type^="peft."] > #base_layer') == [f"{p}.base_layer" for p in ADAPTED]
    assert paths(peft_model, 'Linear[type^="torch.nn."]:not(#base_layer, #lora_A *, #lora_B *)') == [
        path
        for path, module in peft_model.named_modules()
        if type(module) is nn.Linear and not path.endswith("proj.base_layer") and ".lora_" not in path
    ]


def test_type_in_attributes_and_explain(peft_model: Any) -> None:
    root = modsel.select(peft_model, 'Linear[type^="peft."]: adapted')
    wrapper = root.base_model.model.model.layers[0].self_attn.q_proj
    assert wrapper.attributes()["type"] == "peft.tuners.lora.layer.Linear"
    assert wrapper.base_layer.attributes()["type"] == "torch.nn.modules.linear.Linear"
    assert wrapper.props == ("adapted",)
    assert 'selects it (via `Linear[type^="peft."]`)' in wrapper.explain()
    assert '`Linear[type^="peft."]` does not match this module' in wrapper.base_layer.explain()
    assert [node.path for node in root.selected()] == ADAPTED


def test_every_module_has_a_type(peft_model: Any) -> None:
    assert paths(peft_model, "[type]") == [path for path, _ in peft_model.named_modules()]
    assert paths(peft_model, ":not([type])") == []


class Typed(nn.Module):
    def __init__(self, kind: object) -> None:
        super().__init__()
        self.type = kind


def test_a_module_attribute_named_type_wins() -> None:
    # the module's own data, not the class name; absent when it cannot be written as text
    model = nn.Sequential(Typed("gated"), Typed(nn.ReLU), Typed(None), nn.ReLU())
    assert_selector(model, "[type=gated]", ["0"])
    assert_selector(model, "[type]", ["", "0", "3"])
    assert_selector(model, '[type$=".Typed"]', [])


def test_type_of_a_nested_class() -> None:
    class Local(nn.Module):
        pass

    assert_selector(nn.Sequential(Local()), '[type$="test_type_of_a_nested_class.<locals>.Local"]', ["0"])


# ---- enums -----------------------------------------------------------------------------------------
class Format(str, enum.Enum):
    NCHW = "NCHW"
    NHWC = "channels_last"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 3


class Mode(enum.Enum):
    FAST = (1, "fast")
    EXACT = object()


class Flags(enum.Flag):
    A = 1
    B = 2


class Enumerated(nn.Module):
    def __init__(self, fmt: Format, level: Level, mode: Mode) -> None:
        super().__init__()
        self.fmt = fmt
        self.level = level
        self.mode = mode
        self.layout = Layout.NCHW
        self.flags = Flags.B
        self.pair = (Format.NCHW, Level.HIGH)


@pytest.fixture(scope="module")
def enums() -> nn.Module:
    return nn.Sequential(
        Enumerated(Format.NCHW, Level.LOW, Mode.FAST), Enumerated(Format.NHWC, Level.HIGH, Mode.EXACT)
    )


@pytest.mark.parametrize(
    ("css", "expected"),
    [
        ("[fmt=NCHW]", ["0"]),
        ("[fmt=channels_last]", ["1"]),
        ("[fmt=NHWC]", []),
        ('[fmt="Format.NCHW"]', []),
        ("[fmt^=Format]", []),
        ("[level=1]", ["0"]),
        ("[level>=2]", ["1"]),
        ("[level=HIGH]", []),
        ("[mode=FAST]", ["0"]),
        ("[mode=EXACT]", ["1"]),
        ("[layout=nchw]", ["0", "1"]),
        ("[flags=2]", ["0", "1"]),
        ('[pair="NCHW,3"]', ["0", "1"]),
    ],
)
def test_enum_attributes_read_as_their_value_or_name(enums: nn.Module, css: str, expected: list[str]) -> None:
    assert_selector(enums, css, expected)


def test_enum_attributes_in_the_attributes_dict(enums: nn.Module) -> None:
    node = modsel.select(enums, "")[1]
    attrs = node.attributes()
    assert {k: attrs[k] for k in ("fmt", "level", "mode", "layout", "flags", "pair")} == {
        "fmt": "channels_last",
        "level": "3",
        "mode": "EXACT",
        "layout": "nchw",
        "flags": "2",
        "pair": "NCHW,3",
    }


def test_a_float_subclass_reads_as_its_number() -> None:
    np = pytest.importorskip("numpy")
    layer = nn.LayerNorm(4)
    layer.eps = np.float64(1e-5)  # type: ignore[assignment]
    assert_selector(nn.Sequential(layer), "[eps=1e-5]", ["0"])
    assert_selector(nn.Sequential(layer), '[eps="1e-05"]', ["0"])


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("boom")


def test_a_class_whose_module_is_not_text_does_not_break_attribute_selectors() -> None:
    odd = type("Odd", (nn.Module,), {"__module__": _Unprintable()})
    model = nn.Sequential(odd(), nn.Linear(1, 1))
    assert paths(model, "[in_features=1]") == ["1"]
    assert paths(model, '[type="Odd"]') == ["0"]
