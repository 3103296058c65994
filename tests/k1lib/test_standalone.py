"""``k1lib.find_lr`` and ``k1lib.loss_landscape``: ParamFinder's range test and LossLandscape's
surfaces without a Learner give what the callbacks give on the same model, data and seed, put
everything back bitwise, work on Hugging Face mappings with the model's own loss, and refuse
bad input before touching anything."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

import k1lib
from tests.real_models import llama, token_batch

from .helpers import assert_same

matplotlib.use("Agg")

CLOSE = {"resolution": 5, "ranges": (0.5, 2.0), "pairs": 2, "seed": 3}


def mse(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return ((y - yb) ** 2).mean()


def model_and_data(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, k1lib.data.DataLoader]:
    """A small MLP with dropout (the sweep draws from torch's generator), Adam with moments
    (a few steps taken) and a shuffling loader with its own generator."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(48, 2)
    loader = k1lib.data.DataLoader((x, x.sin().sum(1, keepdim=True)), 8, seed=3)
    for xb, yb in list(loader)[:3]:
        mse(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, loader


def snapshot(model: nn.Module, opt: torch.optim.Optimizer, loader: Any = None) -> dict[str, Any]:
    """Copies of everything find_lr and loss_landscape must put back, to compare bitwise."""
    params = list(model.parameters())
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "requires_grad": [p.requires_grad for p in params],
        "modes": [m.training for m in model.modules()],
        "opt_state": {i: copy.deepcopy(dict(opt.state[p])) for i, p in enumerate(params) if p in opt.state},
        "groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "rng": torch.get_rng_state(),
        "loader_rng": None if loader is None else loader._generator.get_state(),
    }


# ---- find_lr -----------------------------------------------------------------------------------------


def test_find_lr_is_the_learners_param_finder() -> None:
    model, opt, loader = model_and_data()
    l = k1lib.Learner()
    l.model, l.opt, l.data, l.lossF = model, opt, k1lib.data.Data(loader, loader), mse
    l.cbs.remove("ProgressBar")
    torch.manual_seed(5)
    l.ParamFinder.run(start=1e-4, end=1e3)

    model, opt, loader = model_and_data()
    torch.manual_seed(5)
    result = k1lib.find_lr(model, opt, loader, mse, start=1e-4, end=1e3)
    assert result.diverged and result.param == "lr"
    assert result.params == l.ParamFinder.params and len(result.params) < 99
    assert result.losses == l.ParamFinder.losses  # dropout and shuffling drew the same numbers
    assert result.suggestion == l.ParamFinder.suggestion
    ours = result.plot().plot().axes[0].lines
    theirs = l.ParamFinder.plot(start=1e-4, end=1e3).plot().axes[0].lines
    assert [list(line.get_ydata()) for line in ours[:2]] == [list(line.get_ydata()) for line in theirs[:2]]
    assert repr(result).startswith("RangeTestResult: lr from 0.0001 to ")


def test_find_lr_restores_the_model_the_optimizer_and_the_generators() -> None:
    model, opt, loader = model_and_data()
    model[2].eval()  # a submodule's own mode is kept
    mse(model(torch.randn(4, 2)), torch.zeros(4, 1)).backward()  # pending grads too
    before = snapshot(model, opt, loader)
    k1lib.find_lr(model, opt, loader, mse, start=1e-4, end=1e3)
    assert_same(before, snapshot(model, opt, loader))


def test_find_lr_restores_everything_after_an_exception_mid_sweep() -> None:
    model, opt, loader = model_and_data()
    before = snapshot(model, opt, loader)
    calls = [0]

    def failing(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt
        return mse(y, yb)

    with pytest.raises(KeyboardInterrupt):
        k1lib.find_lr(model, opt, loader, failing)
    assert_same(before, snapshot(model, opt, loader))


def test_find_lr_on_a_hugging_face_model_uses_its_own_loss() -> None:
    model = llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [token_batch(seed=i) for i in range(3)]  # mappings: both xb and yb
    before = snapshot(model, opt)
    with pytest.warns(UserWarning, match="did not diverge"):
        result = k1lib.find_lr(model, opt, loader, samples=12, start=1e-6, end=1e-4)
    assert len(result.params) == 12 and result.suggestion == result.params[-1] / 40
    with torch.no_grad():
        first = model(**loader[0]).loss.item()  # in train mode, as the sweep's first batch
    assert result.losses[0] == pytest.approx(first, rel=1e-6)
    assert_same(before, snapshot(model, opt))


def test_find_lr_reads_a_plain_iterator_once() -> None:
    model, opt, loader = model_and_data()
    with pytest.warns(UserWarning, match="did not diverge"):
        result = k1lib.find_lr(model, opt, iter(list(loader)), mse, start=1e-4, end=1e3)
    assert len(result.params) == len(loader)  # one epoch: the iterator is then spent


def empty() -> Iterator[Any]:
    yield from ()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"model": "model"}, TypeError, "find_lr: model must be a torch.nn.Module, got str"),
        ({"opt": None}, TypeError, "find_lr: opt must be a torch.optim.Optimizer"),
        ({"lossF": 3}, TypeError, "find_lr: lossF must be callable"),
        ({"loader": 5}, TypeError, "find_lr: loader must be an iterable of batches"),
        ({"loader": torch.zeros(4, 2)}, TypeError, "find_lr: loader must be an iterable"),
        ({"loader": []}, ValueError, r"find_lr: the loader \(list\) has no batches"),
        ({"loader": empty()}, ValueError, r"find_lr: the loader \(generator\) gave no batch"),
        ({"samples": 5}, ValueError, "samples must be an int of at least 10"),
        ({"start": 1.0, "end": 0.1}, ValueError, "start must be below end"),
        ({"param": "lrr"}, ValueError, r"find_lr: .* no hyperparameter 'lrr'; did you mean 'lr'\?"),
        ({"param": "betas"}, ValueError, "find_lr sweeps a number; param group 0's 'betas' is tuple"),
    ],
)
def test_find_lr_bad_input(change: dict[str, Any], error: type[Exception], message: str) -> None:
    model, opt, loader = model_and_data()
    before = snapshot(model, opt, loader)
    args = {"model": model, "opt": opt, "loader": loader, "lossF": mse, **change}
    with pytest.raises(error, match=message):
        k1lib.find_lr(**args)
    assert_same(before, snapshot(model, opt, loader))


