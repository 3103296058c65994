"""Schedules (issue 14, point 2): ``cbs.withScheduler`` and ``cbs.withOneCycle``: the lr
sequence equals torch's own scheduler driven by a hand-written loop, one scheduler step per
optimizer step taken (GradAccumulation, skipped steps), only in training, and resumed exactly
from a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

import k1lib
from k1lib.viz import SliceablePlot

from .helpers import learner, ran

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("own_dir")

Build = Callable[[torch.optim.Optimizer], Any]  # a scheduler on an optimizer


def quiet_learner(train: int = 3, valid: int = 2) -> Any:
    l = learner(train, valid)
    l.cbs.remove("Autosave")
    return l


def reference(
    build: Build, steps_per_epoch: int, epochs: int, every: str, lr: float = 0.1
) -> list[list[float]]:
    """The lr of each optimizer step, torch's scheduler driven by hand."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = build(opt)
    lrs = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append([group["lr"] for group in opt.param_groups])
            opt.step()
            if every == "batch":
                sched.step()
        if every == "epoch":
            sched.step()
    return lrs


STEP_LR: Build = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
COSINE: Build = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)  # noqa: E731
ONE_CYCLE: Build = lambda opt: torch.optim.lr_scheduler.OneCycleLR(  # noqa: E731
    opt, max_lr=0.5, total_steps=8, pct_start=0.25, cycle_momentum=False
)


@pytest.mark.parametrize(
    ("build", "every"), [(STEP_LR, "epoch"), (COSINE, "batch")], ids=["StepLR", "Cosine"]
)
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_lr_sequence_is_torchs(build: Build, every: str, accumulate: int) -> None:
    l = quiet_learner(train=3)
    l.cbs.withScheduler(build(l.opt), every=every)
    if accumulate > 1:
        l.cbs.withGradAccumulation(accumulate)
    l.run(4)
    steps = math.ceil(3 / accumulate)  # the last incomplete group is a step too
    assert l.Scheduler.lrs == reference(build, steps, 4, every)
    assert len(l.Scheduler.lrs) == 4 * steps


@pytest.mark.parametrize("accumulate", [1, 2])
def test_one_cycle_is_torchs_one_cycle(accumulate: int) -> None:
    l = quiet_learner(train=3)
    l.cbs.withOneCycle(0.5)
    if accumulate > 1:
        l.cbs.withGradAccumulation(accumulate)
    l.run(4)
    steps = math.ceil(3 / accumulate)
    expected = reference(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.5, total_steps=4 * steps, pct_start=0.25, cycle_momentum=False
        ),
        steps,
        4,
        "batch",
    )
    assert l.OneCycle.lrs == expected
    assert l.OneCycle.sched.total_steps == 4 * steps
    assert max(lr for (lr,) in expected) == pytest.approx(0.5)
    assert l.opt.param_groups[0]["momentum"] == 0  # not cycled unless asked


def test_one_cycle_options_go_to_torch() -> None:
    l = quiet_learner(train=4)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1, momentum=0.9)
    l.cbs.withOneCycle(
        [0.3], pctStart=0.5, divFactor=10, finalDivFactor=100, annealStrategy="linear", cycleMomentum=True
    )
    l.run(2, batches=3)  # at most 3 training batches an epoch: 6 steps
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[0.3], total_steps=6, pct_start=0.5, div_factor=10, final_div_factor=100,
        anneal_strategy="linear", cycle_momentum=True,
    )  # fmt: skip
    expected = []
    for _ in range(6):
        expected.append([opt.param_groups[0]["lr"]])
        opt.step()
        sched.step()
    assert l.OneCycle.lrs == expected
    assert l.opt.param_groups[0]["momentum"] == 0.95  # cycled: back at maxMomentum


def test_one_cycle_takes_the_param_finders_suggestion() -> None:
    l = quiet_learner()
    l.cbs.withOneCycle("suggested")
    with pytest.raises(RuntimeError, match=r"ParamFinder.*has not run.*ParamFinder.run\(\)"):
        l.run(2)
    l.ParamFinder.suggestion = 0.04  # what ParamFinder.run() keeps
    l.run(2)
    assert l.OneCycle.sched.get_last_lr() == [pytest.approx(0.04 / 25 / 1e4)]
    assert l.opt.param_groups[0]["max_lr"] == 0.04

    l.cbs.remove("ParamFinder")
    with pytest.raises(RuntimeError, match=r"is not among l\.cbs"):
        l.run(2)


