"""modsel sees through torch.compile, DataParallel and DDP wrappers (issue 13, point 4): paths,
regexes and matches are those of the user's module, as k1lib's are."""

from __future__ import annotations

import re

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