def test_find_lr_refuses_an_optimizer_of_another_model() -> None:
    model, _, loader = model_and_data()
    other = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"find_lr: 2 of the 2 tensors opt optimizes are not parameters"):
        k1lib.find_lr(model, other, loader, mse)


# ---- loss_landscape ------------------------------------------------------------------------------------


def bn_model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model


def landscape_learner(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
    l = k1lib.Learner()
    l.model, l.data, l.lossF = model, k1lib.data.Data([batch], [batch]), mse
    l.opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return l


def assert_same_surfaces(ours: list[Any], theirs: list[Any]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.pair, a.radius, a.engine) == (b.pair, b.radius, b.engine)
        assert np.array_equal(a.xs, b.xs) and np.array_equal(a.ys, b.ys)
        assert np.array_equal(a.losses, b.losses, equal_nan=True)


@pytest.mark.parametrize("engine", ["vmap", "loop"])
@pytest.mark.parametrize("filterNorm", [False, True])
def test_loss_landscape_is_the_callbacks_compute(engine: str, filterNorm: bool) -> None:
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    batch = (x, x.sum(1, keepdim=True))
    model = bn_model()
    model[0].weight.requires_grad_(False)  # not trainable: not moved
    l = landscape_learner(copy.deepcopy(model), batch)
    theirs = l.LossLandscape.compute(engine=engine, filterNorm=filterNorm, **CLOSE)
    before = snapshot(model, torch.optim.SGD(model.parameters()))
    result = k1lib.loss_landscape(model, batch, mse, engine=engine, filterNorm=filterNorm, **CLOSE)
    assert_same(before, snapshot(model, torch.optim.SGD(model.parameters())))
    assert_same_surfaces(result.surfaces, theirs)
    assert (result.centre, result.engine) == (l.LossLandscape.centre, engine)
    assert result.perturbed == l.LossLandscape.perturbed and "0.weight" not in result.perturbed
    assert result.moved == l.LossLandscape.moved == "5 of 6 parameter tensors (trainable)"


def test_loss_landscape_params_all_and_a_selector() -> None:
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    batch = (x, x.sum(1, keepdim=True))
    model = bn_model()
    l = landscape_learner(copy.deepcopy(model), batch)
    l.css = "Linear: LossLandscape"
    theirs = l.LossLandscape.compute(engine="loop", params="css", **CLOSE)
    result = k1lib.loss_landscape(model, batch, mse, engine="loop", params="Linear", **CLOSE)
    assert_same_surfaces(result.surfaces, theirs)
    assert result.perturbed == ["0.weight", "0.bias", "3.weight", "3.bias"] == l.LossLandscape.perturbed
    assert result.moved == "4 of 6 parameter tensors (css 'Linear')"
    everything = k1lib.loss_landscape(model, batch, mse, engine="loop", params="all", **CLOSE)
    assert_same_surfaces(everything.surfaces, l.LossLandscape.compute(engine="loop", params="all", **CLOSE))


def test_loss_landscape_plot_is_the_callbacks_figure() -> None:
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    batch = (x, x.sum(1, keepdim=True))
    result = k1lib.loss_landscape(bn_model(), batch, mse, engine="loop", **CLOSE)
    p = result.plot()
    assert isinstance(p, k1lib.viz.SliceablePlot)
    assert len(p.plot().axes) == 4 and len(p[1:].plot().axes) == 2  # slices pick ranges
    assert "moved: 6 of 6 parameter tensors (trainable)" in p.plot().get_suptitle()
    assert repr(result).startswith("Landscape: 4 surfaces (2 direction pairs x ranges 0.5, 2)")


def test_loss_landscape_on_a_hugging_face_model_with_its_own_loss() -> None:
    model = llama().train()
    batch = token_batch()
    before = snapshot(model, torch.optim.SGD(model.parameters()))
    # "loop": vmap has no batching rule for CPU attention and says so (a warning made an error)
    result = k1lib.loss_landscape(model, batch, resolution=3, ranges=(1.0,), pairs=1, engine="loop")
    assert_same(before, snapshot(model, torch.optim.SGD(model.parameters())))
    with torch.no_grad():
        direct = model.eval()(**batch).loss.item()
    assert result.centre == pytest.approx(direct, rel=1e-5)
    losses = result.surfaces[0].losses
    assert losses.shape == (3, 3) and losses[1, 1] == pytest.approx(direct, rel=1e-5)
    assert (losses != losses[1, 1]).any()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"model": None}, TypeError, "loss_landscape: model must be a torch.nn.Module, got NoneType"),
        ({"batch": torch.zeros(4, 2)}, TypeError, r"loss_landscape: batch must be a pair .* shape \(4, 2\)"),
        ({"lossF": "mse"}, TypeError, "loss_landscape: lossF must be callable"),
        ({"resolution": 1}, ValueError, "loss_landscape: resolution must be an int >= 2, got 1"),
        ({"engine": "fast"}, ValueError, "loss_landscape: engine must be one of 'auto', 'vmap', 'loop'"),
        ({"ranges": ()}, ValueError, "loss_landscape: ranges must be positive numbers"),
        ({"params": ["0.weight"]}, TypeError, "loss_landscape: params must be 'trainable', 'all' or a"),
        ({"params": "Conv2d"}, ValueError, "params='Conv2d' matches no module with parameters"),
        ({"params": "css"}, ValueError, r"there is no l.css here: give the selector itself"),
        ({"params": "Linear["}, ValueError, "Linear"),  # modsel's syntax error, a ValueError
    ],
)
def test_loss_landscape_bad_input(change: dict[str, Any], error: type[Exception], message: str) -> None:
    model = bn_model()
    x = torch.randn(4, 2)
    args = {"model": model, "batch": (x, x.sum(1, keepdim=True)), "lossF": mse, **change}
    before = snapshot(model, torch.optim.SGD(model.parameters()))
    with pytest.raises(error, match=message):
        k1lib.loss_landscape(**args)
    assert_same(before, snapshot(model, torch.optim.SGD(model.parameters())))


