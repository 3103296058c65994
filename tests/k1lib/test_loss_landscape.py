"""LossLandscape: batched values equal a plain loop, the model is bitwise as before (also after an
exception), filter normalisation, the fallback for models vmap cannot run, progress, the figure."""

from __future__ import annotations

import copy
import io
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import matplotlib
import pytest
import torch
from torch import nn

import k1lib
from k1lib.callbacks import EVENTS, LossLandscape
from k1lib.callbacks import loss_landscape as landscape_module
from k1lib.callbacks.loss_landscape import directions

from .helpers import Batches, batches, readme_learner

matplotlib.use("Agg")


def readme_batch(l: Any, samples: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    xb, yb = l.data.valid.x[:samples], l.data.valid.y[:samples]
    return xb[:, None].float(), yb.float()


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


def mse(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return ((y - yb) ** 2).mean()


def small_learner(model: nn.Module, data: Batches | None = None) -> Any:
    l = k1lib.Learner()
    l.model = model
    l.data = data or batches(train=1, valid=2, size=16)
    l.opt = torch.optim.SGD(model.parameters(), lr=0.1)
    l.lossF = mse
    return l


def bn_learner() -> Any:
    torch.manual_seed(1)
    model = BNNet()
    bn = model.seq[1]
    assert isinstance(bn, nn.BatchNorm1d)
    with torch.no_grad():  # running statistics that matter
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(7)
    return small_learner(model.eval())


def reference(
    model: nn.Module,
    lossF: Callable[[Any, Any], torch.Tensor],
    xb: Any,
    yb: Any,
    pair: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    a: float,
    b: float,
) -> float:
    """The plain loop: copy the weights moved along the directions into a copy, forward, loss
    (parameters without a direction stay)."""
    m = copy.deepcopy(model).eval()
    d1, d2 = pair
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name in d1:
                p.copy_(p + a * d1[name] + b * d2[name])
        return float(lossF(m(xb), yb))


def check_against_loop(l: Any, xb: Any, yb: Any, filterNorm: bool = False, seed: int = 0) -> None:
    cb = l.LossLandscape
    pairs = directions(l.model, pairs=2, seed=seed, filterNorm=filterNorm, params=cb.perturbed)
    n = len(cb.surfaces[0].xs)
    for s in cb.surfaces:
        for i, j in [(0, 0), (n - 1, 1), (n // 2, n - 1), (2, 3)]:
            want = reference(l.model, l.lossF, xb, yb, pairs[s.pair], s.xs[i], s.ys[j])
            assert s.losses[i, j] == pytest.approx(want, rel=1e-5), (s.pair, s.radius, i, j)


# ---- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("filterNorm", [False, True])
def test_vectorised_values_equal_a_plain_loop_on_the_readme_network(filterNorm: bool) -> None:
    l = readme_learner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l.LossLandscape.plot(resolution=9, engine="vmap", filterNorm=filterNorm)
    cb = l.LossLandscape
    assert cb.engine == "vmap" and all(s.engine == "vmap" for s in cb.surfaces)
    assert [(s.pair, s.radius) for s in cb.surfaces] == [(p, r) for p in (0, 1) for r in (0.1, 0.32, 1, 3.2)]
    check_against_loop(l, *readme_batch(l), filterNorm=filterNorm)


def test_vectorised_values_equal_a_plain_loop_with_batchnorm_buffers() -> None:
    l = bn_learner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l.LossLandscape.plot(resolution=7, engine="vmap", ranges=(0.5, 2))
    assert l.LossLandscape.engine == "vmap"
    xb, yb = l.data.valid[0]
    check_against_loop(l, xb, yb)


def test_loop_engine_gives_the_same_values() -> None:
    l = readme_learner()
    l.LossLandscape.plot(resolution=7, ranges=(1,), pairs=1, engine="vmap")
    batched = l.LossLandscape.surfaces[0].losses
    l.LossLandscape.plot(resolution=7, ranges=(1,), pairs=1, engine="loop")
    assert l.LossLandscape.engine == "loop"
    assert l.LossLandscape.surfaces[0].losses == pytest.approx(batched, rel=1e-5)


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_the_centre_is_the_loss_at_the_current_weights(engine: str) -> None:
    l = readme_learner()
    l.LossLandscape.plot(resolution=5, ranges=(0.1, 3.2), pairs=1, engine=engine)
    xb, yb = readme_batch(l)
    with torch.no_grad():
        want = float(l.lossF(l.model(xb), yb))
    assert l.LossLandscape.centre == want
    for s in l.LossLandscape.surfaces:
        assert s.xs[2] == s.ys[2] == 0.0
        assert s.losses[2, 2] == pytest.approx(want, rel=1e-6)
        assert s.xs[0] == -s.radius and s.xs[-1] == s.radius


def test_batch_size_takes_that_many_validation_samples_across_batches() -> None:
    l = readme_learner()
    l.LossLandscape.plot(resolution=3, ranges=(1,), pairs=1, batchSize=100)
    xb, yb = readme_batch(l, 100)
    with torch.no_grad():
        assert l.LossLandscape.centre == float(l.lossF(l.model(xb), yb))


def test_modify_output_is_applied_before_the_loss() -> None:
    l = readme_learner()
    l.cbs.withModifyOutput(lambda y: 2 * y)
    l.LossLandscape.plot(resolution=3, ranges=(1,), pairs=1, engine="vmap")
    xb, yb = readme_batch(l)
    with torch.no_grad():
        want = float(l.lossF(2 * l.model(xb), yb))
    assert l.LossLandscape.surfaces[0].losses[1, 1] == pytest.approx(want, rel=1e-6)


def test_same_seed_same_surfaces_other_seed_other_surfaces() -> None:
    l = readme_learner()
    cb = l.LossLandscape
    cb.plot(resolution=5, ranges=(1,), pairs=1, seed=3)
    first = cb.surfaces[0].losses
    cb.plot(resolution=5, ranges=(1,), pairs=1, seed=3)
    assert (cb.surfaces[0].losses == first).all()
    cb.plot(resolution=5, ranges=(1,), pairs=1, seed=4)
    assert not (cb.surfaces[0].losses == first).all()


# ---- which parameters move (issue 13, point 7) ---------------------------------------------------


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_trainable_leaves_out_frozen_parameters_and_those_l_css_freezes(engine: str) -> None:
    l = readme_learner()
    l.css = "#bulk > #0: frozen"  # frozen during runs only: requires_grad stays True here
    l.model.bulk[5].bias.requires_grad_(False)
    all_names = [n for n, _ in l.model.named_parameters()]
    l.LossLandscape.plot(resolution=5, ranges=(0.5, 2), engine=engine)
    cb = l.LossLandscape
    moved = [n for n in all_names if n not in ("bulk.0.weight", "bulk.0.bias", "bulk.5.bias")]
    assert cb.perturbed == moved and l.model.bulk[0].weight.requires_grad
    assert cb.moved == f"{len(moved)} of {len(all_names)} parameter tensors (trainable)"
    xb, yb = readme_batch(l)
    pairs = directions(l.model, pairs=2, params=cb.perturbed)
    assert set(pairs[0][0]) == set(moved)
    n = len(cb.surfaces[0].xs)
    for s in cb.surfaces:
        for i, j in [(0, 0), (n - 1, 1), (2, 3)]:
            want = reference(l.model, l.lossF, xb, yb, pairs[s.pair], s.xs[i], s.ys[j])
            assert s.losses[i, j] == pytest.approx(want, rel=1e-5), (s.pair, s.radius, i, j)


def test_all_moves_every_parameter_and_css_the_selected_modules() -> None:
    l = readme_learner()
    l.model.bulk[0].requires_grad_(False)
    names = [n for n, _ in l.model.named_parameters()]
    l.LossLandscape.compute(resolution=3, ranges=(1,), pairs=1, params="all")
    assert l.LossLandscape.perturbed == names
    assert l.LossLandscape.moved == f"{len(names)} of {len(names)} parameter tensors (all)"
    l.css = "SkipBlock #0: LossLandscape"
    l.LossLandscape.compute(resolution=3, ranges=(1,), pairs=1, params="css")
    assert l.LossLandscape.perturbed == [f"bulk.{i}.seq.0.{w}" for i in (2, 3, 4) for w in ("weight", "bias")]
    assert l.LossLandscape.moved == f"6 of {len(names)} parameter tensors (l.css: LossLandscape)"


def test_directions_choose_parameters_by_mode_or_name() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    assert list(directions(model, pairs=1)[0][0]) == ["0.bias", "1.weight", "1.bias"]
    assert list(directions(model, pairs=1, params="all")[0][0]) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
    ]
    assert list(directions(model, pairs=1, params=["1.bias", "0.weight"])[0][0]) == ["0.weight", "1.bias"]
    with pytest.raises(ValueError, match=r"the model has no parameters 2\.weight"):
        directions(model, params=["2.weight"])
    with pytest.raises(ValueError, match=r"params must be 'trainable', 'all' or parameter names, got 'css'"):
        directions(model, params="css")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match=r"params='trainable' chooses no parameter of Sequential"):
        directions(model)


# ---- filter normalisation ------------------------------------------------------------------------


def test_filter_normalised_directions_have_the_weights_filter_norms() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 9, 5))
    for d1, d2 in directions(model, pairs=2, seed=1, filterNorm=True):
        for d in (d1, d2):
            for name, p in model.named_parameters():
                if p.dim() <= 1:
                    assert (d[name] == 0).all(), name
                else:
                    got = d[name].reshape(len(p), -1).norm(dim=1)
                    want = p.detach().reshape(len(p), -1).norm(dim=1)
                    assert torch.allclose(got, want, rtol=1e-5), name
    plain = directions(model, pairs=1, seed=1)[0][0]
    assert all(not torch.equal(plain[n], p) for n, p in model.named_parameters())


