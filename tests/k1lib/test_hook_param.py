"""HookParam: mean, std, min and max of each selected parameter after every training step equal
the same statistics of the parameters saved at that point; the README's repr, ``[i]``,
slices, plots, state dicts, and what the css selects."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

import k1lib
from k1lib.callbacks._stats import SMALL, STATS

from .test_hook_module import data, make_learner, readme_learner
from .test_stats import assert_stats

README = Path(__file__).parent / "seed" / "README_2021.md"


class Snapshots(k1lib.Callback):
    """Copies of the named parameters at the end of each training batch (after the step)."""

    order = 100

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names
        self.taken: list[dict[str, Tensor]] = []

    def endBatch(self) -> None:
        learner = self.learner
        if learner.model.training:
            params = dict(learner.model.named_parameters())
            self.taken.append({n: params[n].detach().clone() for n in self.names})


def snapshot(l: Any, names: list[str] | None = None) -> Snapshots:
    """Snapshots of ``names`` (default: every parameter of the model), appended to ``l``."""
    snaps = Snapshots(names if names is not None else [n for n, _ in l.model.named_parameters()])
    l.cbs.append(snaps)
    return snaps


def assert_recorded(hp: Any, snaps: Snapshots) -> None:
    """Every batch row of ``hp.data`` holds the statistics of the parameters as saved then."""
    assert hp.names == snaps.names
    assert hp.data.shape == (len(snaps.taken), len(hp.names), 4)
    for b, taken in enumerate(snaps.taken):
        try:
            assert_stats(hp.data[b], [taken[n] for n in hp.names], STATS)
        except AssertionError as e:
            raise AssertionError(f"batch {b}: {e}") from None


# ---- recorded values equal direct computation ---------------------------------------------------------


def test_readme_network_params_after_each_step() -> None:
    l = readme_learner()
    names = [f"bulk.{i}.seq.0.{kind}" for i in (2, 3, 4) for kind in ("weight", "bias")]
    snaps = snapshot(l, names)
    l.run(2)
    hp = l.HookParam
    assert_recorded(hp, snaps)
    # the parameters moved: rows differ from batch to batch (not one stale copy)
    assert len(set(hp[0].means.tolist())) == 8


def test_readme_repr() -> None:
    # the README's block, with this run's count
    text = README.read_text()
    start = text.index("    Callback `HookParam`: 6 params, 472 means and stds each:")
    end = text.index("\n", text.index("- cb.detach()", start))
    expected = [line[4:] for line in text[start:end].splitlines()]
    expected[0] = expected[0].replace("472", "8")
    l = readme_learner()
    l.run(2)
    assert repr(l.HookParam).splitlines() == expected


def test_default_css_records_every_parameter_large_and_small() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 300), nn.ReLU(), nn.Linear(300, 300), nn.Linear(300, 1))
    l = make_learner(model, data(3), lr=0.01)
    snaps = snapshot(l)
    l.run(1)
    assert l.HookParam.names == [n for n, _ in model.named_parameters()]
    assert model[2].weight.numel() > SMALL >= model[0].weight.numel()
    assert_recorded(l.HookParam, snaps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 300), nn.ReLU(), nn.Linear(300, 300), nn.Linear(300, 1)).cuda()
    batches = data(3)
    batches.train = [(x.cuda(), y.cuda()) for x, y in batches.train]
    batches.valid = [(x.cuda(), y.cuda()) for x, y in batches.valid]
    l = make_learner(model, batches, lr=0.01)
    snaps = snapshot(l)
    l.run(2)
    snaps.taken = [{n: t.cpu() for n, t in taken.items()} for taken in snaps.taken]
    assert l.HookParam.data.device.type == "cpu"
    assert_recorded(l.HookParam, snaps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 300), nn.Linear(300, 300), nn.Linear(300, 1))
    l = make_learner(model, data(2), lr=0.01)
    l.cbs.withDType(dtype)
    snaps = snapshot(l)
    l.run(1)
    assert snaps.taken[0]["1.weight"].dtype == dtype
    assert_recorded(l.HookParam, snaps)


class WithUnused(nn.Module):
    """A model with a parameter holding NaN and inf that the forward never uses (so training goes
    on normally around it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.odd = nn.Linear(3, 3)
        self.big = nn.Parameter(torch.randn(SMALL + 10))
        with torch.no_grad():
            self.odd.weight[0, 0] = math.inf
            self.odd.bias[1] = math.nan
            self.big[5] = -math.inf

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)


def test_nan_and_inf_are_recorded_not_raised() -> None:
    torch.manual_seed(0)
    l = make_learner(WithUnused(), data(3))
    snaps = snapshot(l)
    l.run(1)
    hp = l.HookParam
    assert_recorded(hp, snaps)
    weight, bias, big = (
        hp[hp.names.index("odd.weight")],
        hp[hp.names.index("odd.bias")],
        hp[hp.names.index("big")],
    )
    assert (weight.means == math.inf).all() and weight.stds.isnan().all() and (weight.maxs == math.inf).all()
    assert bias.means.isnan().all() and bias.mins.isnan().all()
    assert (big.means == -math.inf).all() and (big.mins == -math.inf).all() and big.maxs.isfinite().all()


# ---- which batches are recorded -------------------------------------------------------------------------


class Cancel(k1lib.Callback):
    """Cancels every batch before its loss."""

    def endPass(self) -> None:
        raise k1lib.CancelBatchException()