def test_each_run_is_one_cycle_unless_epochs_are_given() -> None:
    l = quiet_learner(train=3)
    l.cbs.withOneCycle(0.5)
    l.run(2)
    l.run(2)
    assert l.OneCycle.lrs[:6] == l.OneCycle.lrs[6:]  # two cycles of 6 steps

    spread = quiet_learner(train=3)
    spread.cbs.withOneCycle(0.5, epochs=4)
    spread.run(2)
    spread.run(2)
    whole = quiet_learner(train=3)
    whole.cbs.withOneCycle(0.5)
    whole.run(4)
    assert spread.OneCycle.lrs == whole.OneCycle.lrs
    spread.run(1)  # a new cycle: the last one ended
    assert spread.OneCycle.lrs[-3][0] == pytest.approx(0.02)


def test_a_cycle_past_its_steps_keeps_its_last_lr() -> None:
    l = quiet_learner(train=3)
    l.cbs.withOneCycle(0.5, totalSteps=8)
    l.run(4)  # 12 steps
    lrs = [lr for (lr,) in l.OneCycle.lrs]
    assert lrs[:8] == [lr for (lr,) in reference(ONE_CYCLE, 8, 1, "batch")]
    assert lrs[7:] == [pytest.approx(0.5 / 25 / 1e4)] * 5
    assert l.opt.param_groups[0]["lr"] == lrs[-1]


def test_a_cycle_too_short_for_its_warmup_is_refused() -> None:
    l = quiet_learner(train=2)
    l.cbs.withOneCycle(0.5)
    with pytest.raises(
        ValueError, match=r"cycle of 4 optimizer steps is too short for pctStart=0.25.*at least 5"
    ):
        l.run(2)


# ---- when the scheduler steps ---------------------------------------------------------------------


