"""ParamFinder: the range test restores the learner bitwise, stops on divergence, plots, and
checks its arguments before touching anything."""

from __future__ import annotations

import itertools
import math
import os
import re
from typing import Any

import matplotlib
import pytest
import torch
from torch import optim

import k1lib
from k1lib.callbacks import EVENTS
from k1lib.callbacks.param_finder import ParamFinder
from tests.modsel.models import Network

from .helpers import assert_same, learner

matplotlib.use("Agg")

README_REPR = """Sliceable plot. Can...
- p[a:b]: to focus on a specific range of the plot
- p.yscale("log"): to perform operation as if you're using plt

Reminder: slice range here is actually [0, 1], because it's kinda hard to slice the normal way"""

FIELDS = ("epoch", "epochs", "batch", "batches", "xb", "yb", "y", "loss", "progress")


def readme_learner(seed: int = 0) -> Any:
    """The seed README's ``newL()``: its network, data, Adam and callbacks."""
    torch.manual_seed(seed)
    l = k1lib.Learner()
    l.model = Network()
    l.data = k1lib.data.Data.fromDataset(k1lib.data.FunctionDataset.exp, batchSize=64)
    l.opt = optim.Adam(l.model.parameters(), lr=1e-2)
    l.lossF = lambda x, y: ((x.squeeze() - y) ** 2).mean()
    l.cbs.withModifyBatch(lambda x, y: (x[:, None], y))
    l.cbs.withDType(torch.float32)
    l.cbs.withCancelOnLowLoss(1, epochMode=True)
    return l


def trained_readme_learner() -> Any:
    """A README learner after a few batches: Adam has moments and step counts to restore."""
    l = readme_learner()
    l.cbs.remove("ProgressBar")
    l.run(1, 6)
    return l