def test_loss_landscape_of_a_frozen_model_says_how_to_move_it() -> None:
    model = bn_model().requires_grad_(False)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="all 6 parameter tensors of Sequential have requires_grad=False"):
        k1lib.loss_landscape(model, (x, x), mse)
    moved = k1lib.loss_landscape(model, (x, x), mse, params="all", resolution=2, ranges=(1,)).perturbed
    assert len(moved) == 6


def test_both_are_exported() -> None:
    assert {"find_lr", "loss_landscape"} <= set(k1lib.__all__)
    assert k1lib.loss_landscape is k1lib.callbacks.loss_landscape.loss_landscape
    assert k1lib.find_lr is k1lib.callbacks.param_finder.find_lr


# ---- the README's recipe ---------------------------------------------------------------------------


def test_the_readme_recipe() -> None:
    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    start = text.index("### Range test and loss landscape without a Learner")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    found, land, opt = namespace["found"], namespace["land"], namespace["opt"]
    assert found.diverged and found.suggestion == found.params[-1] / 40
    assert [g["lr"] for g in opt.param_groups] == [found.suggestion]
    assert land.surfaces[0].losses.shape == (21, 21) and len(land.surfaces) == 4
    assert land.centre == pytest.approx(land.surfaces[0].losses[10, 10], rel=1e-5)


def test_find_lr_refuses_what_it_cannot_sweep_before_anything_runs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    data = [(torch.randn(8, 2), torch.randn(8, 1)) for _ in range(12)]
    mse = lambda y, yb: ((y - yb) ** 2).mean()  # noqa: E731
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="needs a closure"):
        k1lib.find_lr(model, torch.optim.LBFGS(model.parameters()), data, mse)
    with pytest.raises(ValueError, match=r"one number.*\(8, 1\)"):
        k1lib.find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), data, lambda y, yb: (y - yb) ** 2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_find_lr_warns_when_the_loss_is_not_a_number_from_the_start() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1))
    data = [(torch.randn(8, 2), torch.randn(8, 1)) for _ in range(12)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="not a finite number"):
        k1lib.find_lr(model, opt, data, lambda y, yb: ((y - yb) ** 2).mean() * float("nan"))


def test_loss_landscape_fits_its_grid_to_the_budget_by_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from k1lib.callbacks import loss_landscape as landscape_module

    monkeypatch.setattr(landscape_module, "_seconds_per_point", lambda ev, engine, radius, budget: 0.025)
    model, _, loader = model_and_data()
    x, y = next(iter(loader))
    result = k1lib.loss_landscape(model, (x, y), mse, budget=100)  # 8 x 21^2 x 25 ms = 88 s
    assert {s.losses.shape for s in result.surfaces} == {(21, 21)}
    assert "loss_landscape: 21 x 21 points a surface to fit about 100 s" in capsys.readouterr().out
