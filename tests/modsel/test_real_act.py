"""The actions on real architectures (issue 13): param_groups on tied weights, backward hooks
on a ResNet (in-place ReLU after BatchNorm) and on Hugging Face blocks with structured outputs,
and empty selections that warn at the user's line with close names."""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import modsel
from modsel._grad import first_tensor, hook_grads, output_tensors

from ..real_models import gpt2, llama, resnet, token_batch
from .models import network

Grads = dict[str, list[tuple[Any, Tensor]]]  # path -> [(key in the output, gradient)]


def by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: v for k, v in group.items() if k not in ("params", "param_names")}
        for group in groups
        for name in group["param_names"]
    }


# ---- param_groups: options cascade one by one ------------------------------------------------------
def test_tied_weight_gets_the_options_of_every_rule_reaching_it() -> None:
    model = llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    rules = {"LlamaRMSNorm, Embedding": {"weight_decay": 0.0}, "#lm_head": {"lr": 1e-4}}
    groups = modsel.param_groups(model, rules, lr=1e-3, weight_decay=0.1)
    opts = by_name(groups)
    assert opts["model.embed_tokens.weight"] == {"lr": 1e-4, "weight_decay": 0.0}
    assert opts["model.norm.weight"] == {"lr": 1e-3, "weight_decay": 0.0}
    assert opts["model.layers.0.self_attn.q_proj.weight"] == {"lr": 1e-3, "weight_decay": 0.1}
    # one group per option set, in named_parameters() order, each parameter once
    names = [name for name, _ in model.named_parameters()]
    assert [g["param_names"][0] for g in groups] == [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.input_layernorm.weight",
    ]
    for group in groups:
        assert group["param_names"] == [n for n in names if n in group["param_names"]]
    assert sorted(n for g in groups for n in g["param_names"]) == sorted(names)
    torch.optim.AdamW(groups)


def test_one_module_selected_by_two_rules_takes_both_options() -> None:
    model = network()
    opts = by_name(
        modsel.param_groups(
            model, {"Linear": {"lr": 0.1}, "#bulk > Linear": {"weight_decay": 0.0}}, lr=1.0, weight_decay=0.5
        )
    )
    assert opts["bulk.0.weight"] == {"lr": 0.1, "weight_decay": 0.0}  # both rules select bulk.0
    assert opts["bulk.2.seq.0.weight"] == {"lr": 0.1, "weight_decay": 0.5}
    # the same through an ancestor: the block's lr and the Linear's weight decay
    opts = by_name(modsel.param_groups(model, {"SkipBlock": {"lr": 0.1}, "Linear": {"weight_decay": 0.0}}))
    assert opts["bulk.3.seq.2.bias"] == {"lr": 0.1, "weight_decay": 0.0}
    assert opts["bulk.5.bias"] == {"weight_decay": 0.0}