def test_only_training_batches_and_runs_accumulate() -> None:
    torch.manual_seed(0)
    l = make_learner(
        nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), data(5, valid=2), "Linear: HookParam"
    )
    snaps = snapshot(l)
    l.run(2)
    assert len(l.HookParam.data) == 10 == len(l.Loss.train)
    l.run(1, 2)  # 2 of the 5 training batches: the rows reserved for the rest are not kept
    assert len(l.HookParam.data) == 12 == len(l.Loss.train)
    l.cbs.append(Cancel())  # batches cut short still end, after no step
    l.run(1)
    assert len(l.HookParam.data) == 17 == len(l.Loss.train) + 5
    assert_recorded(l.HookParam, snaps)
    l.cbs.remove("Cancel")
    l.record(1, 2)
    assert len(l.HookParam.data) == 17
    l.css = "#2: HookParam"  # another selection: a new record
    l.run(1)
    assert l.HookParam.names == ["2.weight", "2.bias"] and len(l.HookParam.data) == 5


def test_after_a_failed_run_the_next_one_records_normally() -> None:
    calls = [0]

    def lossF(y: Tensor, yb: Tensor) -> Tensor:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return ((y - yb) ** 2).mean()

    torch.manual_seed(0)
    l = make_learner(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), data(4))
    l.lossF = lossF
    snaps = snapshot(l)
    with pytest.raises(KeyboardInterrupt):
        l.run(1)
    assert len(l.HookParam.data) == 1
    l.run(1)
    assert len(l.HookParam.data) == 5
    assert_recorded(l.HookParam, snaps)


def test_suspended_for_part_of_an_epoch_records_only_the_batches_it_saw() -> None:
    class Suspender(k1lib.Callback):
        order = 1

        def startBatch(self) -> None:
            learner = self.learner
            if learner.model.training and learner.epoch == 0 and learner.batch == 1:
                learner.cbs.suspend(["HookParam"])

        def endEpoch(self) -> None:
            if self.learner.epoch == 0:
                self.learner.cbs.restore()

    torch.manual_seed(0)
    l = make_learner(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), data(5))
    l.cbs.append(Suspender())
    snaps = snapshot(l)
    l.run(2)
    snaps.taken = [snaps.taken[0], *snaps.taken[5:]]
    assert_recorded(l.HookParam, snaps)


def test_a_css_selecting_no_parameters_warns_once_and_records_nothing() -> None:
    torch.manual_seed(0)
    l = make_learner(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), data(2), "ReLU: HookParam")
    message = re.escape("'HookParam'") + ".*" + re.escape(repr(l.css))
    with pytest.warns(UserWarning, match=message):
        l.run(1)
    assert len(l.HookParam) == 0 and l.HookParam.data.shape == (0, 0, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l.run(1)  # the same css: no second warning
        assert "0 params, 0 means and stds each" in repr(l.HookParam)
        assert isinstance(l.HookParam.plot().plot(), Figure)


# ---- reading ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> Any:
    """The README learner after 60 training batches."""
    l = readme_learner(train=30, valid=1)
    l.run(2)
    return l.HookParam


def test_index_gives_one_params_statistics(trained: Any) -> None:
    hp = trained
    p = hp[2]
    assert p.name == "bulk.3.seq.0.weight" and hp[-1].name == "bulk.4.seq.0.bias" and len(p) == 60
    for k, stat in enumerate(STATS):
        assert torch.equal(getattr(p, stat), hp.data[:, 2, k])
    with pytest.raises(IndexError, match="6 params"):
        hp[6]
    with pytest.raises(TypeError, match="int or a slice"):
        hp["bulk.2.seq.0.weight"]
    assert "bulk.3.seq.0.weight" in repr(p)


@pytest.mark.parametrize("index", [slice(1, 3), slice(None, None, 2), slice(-2, None), slice(9, None)])
def test_slices_are_new_hook_params_with_their_data(trained: Any, index: slice) -> None:
    hp = trained
    part = hp[index]
    picked = list(range(6))[index]
    assert isinstance(part, k1lib.callbacks.HookParam) and part is not hp
    assert part.names == [hp.names[i] for i in picked] and len(part) == len(picked)
    assert torch.equal(part.data, hp.data[:, picked])
    assert repr(part).startswith(f"Callback `HookParam`: {len(picked)} params, 60 means and stds each:")


def test_a_slice_keeps_recording_its_params_in_another_run() -> None:
    torch.manual_seed(0)
    l = make_learner(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), data(3))
    l.run(1)
    part = l.HookParam[1:3]  # 0.bias, 1.weight
    l.cbs.append(part, "Part")
    l.run(1)
    assert part.names == ["0.bias", "1.weight"]
    assert torch.equal(part.data, l.HookParam.data[:, 1:3])


def test_plot_draws_every_statistic_and_slices_by_batch(trained: Any) -> None:
    hp = trained
    plot = hp[::2].plot()
    assert isinstance(plot, k1lib.viz.SliceablePlot)
    fig = plot[50:].plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    for k, ax in enumerate(fig.axes):
        assert ax.get_title() == STATS[k] and len(ax.lines) == 3
        assert list(ax.lines[1].get_xdata()) == list(range(50, 60))
        assert list(ax.lines[1].get_ydata()) == hp.data[50:, 2, k].tolist()
    assert isinstance(hp.plot().plot(), Figure)


def test_state_dict_round_trip(trained: Any, tmp_path: Path) -> None:
    hp = trained
    path = tmp_path / "hp.pth"
    torch.save(hp.state_dict(), path)
    loaded = k1lib.callbacks.HookParam()
    loaded.load_state_dict(torch.load(path, weights_only=True))
    assert loaded.names == hp.names and torch.equal(loaded.data, hp.data)
    assert repr(loaded) == repr(hp)
