"""modsel sees through torch.compile, DataParallel and DDP wrappers (issue 13, point 4): paths,
regexes and matches are those of the user's module, as k1lib's are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch._dynamo  # imported once here, not inside a test
from torch import nn

import modsel


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 1)))


def _wrappers() -> list[tuple[str, nn.Module, nn.Module]]:
    inner = _model()
    compiled = torch.compile(inner, backend="eager")
    both = torch.compile(nn.DataParallel(inner), backend="eager")
    return [
        ("compile", compiled, inner),
        ("DataParallel", nn.DataParallel(inner), inner),
        ("compile(DataParallel)", both, inner),
        ("DataParallel(compile)", nn.DataParallel(compiled), inner),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize(
    "name", ["compile", "DataParallel", "compile(DataParallel)", "DataParallel(compile)"]
)
def test_paths_regex_and_match_are_the_inner_modules(name: str) -> None:
    _, wrapped, inner = next(w for w in _wrappers() if w[0] == name)
    assert modsel.paths(wrapped, "Linear") == ["0", "2.0"]
    regex = modsel.to_regex(wrapped, "Linear")
    assert [n for n, _ in inner.named_modules() if re.fullmatch(regex, n)] == ["0", "2.0"]
    assert [(p, m) for p, m in modsel.match(wrapped, "Linear")] == [("0", inner[0]), ("2.0", inner[2][0])]
    tree = modsel.select(wrapped, "Linear: x")
    assert tree.nn is inner
    assert "_orig_mod" not in tree.tree() and "module" not in tree.tree()


def test_freezing_through_the_wrapper_freezes_the_wrapped_model() -> None:
    inner = _model()
    with modsel.freeze(torch.compile(inner, backend="eager"), "#2 Linear"):
        assert not inner[2][0].weight.requires_grad
        assert inner[0].weight.requires_grad
    assert inner[2][0].weight.requires_grad


def test_param_groups_of_a_wrapped_model_hold_its_parameters() -> None:
    inner = _model()
    groups = modsel.param_groups(nn.DataParallel(inner), {"#2 Linear": {"lr": 0.5}}, lr=0.1)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    assert by_lr[0.5] == {id(p) for p in inner[2].parameters()}


def test_unwrap_returns_a_plain_model_itself() -> None:
    model = _model()
    assert modsel.unwrap(model) is model


def test_freeze_names_the_parameters_as_the_unwrapped_model_does() -> None:
    inner = _model()
    frozen = modsel.freeze(nn.DataParallel(inner), "#2 Linear")
    assert frozen.parameters == ["2.0.weight", "2.0.bias"]


def test_an_empty_selection_names_the_wrapped_models_class() -> None:
    with pytest.warns(UserWarning, match="selects no module of Sequential"):
        modsel.paths(nn.DataParallel(_model()), "Conv2d")


# ---- FSDP2 (fully_shard) and replicate swap a module's class ---------------------------------------


def paths(model: nn.Module, selector: str) -> list[str]:
    return [path for path, _ in modsel.match(model, selector)]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_a_fully_sharded_model_is_matched_by_its_own_class_names(tmp_path: Path) -> None:
    # fully_shard turns a Block into an FSDPBlock (bases FSDPModule, Block) in place: type
    # selectors, the type attribute and trees must keep seeing Block
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    from torch.distributed.fsdp import fully_shard

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = nn.Sequential(Block(), nn.ReLU(), Block())
        before = str(modsel.select(model, "*").tree())
        for block in (model[0], model[2]):
            fully_shard(block)
        fully_shard(model)
        assert type(model[0]).__name__ == "FSDPBlock" and type(model).__name__ == "FSDPSequential"
        assert paths(model, "Block") == ["0", "2"]
        assert paths(model, "Sequential > Block") == ["0", "2"]
        assert paths(model, f'Block[type="{__name__}.Block"]') == ["0", "2"]
        assert paths(model, ".FSDPModule") == ["", "0", "2"]  # its MRO still counts
        assert str(modsel.select(model, "*").tree()) == before  # the printed tree too
    finally:
        dist.destroy_process_group()


def test_a_class_named_like_a_wrapper_but_not_made_by_torch_distributed_keeps_its_name() -> None:
    class Mixin:
        pass

    WrapLinear = type("WrapLinear", (Mixin, nn.Linear), {})
    model = nn.Sequential(WrapLinear(2, 2))
    assert paths(model, "WrapLinear") == ["0"]
    assert paths(model, "Linear") == []