@pytest.mark.parametrize(("first", "second", "winner"), [(1e-5, 1e-4, 1e-4), (1e-4, 1e-5, 1e-5)])
def test_tied_weight_with_conflicting_rules_warns_and_the_later_rule_wins(
    first: float, second: float, winner: float
) -> None:
    model = llama()
    rules = {"Embedding": {"lr": first}, "#lm_head": {"lr": second, "weight_decay": 0.0}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opts = by_name(modsel.param_groups(model, rules, lr=1e-3))
    assert [str(w.message) for w in caught] == [
        "modsel.param_groups: the tensor model.embed_tokens.weight = lm_head.weight is shared, and "
        f"rules set 'lr' to different values at its places ('Embedding' sets {first!r} at "
        f"model.embed_tokens.weight, '#lm_head' sets {second!r} at lm_head.weight); the later rule "
        f"{'#lm_head' if winner == second else 'Embedding'!r} wins: lr={winner!r}"
    ]
    assert caught[0].filename == __file__
    assert opts["model.embed_tokens.weight"] == {"lr": winner, "weight_decay": 0.0}


def test_tied_weight_with_agreeing_rules_does_not_warn() -> None:
    model = llama()
    # pytest turns warnings into errors: none may come
    opts = by_name(modsel.param_groups(model, {"Embedding": {"lr": 0.5}, "#lm_head": {"lr": 0.5}}))
    assert opts["model.embed_tokens.weight"] == {"lr": 0.5}


# ---- hooks(backward=...): tensor hooks on outputs ------------------------------------------------------
def reference_grads(model: nn.Module, css: str, loss_of: Callable[[nn.Module], Tensor]) -> Grads:
    """``path -> [(key, gradient)]`` of the selected modules' output tensors, by
    ``torch.autograd.grad`` on a plain run of a copy (in-place ReLUs off: the same function, and
    each output keeps the value the module returned)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    with modsel.tap(model, css) as outputs:
        loss = loss_of(model)
    flat = [(path, key, t) for path, out in outputs.items() for key, t in output_tensors(out)]
    flat = [(path, key, t) for path, key, t in flat if t.requires_grad]
    grads = torch.autograd.grad(loss, [t for *_, t in flat], allow_unused=True)
    out: Grads = {}
    for (path, key, _), grad in zip(flat, grads, strict=True):
        if grad is not None:
            out.setdefault(path, []).append((key, grad))
    return out


def hooked_grads(model: nn.Module, css: str, loss_of: Callable[[nn.Module], Tensor]) -> Grads:
    """The same, from ``modsel.hooks(backward=...)``."""
    seen: Grads = {}

    def record(path: str, module: nn.Module, grad: Tensor, key: Any) -> None:
        seen.setdefault(path, []).append((key, grad.clone()))

    with modsel.hooks(model, css, backward=record):
        loss_of(model).backward()
    return seen


def assert_same_grads(got: Grads, want: Grads) -> None:
    assert sorted(got) == sorted(want)
    for path, pairs in want.items():
        mine = dict(got[path])
        assert len(mine) == len(got[path]) == len(pairs), path  # one call per output tensor
        for key, grad in pairs:
            torch.testing.assert_close(mine[key], grad, rtol=1e-5, atol=1e-7, msg=f"{path} {key}")


def resnet_loss(model: nn.Module) -> Tensor:
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    return model(x).logsumexp(1).sum()


def test_backward_hooks_on_a_resnet_with_inplace_relu_after_batchnorm() -> None:
    model = resnet()
    css = "BasicBlock, Conv2d, BatchNorm2d"
    want = reference_grads(model, css, resnet_loss)
    got = hooked_grads(model, css, resnet_loss)  # torch's full backward hook raised here
    assert sorted(got) == sorted(modsel.paths(model, css))
    assert all(key == () for pairs in got.values() for key, _ in pairs)
    assert_same_grads(got, want)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def gpt2_loss(model: nn.Module) -> Tensor:
    return model(**token_batch()).loss  # type: ignore[no-any-return]


def test_backward_hooks_on_hugging_face_blocks_and_structured_outputs() -> None:
    model = gpt2().eval()  # no dropout: the reference run computes the same
    # GPT2Block returns a tensor, GPT2Attention a tuple (output, None), the root a ModelOutput
    css = "GPT2Block, GPT2Attention, :root"
    want = reference_grads(model, css, gpt2_loss)
    got = hooked_grads(model, css, gpt2_loss)
    assert sorted(k for k, _ in got["transformer.h.0"]) == [()]
    assert sorted(k for k, _ in got["transformer.h.1.attn"]) == [(0,)]
    assert sorted(k for k, _ in got[""]) == [("logits",), ("loss",)]
    assert_same_grads(got, want)


def test_a_backward_callback_returning_a_tensor_replaces_the_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with modsel.hooks(model, "#0", backward=lambda path, m, grad, key: torch.zeros_like(grad)):
        model(torch.randn(5, 3)).sum().backward()
    assert model[0].weight.grad is not None and not model[0].weight.grad.any()
    assert model[2].weight.grad is not None and model[2].weight.grad.any()


def test_a_backward_pass_after_the_block_calls_nothing() -> None:
    model = network()
    calls: list[str] = []
    with modsel.hooks(model, "Linear", backward=lambda path, *rest: calls.append(path)):
        loss = model(torch.randn(4, 1)).sum()
    loss.backward()
    assert calls == []


@dataclass
class Pair:
    left: Tensor
    right: Any


def test_output_tensors_walks_structures_once_each() -> None:
    a, b, c = torch.ones(1), torch.zeros(2), torch.full((3,), 2.0)
    loop: list[Any] = [b]
    loop.append(loop)  # a list that holds itself
    out = (a, {"x": None, "y": Pair(c, loop)}, a, 3)
    assert [(key, t.shape) for key, t in output_tensors(out)] == [
        ((0,), a.shape),
        ((1, "y", "left"), c.shape),
        ((1, "y", "right", 0), b.shape),
    ]
    assert output_tensors(a) == [((), a)]
    assert first_tensor((None, [], {"k": c})) is c
    assert first_tensor({"k": 1}) is None


def test_hook_grads_only_on_tensors_that_require_grad() -> None:
    w = torch.ones(2, requires_grad=True)
    out = {"y": w * 3, "n": torch.ones(2), "z": (w * 2,)}
    got: dict[Any, Tensor] = {}
    handles = hook_grads(out, lambda key, grad: got.__setitem__(key, grad))
    assert len(handles) == 2
    (out["y"].sum() + out["z"][0].sum() * 5).backward()
    assert got.keys() == {("y",), ("z", 0)}
    assert torch.equal(got[("z", 0)], torch.full((2,), 5.0))


# ---- empty selections warn at the user's line, with close names -------------------------------------------
@pytest.fixture(scope="module")
def model_gpt2() -> nn.Module:
    return gpt2()  # type: ignore[no-any-return]


@contextlib.contextmanager
def one_warning() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert caught[0].category is UserWarning
    assert caught[0].filename == __file__  # the user's line, not modsel's or contextlib's


def test_paths_and_to_regex_of_nothing_warn_with_close_class_names(model_gpt2: nn.Module) -> None:
    with one_warning() as caught:
        assert modsel.paths(model_gpt2, "GPT2Blok") == []
    assert str(caught[0].message) == (
        "modsel.paths: selector 'GPT2Blok' selects no module of GPT2LMHeadModel; no module is a "
        "'GPT2Blok' (did you mean 'GPT2Block'?); returning []"
    )
    with one_warning() as caught:
        pattern = modsel.to_regex(model_gpt2, "#lm_haed, GPT2Atention > Conv1D")
    assert pattern == "(?!)"  # a regex that matches nothing, not even ""
    assert not any(re.fullmatch(pattern, path) for path, _ in model_gpt2.named_modules())
    assert str(caught[0].message) == (
        "modsel.to_regex: selector '#lm_haed, GPT2Atention > Conv1D' selects no module of "
        "GPT2LMHeadModel; no module has the id 'lm_haed' (did you mean '#lm_head'?); no module is a "
        "'GPT2Atention' (did you mean 'GPT2Attention'?); returning '(?!)', which matches no path"
    )


def test_no_hint_when_every_name_exists(model_gpt2: nn.Module) -> None:
    with one_warning() as caught:
        assert modsel.paths(model_gpt2, "GPT2Block > Embedding, .Modul") == []
    assert str(caught[0].message) == (  # names the model has get no hint
        "modsel.paths: selector 'GPT2Block > Embedding, .Modul' selects no module of GPT2LMHeadModel; "
        "no module is a subclass of 'Modul' (did you mean '.Module' or '.ModuleList'?); returning []"
    )
    with one_warning() as caught:
        assert modsel.paths(model_gpt2, "GPT2Block > Embedding") == []
    assert str(caught[0].message).endswith("selects no module of GPT2LMHeadModel; returning []")


def test_every_action_warns_at_the_callers_line_with_the_hint(model_gpt2: nn.Module) -> None:
    hint = "did you mean 'GPT2Block'?"
    with one_warning() as caught:
        modsel.freeze(model_gpt2, "GPT2Blok")
    assert hint in str(caught[0].message)
    with one_warning() as caught:
        modsel.param_groups(model_gpt2, {"GPT2Blok": {"lr": 0.1}}, lr=1.0)
    assert hint in str(caught[0].message)
    with one_warning() as caught, modsel.hooks(model_gpt2, "GPT2Blok", forward=print):
        pass
    assert hint in str(caught[0].message)
    with one_warning() as caught, modsel.tap(model_gpt2, "GPT2Blok"):
        pass
    assert hint in str(caught[0].message)


# ---- the README's PEFT example ---------------------------------------------------------------------------
def test_peft_target_modules_from_a_selector() -> None:
    from peft import LoraConfig, get_peft_model

    model = llama()
    target = modsel.to_regex(model, "LlamaAttention > Linear:is(#q_proj, #v_proj)")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=target))
    adapted = [p for p, m in model.named_modules() if hasattr(m, "lora_A")]
    assert adapted == [f"model.layers.{i}.self_attn.{n}" for i in (0, 1) for n in ("q_proj", "v_proj")]
    assert peft_model.get_nb_trainable_parameters()[0] == 4 * 4 * (32 + 32)