def counting(l: Any, fail_at: int | None = None, error: BaseException | None = None) -> list[int]:
    """Wrap ``l.lossF`` to count its calls (and raise ``error`` at call ``fail_at``)."""
    calls = [0]
    inner = l.lossF

    def loss_f(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == fail_at:
            assert error is not None
            raise error
        return inner(y, yb)  # type: ignore[no-any-return]

    l.lossF = loss_f
    return calls


def snapshot(l: Any) -> dict[str, Any]:
    """Copies of everything ParamFinder must put back, to compare bitwise."""

    def clone(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, dict):
            return {k: clone(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(clone(v) for v in value)
        return value

    params = list(l.model.parameters())
    return {
        "model": clone(l.model.state_dict()),
        "dtypes": [p.dtype for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "requires_grad": [p.requires_grad for p in params],
        "training": l.model.training,
        "opt_state": {i: clone(dict(l.opt.state[p])) for i, p in enumerate(params) if p in l.opt.state},
        "opt_groups": [clone({k: v for k, v in g.items() if k != "params"}) for g in l.opt.param_groups],
        "rng": torch.get_rng_state(),
        "cbs": [(cb.name, type(cb), cb.suspended) for cb in l.cbs],
        "fields": {k: getattr(l, k) for k in FIELDS},
        "files": sorted(os.listdir()),
    }


def test_restores_everything_after_a_test_that_diverges(capsys: pytest.CaptureFixture[str]) -> None:
    l = trained_readme_learner()
    l.cbs.withProgressBar()
    assert any("step" in s for s in l.opt.state.values())
    before = snapshot(l)
    calls = counting(l)
    suggestion = l.ParamFinder.run()
    after = snapshot(l)
    assert_same(before, after)
    out = capsys.readouterr().out
    assert out.rstrip().endswith("Run cancelled: Loss increases significantly.")
    assert calls[0] == len(l.ParamFinder.params) == len(l.ParamFinder.losses) < 100
    assert l.ParamFinder.params[0] <= suggestion <= l.ParamFinder.params[-1]


def test_restores_everything_after_a_test_that_runs_to_the_end() -> None:
    l = trained_readme_learner()
    before = snapshot(l)
    calls = counting(l)
    with pytest.warns(UserWarning, match="did not diverge up to lr=1e-05"):
        l.ParamFinder.run(samples=20, start=1e-7, end=1e-5)
    assert calls[0] == 20
    assert_same(before, snapshot(l))
    assert l.ParamFinder.params[0] == pytest.approx(1e-7) and l.ParamFinder.params[-1] == pytest.approx(1e-5)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_restores_everything_after_an_exception_mid_test(error: BaseException) -> None:
    l = trained_readme_learner()
    l.cbs.suspend(["Loss"])  # a suspension from before the test stays
    before = snapshot(l)
    calls = counting(l, fail_at=7, error=error)
    with pytest.raises(type(error)):
        l.ParamFinder.run()
    assert calls[0] == 7
    assert_same(before, snapshot(l))
    assert "_ParamFinderTest" not in l.cbs
    l.cbs.restore()
    assert not any(cb.suspended for cb in l.cbs)


def test_a_run_after_the_test_is_the_run_without_it() -> None:
    runs = []
    for with_test in (False, True):
        l = readme_learner()  # seeds torch's generator, then builds
        l.cbs.remove("ProgressBar")
        if with_test:
            l.ParamFinder.run()
        l.run(2, 20)
        runs.append((l.Loss.train, l.Loss.valid))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 40


def test_a_dtype_cast_during_the_test_is_undone() -> None:
    l = learner()
    l.model.double()
    l.data = k1lib.data.Data(
        *[[(x.double(), y.double()) for x, y in part] for part in (l.data.train, l.data.valid)]
    )
    l.cbs.withDType(torch.float32)  # casts the model at the start of every run
    before = snapshot(l)
    l.ParamFinder.run(samples=100, start=1e-3, end=1e4)
    assert_same(before, snapshot(l))
    assert all(p.dtype == torch.float64 for p in l.model.parameters())


def test_a_loader_with_its_own_generator_is_put_back() -> None:
    l = learner(train=6)
    x = torch.randn(48, 2)
    l.data = k1lib.data.Data(k1lib.data.DataLoader((x, x.sum(1, keepdim=True)), 8, seed=3), l.data.valid)
    state = l.data.train._generator.get_state()
    l.ParamFinder.run(samples=200, start=1e-4, end=1e4)
    assert torch.equal(state, l.data.train._generator.get_state())


def test_readme_plot(capsys: pytest.CaptureFixture[str]) -> None:
    l = readme_learner()
    whole = l.ParamFinder.plot(samples=1000)
    p = whole[:0.99]
    out = capsys.readouterr().out
    assert re.search(r"Progress: .*\n?.*Run cancelled: Loss increases significantly\.\n", out)
    match = re.search(r"Suggested param: (\S+)\n$", out)
    assert match is not None, out
    value = float(match.group(1))
    params = l.ParamFinder.params
    assert math.isfinite(value) and value > 0 and params[0] <= value <= params[-1]
    assert value == l.ParamFinder.suggestion
    assert len(params) < 99  # samples=1000 is a cap: the default pace, stopped early
    assert isinstance(p, k1lib.viz.SliceablePlot) and repr(p) == README_REPR
    fig = p.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines[0].get_xdata()) == round(0.99 * len(params))
    assert len(whole[:0.5].plot().axes[0].lines[0].get_xdata()) == round(0.5 * len(params))


def test_plot_slices_are_fractions() -> None:
    l = learner()
    p = l.ParamFinder.plot(samples=300, start=1e-3, end=1e4)
    whole = p.plot().axes[0].lines[0].get_xdata()
    assert len(whole) == len(l.ParamFinder.params)
    assert list(p[0.5:].plot().axes[0].lines[0].get_xdata()) == list(whole[round(len(whole) / 2) :])
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        p[:20].plot()


def test_samples_caps_the_batches_of_a_sweep_at_a_fixed_pace() -> None:
    l = learner()
    with pytest.warns(UserWarning, match="did not diverge"):
        l.ParamFinder.run(samples=1000, start=1e-9, end=1e-6)  # 3 decades: 43 values
    params = l.ParamFinder.params
    assert len(params) == 43 and params[0] == 1e-9 and params[-1] == pytest.approx(1e-6)
    assert all(b / a == pytest.approx(10 ** (1 / 14)) for a, b in itertools.pairwise(params))
    with pytest.warns(UserWarning, match="did not diverge"):
        l.ParamFinder.run(samples=20, start=1e-9, end=1e-6)  # capped: the same range, faster
    assert len(l.ParamFinder.params) == 20 and l.ParamFinder.params[-1] == pytest.approx(1e-6)


def test_the_readme_call_is_the_default_test() -> None:
    l = readme_learner()
    l.cbs.remove("ProgressBar")
    assert l.ParamFinder.run(samples=1000) == l.ParamFinder.run()


def test_stops_when_the_loss_diverges(capsys: pytest.CaptureFixture[str]) -> None:
    l = learner(train=5)
    calls = counting(l)
    l.ParamFinder.run(samples=1000, start=1e-3, end=1e4)  # 99 values
    losses = l.ParamFinder.losses
    assert calls[0] == len(losses) < 99  # no batch ran after the stop
    assert not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses)
    assert "Run cancelled: Loss increases significantly." in capsys.readouterr().out


def test_sweeps_every_group_keeping_their_ratio() -> None:
    l = learner()
    first, last = list(l.model.parameters())[:2], list(l.model.parameters())[2:]
    l.opt = optim.SGD([{"params": first, "lr": 0.1}, {"params": last, "lr": 0.01}])
    seen: list[tuple[float, float]] = []
    inner = l.lossF

    def loss_f(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append((l.opt.param_groups[0]["lr"], l.opt.param_groups[1]["lr"]))
        return inner(y, yb)  # type: ignore[no-any-return]

    l.lossF = loss_f
    l.ParamFinder.run(samples=50, start=1e-3, end=1e5)
    assert [a for a, _ in seen] == l.ParamFinder.params
    assert all(a == pytest.approx(10 * b) for a, b in seen)
    assert [g["lr"] for g in l.opt.param_groups] == [0.1, 0.01]


def test_a_bad_param_name_fails_before_anything_runs() -> None:
    l = trained_readme_learner()
    before = snapshot(l)
    calls = counting(l)
    with pytest.raises(ValueError, match=r"no hyperparameter 'lrr'; did you mean 'lr'\? they have: .*betas"):
        l.ParamFinder.run(param="lrr")
    with pytest.raises(ValueError, match="sweeps a number; param group 0's 'betas' is tuple"):
        l.ParamFinder.run(param="betas")
    assert calls[0] == 0
    assert_same(before, snapshot(l))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 5}, "samples must be an int of at least 10"),
        ({"start": 0}, "start must be a positive number"),
        ({"start": 1.0, "end": 0.1}, "start must be below end"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    l = learner()
    calls = counting(l)
    with pytest.raises(ValueError, match=message):
        l.ParamFinder.run(**kwargs)
    assert calls[0] == 0


def test_other_callbacks_are_quiet_during_the_test() -> None:
    l = learner()
    seen: list[str] = []
    l.cbs.withCheckpoint("endBatch", lambda cb: seen.append("endBatch"), name="Spy")
    l.cbs.withModifyBatch(lambda x, y: (seen.append("modify") or x, y))
    with pytest.warns(UserWarning):
        l.ParamFinder.run(samples=10, start=1e-6, end=1e-5)
    assert seen == ["modify"] * 10
    assert l.Loss.train == []


def test_no_event_handlers_outside_a_test() -> None:
    assert not [event for event in EVENTS if event in vars(ParamFinder)]
    l = learner()
    l.ParamFinder.run(samples=100, start=1e-3, end=1e4)
    assert l.cbs.names() == learner().cbs.names()


def test_repr_lists_how_to_use_it() -> None:
    text = repr(learner().ParamFinder)
    assert text.startswith("Callback `ParamFinder`, use...\n- cb.plot(samples=100, start=1e-6, end=10")
    assert "- cb.params, cb.losses:" in text and "- cb.suggestion:" in text


def test_the_builder_adds_it() -> None:
    cbs = k1lib.Callbacks().withParamFinder()
    assert isinstance(cbs.ParamFinder, ParamFinder) and ParamFinder.order == 30


def test_subclasses_of_batch_shaping_callbacks_keep_running_during_the_test() -> None:
    from k1lib.callbacks import ModifyBatch

    class Unsqueeze(ModifyBatch):
        def __init__(self) -> None:
            super().__init__(lambda x, y: (x[:, None], y))

    l = readme_learner()
    l.cbs.remove("ModifyBatch")
    l.cbs.append(Unsqueeze())
    assert math.isfinite(l.ParamFinder.run())
