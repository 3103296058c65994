"""k1lib on real models (issue 13): LossLandscape on a PEFT LoRA model moves the adapters, not
the frozen base weights (point 7); ``l.run`` and ``l.load`` refuse an optimizer built for
another model, as after re-running a notebook cell that sets ``l.model`` (point 13)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import matplotlib
import pytest
import torch
from torch import Tensor, nn

from .. import real_models
from .helpers import learner, readme_learner
from .hf_models import lm_learner, tiny_lm

matplotlib.use("Agg")

SMALL = {"resolution": 3, "ranges": (1.0,), "pairs": 1}  # 9 points: enough to move every weight


def lora_learner() -> Any:
    """``real_models.lora()`` (a 2-layer Llama, adapters on q_proj and v_proj) on mapping batches."""
    l = lm_learner(real_models.lora())
    l.cbs.remove("ParamFinder")
    return l


class Watch:
    """A forward pre-hook on the model that, at every forward pass of the landscape, checks the
    parameters it must not move are the very tensors they were, with the same values, and
    notes which of the others are not (the loop engine swaps their ``.data``)."""

    def __init__(self, model: nn.Module, moved: set[str]) -> None:
        self.kept = [
            (
                model.get_submodule(name.rpartition(".")[0]),
                name.rpartition(".")[2],
                p,
                p.detach().clone(),
                name,
            )
            for name, p in model.named_parameters()
            if name not in moved
        ]
        self.moving = [(name, p, p.detach().clone()) for name, p in model.named_parameters() if name in moved]
        self.calls = 0
        self.changed: set[str] = set()
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.calls += 1
        for owner, attr, param, saved, name in self.kept:
            now = getattr(owner, attr)
            assert now is param and torch.equal(now.detach(), saved), f"{name} moved"
        for name, param, saved in self.moving:
            if param.data.shape == saved.shape and not torch.equal(param.data, saved):
                self.changed.add(name)


def state(model: nn.Module) -> dict[str, tuple[Tensor, int, bool]]:
    return {n: (p.detach().clone(), p.data_ptr(), p.requires_grad) for n, p in model.named_parameters()}


def assert_restored(before: dict[str, tuple[Tensor, int, bool]], model: nn.Module) -> None:
    after = state(model)
    assert before.keys() == after.keys()
    for name, (value, ptr, flag) in before.items():
        v2, ptr2, flag2 = after[name]
        assert ptr == ptr2 and flag == flag2, name
        assert torch.equal(value.view(torch.uint8), v2.view(torch.uint8)), name  # bitwise


# ---- LossLandscape on LoRA (point 7) -------------------------------------------------------------


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_lora_landscape_moves_only_the_adapters(engine: str) -> None:
    l = lora_learner()
    model = l.model
    named = list(model.named_parameters())
    trainable = [n for n, p in named if p.requires_grad]
    assert 0 < len(trainable) < len(named) and all("lora_" in n for n in trainable)
    before = state(model)
    watch = Watch(model, set(trainable))
    try:
        with warnings.catch_warnings():
            # vmap runs CPU attention through its slow generic batching rule, and says so
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            fig = l.LossLandscape.plot(engine=engine, **SMALL).plot()
    finally:
        watch.handle.remove()
    cb = l.LossLandscape
    assert cb.engine == engine and watch.calls > 0
    assert cb.perturbed == trainable
    if engine == "loop":  # the adapters did move
        assert watch.changed == set(trainable)
    assert_restored(before, model)
    moved = f"{len(trainable)} of {len(named)} parameter tensors (trainable)"
    assert cb.moved == moved
    assert fig._suptitle is not None and fig._suptitle.get_text().endswith(f"moved: {moved}")
    losses = cb.surfaces[0].losses
    assert losses[1, 1] == pytest.approx(cb.centre) and (losses != losses[1, 1]).any()


def test_lora_landscape_all_moves_the_frozen_weights_too() -> None:
    l = lora_learner()
    model = l.model
    names = [n for n, _ in model.named_parameters()]
    before = state(model)
    watch = Watch(model, set(names))
    try:
        fig = l.LossLandscape.plot(engine="loop", params="all", **SMALL).plot()
    finally:
        watch.handle.remove()
    assert l.LossLandscape.perturbed == names and watch.changed == set(names)
    assert fig._suptitle.get_text().endswith(f"moved: {len(names)} of {len(names)} parameter tensors (all)")
    assert_restored(before, model)


def test_lora_landscape_css_moves_the_selected_modules() -> None:
    l = lora_learner()
    l.css = "#lora_B: LossLandscape"
    l.LossLandscape.compute(params="css", engine="loop", **SMALL)
    perturbed = l.LossLandscape.perturbed
    assert perturbed and all(".lora_B." in n for n in perturbed)
    total = len(list(l.model.named_parameters()))
    assert l.LossLandscape.moved == f"{len(perturbed)} of {total} parameter tensors (l.css: LossLandscape)"
    l.css = "#lora_A: HookModule"
    with pytest.raises(
        ValueError, match=r"params='css', and l\.css gives no module with parameters the prop"
    ):
        l.LossLandscape.compute(params="css", engine="loop", **SMALL)


def test_a_model_with_everything_frozen_is_a_clear_error() -> None:
    l = lm_learner(tiny_lm())
    l.model.requires_grad_(False)
    with pytest.raises(
        ValueError, match=r"^LossLandscape: all \d+ parameter tensors of LlamaForCausalLM are frozen"
    ):
        l.LossLandscape.plot(**SMALL)
    l.LossLandscape.compute(params="all", engine="loop", **SMALL)  # the way out the message names
    assert len(l.LossLandscape.perturbed) == len(list(l.model.parameters()))


def test_the_readme_network_moves_everything_by_default() -> None:
    l = readme_learner()
    fig = l.LossLandscape.plot(**SMALL).plot()
    n = len(list(l.model.parameters()))
    assert l.LossLandscape.moved == f"{n} of {n} parameter tensors (trainable)"
    assert fig._suptitle.get_text().endswith(f"moved: {n} of {n} parameter tensors (trainable)")


# ---- an optimizer of another model (point 13) ----------------------------------------------------


def test_run_refuses_an_optimizer_built_for_the_previous_model() -> None:
    l = learner()
    l.model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))  # the cell run again
    before = copy.deepcopy(l.model.state_dict())
    with pytest.raises(RuntimeError) as raised:
        l.run(1)
    assert str(raised.value) == (
        "Learner.run: none of the 4 tensors l.opt optimizes is a parameter of l.model: l.opt was "
        "built for another model (was l.model set again after l.opt?), so the run would leave "
        "l.model untrained. Rebuild it after setting l.model, e.g. "
        "l.opt = optim.Adam(l.model.parameters(), lr=1e-3)"
    )
    assert l.Loss.train == []  # refused before startRun
    for k, v in l.model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(RuntimeError, match=r"is a parameter of l\.model"):
        l.ParamFinder.plot(samples=10)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)  # the fix
    l.run(1)
    assert any(not torch.equal(v, before[k]) for k, v in l.model.state_dict().items())


def test_an_optimizer_with_a_tensor_from_outside_the_model_is_refused() -> None:
    l = learner()
    scale = nn.Parameter(torch.ones(()))
    l.opt = torch.optim.SGD([*l.model.parameters(), scale], lr=0.1)
    with pytest.raises(
        RuntimeError, match=r"1 of the 5 tensors l\.opt optimizes .* must be registered on it"
    ):
        l.run(1)


def test_an_optimizer_over_some_of_the_models_parameters_trains() -> None:
    l = learner()
    first = l.model[0]
    l.opt = torch.optim.SGD(first.parameters(), lr=0.1)
    last = l.model[2].weight.detach().clone()
    l.run(1)
    assert torch.equal(l.model[2].weight, last)  # not in the optimizer: not stepped
    assert len(l.Loss.train) == 3


@pytest.mark.parametrize("wrap", ["compile", "DataParallel"])
def test_a_wrapped_model_is_the_same_model(wrap: str) -> None:
    l = learner()
    l.model = torch.compile(l.model, backend="eager") if wrap == "compile" else nn.DataParallel(l.model)
    l.check_ready()  # the wrapper holds the parameters l.opt was built over


def test_a_hugging_face_model_set_again_is_refused() -> None:
    l = lm_learner()
    l.model = tiny_lm(seed=1)
    with pytest.raises(RuntimeError, match=r"^Learner\.run: none of the \d+ tensors l\.opt optimizes"):
        l.run(1)