class SkipEvery(k1lib.Callback):
    """Skips the optimizer step of every other training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def startStep(self) -> bool:
        self.seen += 1
        return self.seen % 2 == 0


def test_a_step_a_callback_skipped_does_not_move_the_schedule() -> None:
    l = quiet_learner(train=4)
    l.cbs.append(SkipEvery())
    l.cbs.withScheduler(COSINE(l.opt))
    l.run(2)  # 8 training batches, 4 steps taken
    assert l.Scheduler.lrs == reference(COSINE, 2, 2, "batch")


def test_a_step_the_grad_scaler_skipped_does_not_move_the_schedule() -> None:
    l = quiet_learner(train=3)
    calls = [0]

    def loss(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        scale = math.inf if calls[0] == 1 else 1.0  # the first batch's gradients are inf
        return ((y.float() - yb) ** 2).mean() * scale

    l.lossF = loss
    l.cbs.remove("CancelOnExplosion")  # an inf loss is what makes the gradients inf here
    l.cbs.withAutocast(torch.bfloat16, scaler=True)
    l.cbs.withScheduler(COSINE(l.opt))
    l.run(1)
    assert l.Autocast.skipped == 1
    assert l.Scheduler.lrs == reference(COSINE, 2, 1, "batch")


def test_only_training_steps_count() -> None:
    l = quiet_learner(train=3, valid=2)
    l.cbs.remove("DontTrainValid")  # validation batches step the optimizer too
    stepped = []
    l.opt.register_step_post_hook(lambda *_: stepped.append(1))
    l.cbs.withScheduler(COSINE(l.opt))
    l.run(2)
    assert len(stepped) == 10
    assert l.Scheduler.lrs == reference(COSINE, 3, 2, "batch")


def test_an_epoch_without_a_step_does_not_step_an_epoch_schedule() -> None:
    l = quiet_learner()
    l.cbs.withScheduler(STEP_LR(l.opt), every="epoch")
    l.cbs.withDontTrain()
    l.run(2)
    assert l.Scheduler.lrs == [] and l.Scheduler.sched.last_epoch == 0
    assert l.opt.param_groups[0]["lr"] == 0.1


def test_a_scheduler_of_another_optimizer_is_refused_at_run_start() -> None:
    l = quiet_learner()
    other = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.cbs.withScheduler(STEP_LR(other))
    before = [p.clone() for p in l.model.parameters()]
    with pytest.raises(RuntimeError, match=r"another optimizer than l.opt.*StepLR\(l.opt"):
        l.run(1)
    assert all(torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))
    assert not l.opt._optimizer_step_post_hooks  # no hook left behind


def test_the_hook_is_removed_after_the_run() -> None:
    l = quiet_learner()
    l.cbs.withScheduler(COSINE(l.opt))
    l.run(1)
    assert not l.opt._optimizer_step_post_hooks
    l.opt.step()  # outside a run: not counted
    assert len(l.Scheduler.lrs) == 3


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda opt: STEP_LR(opt), ValueError, 'every must be "batch" or "epoch", got \'step\''),
        (lambda opt: object(), TypeError, "without step, state_dict, load_state_dict"),
        (lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt), TypeError, "steps on a metric"),
    ],
    ids=["every", "not-a-scheduler", "plateau"],
)
def test_bad_arguments_are_refused(make: Build, error: type[Exception], match: str) -> None:
    l = quiet_learner()
    every = "step" if error is ValueError else "batch"
    with pytest.raises(error, match=match):
        l.cbs.withScheduler(make(l.opt), every=every)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"maxLr": "best"}, "maxLr must be a positive number"),
        ({"maxLr": 0.1, "pctStart": 1.5}, r"pctStart must be a number in \(0, 1\)"),
        ({"maxLr": 0.1, "annealStrategy": "exp"}, 'annealStrategy must be "cos" or "linear"'),
        ({"maxLr": 0.1, "epochs": 2, "totalSteps": 3}, "not both"),
        ({"maxLr": 0.1, "epochs": 0}, "epochs must be an int >= 1"),
    ],
)
def test_bad_one_cycle_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        k1lib.Callbacks().withOneCycle(**kwargs)


def test_loaders_without_a_length_need_total_steps() -> None:
    l = quiet_learner()
    data = l.data
    l.data = k1lib.data.Data(iter(data.train), iter(data.valid))
    l.cbs.withOneCycle(0.5)
    with pytest.raises(RuntimeError, match="totalSteps="):
        l.run(1)


# ---- checkpoints and plots ------------------------------------------------------------------------


def build(add: Callable[[Any], None]) -> Any:
    l = quiet_learner(train=3)
    l.cbs.withGradAccumulation(2)
    add(l)
    return l


SCHEDULES: dict[str, Callable[[Any], None]] = {
    "StepLR": lambda l: l.cbs.withScheduler(STEP_LR(l.opt), every="epoch"),
    "Cosine": lambda l: l.cbs.withScheduler(COSINE(l.opt)),
    "OneCycle": lambda l: l.cbs.withOneCycle(0.5, epochs=5),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_resumed_run_continues_the_schedule(name: str) -> None:
    add = SCHEDULES[name]
    whole = ran(build(add), 5)

    first = ran(build(add), 3)
    first.save("half.pth")
    resumed = build(add)
    resumed.load("half.pth").run(2)

    cb = "OneCycle" if name == "OneCycle" else "Scheduler"
    assert len(whole.cbs[cb].lrs) == 10
    assert resumed.cbs[cb].lrs == whole.cbs[cb].lrs
    assert resumed.opt.param_groups[0]["lr"] == whole.opt.param_groups[0]["lr"]
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_one_cycle_loaded_mid_cycle_saves_its_state_before_the_next_run() -> None:
    first = ran(build(SCHEDULES["OneCycle"]), 2)
    first.save("a.pth")
    again = build(SCHEDULES["OneCycle"]).load("a.pth")
    again.save("b.pth")  # not run in between: the loaded cycle is still in the file
    resumed = ran(build(SCHEDULES["OneCycle"]).load("b.pth"), 3)
    whole = ran(build(SCHEDULES["OneCycle"]), 5)
    assert resumed.OneCycle.lrs == whole.OneCycle.lrs


def test_plot_draws_the_lr_of_each_group() -> None:
    l = quiet_learner()
    l.opt = torch.optim.SGD(
        [{"params": l.model[0].parameters()}, {"params": l.model[2].parameters(), "lr": 0.01}], lr=0.1
    )
    l.cbs.withScheduler(COSINE(l.opt))
    l.run(2)
    p = l.Scheduler.plot()
    assert isinstance(p, SliceablePlot)
    fig = p.plot()
    (ax,) = fig.axes
    assert [line.get_ydata().tolist() for line in ax.lines] == [
        [step[0] for step in l.Scheduler.lrs],
        [step[1] for step in l.Scheduler.lrs],
    ]
    assert ax.get_xlabel() == "optimizer step"
    assert len(p[2:4].plot().axes[0].lines[0].get_xdata()) == 2
    plt.close("all")
