"""Acting on selections: freeze / unfreeze, param_groups, hooks, tap, paths and to_regex."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

import modsel
import modsel._act as act

from .models import Shared, network


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def lin_names(model: nn.Module) -> set[str]:
    return {
        f"{path}.{n}" for path, m in model.named_modules() if type(m) is nn.Linear for n in ("weight", "bias")
    }


# ---- freeze / unfreeze --------------------------------------------------------------------------
def test_freeze_plain_call_stays() -> None:
    model = network()
    result = act.freeze(model, "SkipBlock")
    frozen = {name for name, flag in flags(model).items() if not flag}
    assert frozen == {name for name in flags(model) if name.startswith(("bulk.2.", "bulk.3.", "bulk.4."))}
    assert result.parameters == [n for n, _ in model.named_parameters() if n in frozen]
    assert repr(result) == "<modsel.freeze 'SkipBlock': 18 parameters>"


def test_freeze_context_restores_exactly_including_already_frozen() -> None:
    model = network()
    model.bulk[2].seq[0].weight.requires_grad_(False)  # frozen before, must stay frozen after
    model.bulk[0].bias.requires_grad_(False)  # outside the selection, untouched
    before = flags(model)
    with act.freeze(model, "Linear") as result:
        assert not any(flags(model).values())
        assert set(result.parameters) == lin_names(model)
    assert flags(model) == before
    assert "restored" in repr(result)


def test_unfreeze_context_restores_after_exception() -> None:
    model = network()
    for p in model.parameters():
        p.requires_grad_(False)
    model.bulk[5].weight.requires_grad_(True)
    before = flags(model)
    with pytest.raises(RuntimeError, match="boom"), act.unfreeze(model, "#bulk > Linear"):
        assert flags(model)["bulk.0.weight"] and flags(model)["bulk.5.bias"]
        assert not flags(model)["bulk.2.seq.0.weight"]
        raise RuntimeError("boom")
    assert flags(model) == before


def test_restore_once_only() -> None:
    model = network()
    result = act.freeze(model, "#bulk > Linear")
    result.restore()
    assert all(flags(model).values())
    model.bulk[0].weight.requires_grad_(False)  # a later change by someone else
    result.restore()
    assert not model.bulk[0].weight.requires_grad


def test_shared_parameter_is_changed() -> None:
    model = nn.Module()
    model.a = nn.Linear(2, 2)
    model.b = nn.Linear(2, 2)
    model.b.weight = model.a.weight  # shared between a selected and an unselected module
    result = act.freeze(model, "#b")
    assert not model.a.weight.requires_grad and not model.b.weight.requires_grad
    assert model.a.bias.requires_grad and not model.b.bias.requires_grad
    assert result.parameters == ["a.weight", "b.bias"]  # named_parameters() names, each once


def test_shared_module_selected_at_second_place() -> None:
    model = Shared()
    with act.freeze(model, "#inner") as result:
        assert not model.a.weight.requires_grad and model.c.weight.requires_grad
        assert result.parameters == ["a.weight", "a.bias"]
    assert all(flags(model).values())


def test_freeze_nothing_selected_warns_and_changes_nothing() -> None:
    model = network()
    with pytest.warns(UserWarning, match=r"modsel.freeze: selector 'Conv2d' selects no module of Network"):
        result = act.freeze(model, "Conv2d")
    assert all(flags(model).values())
    assert result.parameters == []


def test_freeze_accepts_compiled_selector() -> None:
    model = network()
    with act.freeze(model, modsel.compile("SkipBlock > Sequential > Linear:first-child")) as result:
        assert result.parameters == [f"bulk.{b}.seq.0.{n}" for b in (2, 3, 4) for n in ("weight", "bias")]


# ---- param_groups -------------------------------------------------------------------------------
def by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for group in groups:
        assert len(group["params"]) == len(group["param_names"])
        for name in group["param_names"]:
            assert name not in out, f"{name} in two groups"
            out[name] = {k: v for k, v in group.items() if k not in ("params", "param_names")}
    return out


def test_param_groups_cascade_later_deeper_rule_wins() -> None:
    model = network()
    groups = act.param_groups(
        model, {"SkipBlock": {"lr": 0.1}, "SkipBlock Linear:first-child": {"lr": 0.2}}, lr=1.0, momentum=0.5
    )
    opts = by_name(groups)
    assert set(opts) == set(flags(model))
    assert opts["bulk.2.seq.0.weight"] == {"lr": 0.2, "momentum": 0.5}
    assert opts["bulk.2.seq.2.weight"] == {"lr": 0.1, "momentum": 0.5}
    assert opts["bulk.0.weight"] == {"lr": 1.0, "momentum": 0.5}
    assert [len(g["params"]) for g in groups] == [4, 6, 12]  # defaults, deeper rule, block rule


def test_param_groups_order_not_specificity() -> None:
    model = network()
    # the broader rule comes last, so it wins over the deeper one written before it
    opts = by_name(
        act.param_groups(model, {"SkipBlock Linear": {"lr": 0.2}, "SkipBlock": {"lr": 0.1}}, lr=1.0)
    )
    assert {o["lr"] for n, o in opts.items() if n.startswith("bulk.3.")} == {0.1}


def test_param_groups_merge_equal_options_and_exclude_frozen() -> None:
    model = network()
    model.bulk[0].weight.requires_grad_(False)
    groups = act.param_groups(model, {"#bulk > Linear": {"lr": 0.5}, "#4 Linear": {"lr": 0.5}}, lr=1.0)
    assert len(groups) == 2
    opts = by_name(groups)
    assert "bulk.0.weight" not in opts
    assert set(opts) == {n for n, f in flags(model).items() if f}
    assert opts["bulk.4.seq.4.bias"] == opts["bulk.5.weight"] == {"lr": 0.5}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_param_groups_optimizers_accept_and_step() -> None:
    model = network()
    groups = act.param_groups(
        model, {"SkipBlock": {"lr": 1e-2}, "#bulk > Linear": {"weight_decay": 0.0}}, lr=1e-3, weight_decay=0.1
    )
    before = model.bulk[2].seq[0].weight.detach().clone()
    opt = torch.optim.AdamW(groups)
    model(torch.randn(8, 1)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(model.bulk[2].seq[0].weight, before)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    assert opt.param_groups[0]["param_names"][0] == "bulk.0.weight"
    torch.optim.SGD(act.param_groups(model, {}, lr=0.1)).step()


def test_param_groups_empty_rule_warns_and_reserved_keys_fail() -> None:
    model = network()
    with pytest.warns(UserWarning, match="'Embedding' selects no module"):
        groups = act.param_groups(model, {"Embedding": {"lr": 1.0}}, lr=0.1)
    assert len(groups) == 1 and groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="'params'"):
        act.param_groups(model, {"Linear": {"params": []}})
    with pytest.raises(ValueError, match="'param_names'"):
        act.param_groups(model, {}, param_names=[])


def test_param_groups_shared_parameter_once() -> None:
    model = Shared()
    opts = by_name(act.param_groups(model, {"#inner": {"lr": 0.5}}, lr=1.0))
    assert opts == {"a.weight": {"lr": 0.5}, "a.bias": {"lr": 0.5}, "c.weight": {"lr": 1.0}}


# ---- hooks and tap ------------------------------------------------------------------------------
def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in model.modules()
    )


def test_hooks_receive_path_and_args_and_are_removed() -> None:
    model = network()
    seen: list[tuple[str, str]] = []
    with act.hooks(
        model,
        "#bulk > Linear",
        forward=lambda path, m, inputs, output: seen.append(("fwd", path)),
        forward_pre=lambda path, m, inputs: seen.append(("pre", path)),
        backward=lambda path, m, grad, key: seen.append(("bwd", path)),
    ) as hooked:
        assert hooked == ["bulk.0", "bulk.5"]
        model(torch.randn(4, 1, requires_grad=True)).sum().backward()
    assert seen == [
        ("pre", "bulk.0"),
        ("fwd", "bulk.0"),
        ("pre", "bulk.5"),
        ("fwd", "bulk.5"),
        ("bwd", "bulk.5"),
        ("bwd", "bulk.0"),
    ]
    assert no_hooks(model)
    model(torch.randn(4, 1))
    assert len(seen) == 6


def test_hooks_removed_after_exception() -> None:
    model = network()
    with (
        pytest.raises(KeyError),
        act.hooks(model, "Linear", forward=lambda *a: None, backward=lambda *a: None),
    ):
        assert not no_hooks(model)
        raise KeyError("x")
    assert no_hooks(model)


def test_hooks_need_a_callback_and_warn_when_empty() -> None:
    model = network()
    with pytest.raises(TypeError, match="at least one"), act.hooks(model, "Linear"):
        pass
    with pytest.warns(UserWarning, match="modsel.hooks"), act.hooks(model, "GRU", forward=print) as hooked:
        assert hooked == []


def test_tap_equals_direct_computation() -> None:
    model = network()
    x = torch.randn(5, 1)
    with act.tap(model, "SkipBlock, #bulk > Linear:last-child") as out:
        y = model(x)
        assert list(out) == ["bulk.2", "bulk.3", "bulk.4", "bulk.5"]
    assert no_hooks(model)
    h = model.bulk[1](model.bulk[0](x))
    for i in (2, 3, 4):
        h = model.bulk[i](h)
        assert torch.equal(out[f"bulk.{i}"], h)
    assert torch.equal(out["bulk.5"], y)
    model(torch.randn(5, 1))
    assert torch.equal(out["bulk.5"], y)  # filled only inside the block


def test_tap_removed_after_exception() -> None:
    model = network()
    with pytest.raises(ValueError), act.tap(model, "*"):
        raise ValueError
    assert no_hooks(model)


# ---- paths and to_regex -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transformer() -> nn.Transformer:
    return nn.Transformer(num_encoder_layers=2, num_decoder_layers=2, d_model=16, nhead=2, dim_feedforward=16)


@pytest.mark.parametrize(
    "css",
    [
        "Linear",
        ".Linear",
        "LayerNorm",
        "TransformerEncoderLayer > Linear",
        "#decoder #1 .Linear",
        "MultiheadAttention",
        "#layers > *",
        "*",
        ":root",
        "Dropout:not(#dropout)",
        "#encoder, #decoder #norm",
    ],
)
def test_to_regex_round_trip(transformer: nn.Transformer, css: str) -> None:
    selected = act.paths(transformer, css)
    assert selected, css
    pattern = re.compile(act.to_regex(transformer, css))
    got = [path for path, _ in transformer.named_modules() if pattern.fullmatch(path)]
    assert got == selected


def test_to_regex_shares_prefixes_and_escapes() -> None:
    model = nn.ModuleDict({"a+b": nn.Linear(1, 1), "c": nn.Sequential(nn.ReLU(), nn.ReLU())})
    assert act.to_regex(model, "ReLU") == r"c\.(?:0|1)"
    assert act.to_regex(model, "Linear") == r"a\+b"
    assert re.fullmatch(act.to_regex(model, "*"), "") and re.fullmatch(act.to_regex(model, "*"), "c.1")
    with pytest.warns(UserWarning, match="modsel.to_regex: selector 'GRU' selects no module"):
        nothing = act.to_regex(model, "GRU")
    assert nothing == "(?!)"
    assert not re.fullmatch(nothing, "")


def test_to_regex_every_place_of_a_shared_module() -> None:
    model = Shared()
    assert act.paths(model, "#inner") == ["b.inner"]
    pattern = act.to_regex(model, "#inner")
    places = [p for p, _ in model.named_modules(remove_duplicate=False)]
    assert [p for p in places if re.fullmatch(pattern, p)] == ["a", "b.inner"]


def test_param_groups_names_match_named_parameters(transformer: nn.Transformer) -> None:
    groups = act.param_groups(
        transformer, {"#encoder": {"lr": 0.1}, "MultiheadAttention": {"lr": 0.2}}, lr=1.0
    )
    names = [name for group in groups for name in group["param_names"]]
    assert sorted(names) == sorted(name for name, _ in transformer.named_parameters())
    tensors = {name: p for name, p in transformer.named_parameters()}
    for group in groups:
        assert all(p is tensors[n] for n, p in zip(group["param_names"], group["params"], strict=True))
    opts = by_name(groups)
    assert opts["encoder.layers.0.self_attn.in_proj_weight"]["lr"] == 0.2
    assert opts["encoder.layers.0.linear1.weight"]["lr"] == 0.1
    assert opts["decoder.layers.1.linear1.weight"]["lr"] == 1.0


def test_param_groups_module_shared_into_a_selected_block() -> None:
    model = nn.Module()
    model.first = nn.Linear(2, 2)
    model.block = nn.Sequential(nn.ReLU(), model.first)  # the same Linear, second place inside #block
    opts = by_name(act.param_groups(model, {"#block": {"lr": 0.5}}, lr=1.0))
    assert opts == {"first.weight": {"lr": 0.5}, "first.bias": {"lr": 0.5}}


# ---- the same on a stylesheet's selection (ModuleSelector.freeze / hook_forward / hook_backward) --
def test_tree_freeze_uses_the_stylesheet_selection() -> None:
    model = network()
    tree = modsel.select(model, "SkipBlock #0: tune\n#bulk > Linear: head")
    with tree.freeze("tune") as frozen:
        assert frozen.parameters == [f"bulk.{b}.seq.0.{w}" for b in (2, 3, 4) for w in ("weight", "bias")]
        assert not model.bulk[2].seq[0].weight.requires_grad
        assert model.bulk[0].weight.requires_grad
    assert all(p.requires_grad for p in model.parameters())
    with tree.freeze():  # every selected module
        assert not model.bulk[0].weight.requires_grad and not model.bulk[5].bias.requires_grad
        assert model.bulk[2].seq[2].weight.requires_grad
    assert all(p.requires_grad for p in model.parameters())


def test_tree_hooks_are_removed_after_the_block() -> None:
    model = network()
    tree = modsel.select(model, "SkipBlock: watch")
    seen: list[str] = []
    grads: list[str] = []
    with (
        tree.hook_forward(lambda path, m, i, o: seen.append(path)),
        tree.hook_backward(lambda path, m, grad, key: grads.append(path)),
    ):
        model(torch.randn(4, 1)).sum().backward()
    assert seen == ["bulk.2", "bulk.3", "bulk.4"]
    assert sorted(grads) == ["bulk.2", "bulk.3", "bulk.4"]
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_a_backward_written_for_torchs_full_backward_hook_is_refused_before_hooking() -> None:
    # (path, module, grad_input, grad_output) would take the key for grad_output silently
    model = nn.Sequential(nn.Linear(2, 2))
    with (
        pytest.raises(TypeError, match=r"must take \(path, module, grad, key\)"),
        modsel.hooks(model, "Linear", backward=lambda path, module, grad_input, grad_output: None),
    ):
        pass
    assert not model[0]._forward_hooks
    seen = []
    with modsel.hooks(model, "Linear", backward=lambda path, module, grad, key: seen.append((path, key))):
        model(torch.ones(1, 2)).sum().backward()
    assert seen == [("0", ())]