# ---- the model as before -------------------------------------------------------------------------


def model_state(model: nn.Module) -> dict[str, Any]:
    return {
        "params": {
            n: (p.detach().clone(), p.data_ptr(), p._version, p.dtype) for n, p in model.named_parameters()
        },
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def assert_same(before: dict[str, Any], model: nn.Module) -> None:
    after = model_state(model)
    for name, (value, ptr, version, dtype) in before["params"].items():
        v2, ptr2, version2, dtype2 = after["params"][name]
        assert torch.equal(value, v2) and ptr == ptr2 and version == version2 and dtype == dtype2, name
    for name, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][name]), name
    assert before["modes"] == after["modes"]
    assert before["flags"] == after["flags"]
    for g1, g2 in zip(before["grads"], after["grads"], strict=True):
        assert (g1 is None and g2 is None) or torch.equal(g1, g2)
    assert torch.equal(before["rng"], after["rng"])
    assert len(before["cuda_rng"]) == len(after["cuda_rng"])
    assert all(torch.equal(a, b) for a, b in zip(before["cuda_rng"], after["cuda_rng"], strict=True))


def prepared_bn_learner() -> Any:
    """Mixed train/eval modes, a frozen parameter, grads on some parameters and not others."""
    l = bn_learner()
    model = l.model
    xb, yb = l.data.valid[0]
    mse(model(xb), yb).backward()
    model.seq[3].bias.grad = None
    model.seq[0].weight.requires_grad_(False)
    model.seq[0].weight.grad = None
    model.train()
    model.seq[1].eval()  # BatchNorm in eval mode, the rest training
    return l


@pytest.mark.parametrize("engine", ["auto", "vmap", "loop"])
def test_the_model_is_bitwise_as_before_after_plot(engine: str) -> None:
    l = prepared_bn_learner()
    before = model_state(l.model)
    l.LossLandscape.plot(resolution=5, ranges=(1,), engine=engine)
    assert_same(before, l.model)


class RaisesOnCall:
    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("loss exploded on purpose")
        return mse(y, yb)


@pytest.mark.parametrize(("engine", "n"), [("loop", 6), ("vmap", 2), ("vmap", 4)])
def test_the_model_is_bitwise_as_before_after_an_exception(engine: str, n: int) -> None:
    l = prepared_bn_learner()
    l.lossF = RaisesOnCall(n)
    before = model_state(l.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's failure falls back to the loop, which raises too
        with pytest.raises(RuntimeError, match="on purpose"):
            l.LossLandscape.plot(resolution=5, ranges=(1,), engine=engine)
    assert_same(before, l.model)


def test_a_keyboard_interrupt_in_the_middle_also_restores() -> None:
    l = prepared_bn_learner()
    calls = 0

    def interrupted(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise KeyboardInterrupt
        return mse(y, yb)

    l.lossF = interrupted
    before = model_state(l.model)
    with pytest.raises(KeyboardInterrupt):
        l.LossLandscape.plot(resolution=5, ranges=(1,), engine="loop")
    assert_same(before, l.model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("engine", ["vmap", "loop", "auto"])
def test_on_cuda_values_equal_the_loop_and_the_model_is_as_before(engine: str) -> None:
    l = prepared_bn_learner()
    l.model.cuda()
    l.data = Batches([], [(x.cuda(), y.cuda()) for x, y in l.data.valid])
    torch.cuda.manual_seed(5)
    before = model_state(l.model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l.LossLandscape.plot(resolution=7, ranges=(0.5, 2), engine=engine)
    assert_same(before, l.model)
    assert l.LossLandscape.engine == engine or engine == "auto"
    xb, yb = l.data.valid[0]
    check_against_loop(l, xb, yb)


class CountsCalls(nn.Module):
    """Writes to a buffer in forward, and its output depends on it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x) * self.calls


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_every_point_sees_the_buffers_as_they_were(engine: str) -> None:
    torch.manual_seed(0)
    l = small_learner(CountsCalls())
    before = model_state(l.model)
    # memory=1: one point per vectorised call, so buffers are put back between calls
    l.LossLandscape.plot(resolution=3, ranges=(1,), pairs=1, engine=engine, memory=1)
    assert_same(before, l.model)
    assert float(l.model.calls) == 0
    xb, yb = l.data.valid[0]
    pairs = directions(l.model, pairs=1)
    s = l.LossLandscape.surfaces[0]
    for i in range(3):
        for j in range(3):
            want = reference(l.model, l.lossF, xb, yb, pairs[0], s.xs[i], s.ys[j])
            assert s.losses[i, j] == pytest.approx(want, rel=1e-5)


# ---- fallback ------------------------------------------------------------------------------------


class CallsItem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + 0.0 * self.lin.weight.sum().item()  # a host value: vmap cannot batch it
        return self.lin(x) * scale


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if y.mean() > 0:  # data-dependent Python control flow
            return y * 2
        return y - 1


@pytest.mark.parametrize("make", [CallsItem, Branches])
def test_fallback_warns_and_gives_loop_values(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    l = small_learner(make())
    with pytest.warns(RuntimeWarning, match=r"Falling back to one forward pass per point"):
        l.LossLandscape.plot(resolution=5, ranges=(0.5, 3.2), engine="vmap")
    assert l.LossLandscape.engine == "loop"
    xb, yb = l.data.valid[0]
    check_against_loop(l, xb, yb)


# ---- progress, figure, callback ------------------------------------------------------------------


def test_progress_prints_only_the_final_line_when_not_interactive(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # as in a script
    l = readme_learner()
    fig = l.LossLandscape.plot(resolution=3).plot()  # a SliceablePlot; .plot() is its figure
    assert capsys.readouterr().out == "Progress: 100%          8/8 Finished [-3.2, 3.2] range\n"
    assert len(fig.axes) == 8
    assert [ax.name for ax in fig.axes] == ["3d"] * 8
    titles = ["[-0.1, 0.1]", "[-0.32, 0.32]", "[-1, 1]", "[-3.2, 3.2]"] * 2
    assert [ax.get_title() for ax in fig.axes] == titles
    assert hasattr(fig, "savefig")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_redrawn_in_place_when_interactive(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    l = readme_learner()
    l.LossLandscape.plot(resolution=3, ranges=(0.5, 1), pairs=1)
    text = out.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")
    lines = [line.rstrip() for line in text[:-1].split("\r") if line]
    assert lines[-1] == "Progress: 100%          2/2 Finished [-1, 1] range"
    halfway = r"Progress:  50%          1/2 Finished \[-0\.5, 0\.5\] range, \d+\.\d\ds left"
    assert any(re.fullmatch(halfway, line) for line in lines), lines


def test_the_figure_has_a_panel_per_pair_and_range() -> None:
    l = readme_learner()
    fig = l.LossLandscape.plot(resolution=3, ranges=(0.5, 2), pairs=3).plot()
    assert len(fig.axes) == 6 and len(l.LossLandscape.surfaces) == 6
    assert [ax.get_title() for ax in fig.axes] == ["[-0.5, 0.5]", "[-2, 2]"] * 3


def test_it_handles_no_event_so_training_pays_nothing() -> None:
    assert not [e for e in EVENTS if any(e in vars(k) for k in LossLandscape.__mro__[:-2])]
    l = readme_learner()
    assert all(cb.name != "LossLandscape" for handlers in l.cbs._handlers.values() for cb, _ in handlers)
    assert "cb.plot()" in repr(l.LossLandscape) and "filterNorm" in repr(l.LossLandscape)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 1}, "resolution must be an int >= 2"),
        ({"budget": 0}, "budget must be a positive number of seconds, like 10, got 0"),
        ({"batchSize": 0}, "batchSize must be an int >= 1"),
        ({"ranges": (1, -2)}, "ranges must be positive numbers"),
        ({"engine": "fast"}, "engine must be one of 'auto', 'vmap', 'loop'"),
        ({"params": "frozen"}, "params must be one of 'trainable', 'all', 'css', got 'frozen'"),
    ],
)
def test_bad_options_say_what_is_allowed(kwargs: dict[str, Any], message: str) -> None:
    l = readme_learner()
    with pytest.raises(ValueError, match=message):
        l.LossLandscape.plot(**kwargs)


def test_without_a_model_it_says_what_to_set() -> None:
    l = k1lib.Learner()
    with pytest.raises(RuntimeError, match=r"needs l\.model"):
        l.LossLandscape.plot()


# ---- resolution=None: the grid that fits the time budget -------------------------------------------


def fake_point_time(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[float]:
    """Each grid point "takes" ``seconds``: the measurement returns it (the budgets given below
    leave seconds to spare for the real batch and centre); the list records the budgets seen."""
    budgets: list[float] = []

    def measured(ev: Any, engine: Any, radius: float, budget: float) -> float:
        budgets.append(budget)
        return seconds

    monkeypatch.setattr(landscape_module, "_seconds_per_point", measured)
    return budgets


@pytest.mark.parametrize(
    ("surfaces", "per_point", "seconds", "side"),
    [(8, 1e-4, 10, 51), (8, 2.5e-3, 10, 21), (8, 2.9e-3, 10, 19), (2, 2.5e-3, 10, 43), (8, 1.0, 10, 5)],
)
def test_the_fitted_side_is_the_largest_odd_one_that_fits(
    surfaces: int, per_point: float, seconds: float, side: int
) -> None:
    assert landscape_module._fit_resolution(surfaces, per_point, seconds) == side


def test_by_default_the_grid_fits_the_budget_and_a_line_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # as in a script
    budgets = fake_point_time(monkeypatch, 0.025)  # 8 x 21^2 x 25 ms = 88 s; 8 x 23^2: 106 s
    l = readme_learner()
    l.LossLandscape.compute(budget=100)
    assert budgets == [100]
    assert {s.losses.shape for s in l.LossLandscape.surfaces} == {(21, 21)}
    assert len(l.LossLandscape.surfaces) == 8
    assert capsys.readouterr().out == (
        "LossLandscape: 21 x 21 points a surface to fit about 100 s (one point: 25 ms; "
        "resolution= sets the grid, budget= the seconds)\n"
        "Progress: 100%          8/8 Finished [-3.2, 3.2] range\n"
    )


def test_a_model_too_slow_for_the_budget_gets_the_fewest_points_and_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_point_time(monkeypatch, 10.0)
    l = readme_learner()
    l.LossLandscape.compute(ranges=(1,), pairs=1)
    assert l.LossLandscape.surfaces[0].losses.shape == (5, 5)
    assert (
        "LossLandscape: 5 x 5 points a surface the fewest: about 4m10s, over the budget of 10 s "
        "(one point: 10.0s;" in capsys.readouterr().out
    )


def test_an_explicit_resolution_is_used_as_it_is_without_timing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    budgets = fake_point_time(monkeypatch, 10.0)
    l = readme_learner()
    l.LossLandscape.compute(resolution=4, ranges=(1,), pairs=1, budget=0.001)
    assert budgets == []
    assert l.LossLandscape.surfaces[0].losses.shape == (4, 4)
    assert "points a surface" not in capsys.readouterr().out
