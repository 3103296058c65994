"""Callbacks: event order, skipping steps, cancels, suspension, errors, lookups."""

from __future__ import annotations

import io

import pytest
import torch

import k1lib
from k1lib.callbacks import EVENTS

from .helpers import learner

TRAIN_BATCH = [
    "startBatch",
    "startPass",
    "endPass",
    "startLoss",
    "endLoss",
    "startBackward",
    "startStep",
    "startZeroGrad",
    "endBatch",
]


class Spy(k1lib.Callback):
    """Records every event it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        for event in EVENTS:
            setattr(self, event, self._recorder(event))

    def _recorder(self, event: str):  # type: ignore[no-untyped-def]
        return lambda: self.seen.append(event)


def test_events_fire_in_loop_order() -> None:
    l = learner(train=2, valid=1)
    spy = Spy()
    l.cbs.append(spy)
    l.cbs._rebuild()
    l.run(1)
    expected = ["startRun", "startEpoch", *TRAIN_BATCH, *TRAIN_BATCH, "startValidBatches", *TRAIN_BATCH]
    expected += ["endEpoch", "endRun"]
    assert spy.seen == expected


class SkipStep(k1lib.Callback):
    def startStep(self) -> bool:
        return True


class SkipBackward(k1lib.Callback):
    def startBackward(self) -> bool:
        return True


def test_returning_true_from_startStep_skips_the_step() -> None:
    l = learner()
    before = [p.detach().clone() for p in l.model.parameters()]
    l.cbs.append(SkipStep())
    l.run(2)
    assert all(torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))


def test_returning_true_from_startBackward_skips_backward() -> None:
    l = learner()
    l.cbs.append(SkipBackward())
    l.run(1)
    assert all(p.grad is None for p in l.model.parameters())


def test_training_changes_the_weights_and_valid_batches_do_not_train() -> None:
    l = learner(train=0, valid=3)
    before = [p.detach().clone() for p in l.model.parameters()]
    l.run(2)
    assert all(torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))
    l = learner(train=3, valid=0)
    before = [p.detach().clone() for p in l.model.parameters()]
    l.run(1)
    assert not all(torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))


class CancelIn(k1lib.Callback):
    def __init__(self, event: str, exc: type[Exception]) -> None:
        super().__init__()
        setattr(self, event, self._raise)
        self.exc = exc

    def _raise(self) -> None:
        raise self.exc("stop")


@pytest.mark.parametrize(
    ("exc", "fired", "not_fired"),
    [
        (k1lib.CancelBatchException, "cancelBatch", "cancelEpoch"),
        (k1lib.CancelEpochException, "cancelEpoch", "cancelRun"),
        (k1lib.CancelRunException, "cancelRun", "cancelEpoch"),
    ],
)
def test_cancel_paths(
    exc: type[Exception], fired: str, not_fired: str, capsys: pytest.CaptureFixture[str]
) -> None:
    l = learner()
    spy = Spy()
    l.cbs.append(CancelIn("startPass", exc))
    l.cbs.append(spy)
    l.run(2)
    assert fired in spy.seen and not_fired not in spy.seen
    assert spy.seen[-1] == "endRun"
    if exc is k1lib.CancelBatchException:
        assert spy.seen.count("endBatch") == spy.seen.count("startBatch")
    out = capsys.readouterr().out
    assert ("Run cancelled: stop." in out) == (exc is k1lib.CancelRunException)


def test_suspend_and_restore() -> None:
    l = learner()
    spy = Spy()
    l.cbs.append(spy)
    with l.cbs.suspend(["Spy"]):
        l.run(1)
    assert spy.seen == []
    l.run(1)
    assert spy.seen[0] == "startRun"
    l.cbs.suspend(["Spy", "Loss"])
    l.cbs.suspend(["Spy"])  # nested: restoring the inner one keeps the outer
    l.cbs.restore()
    assert l.cbs.Spy.suspended
    l.cbs.restore()
    assert not l.cbs.Spy.suspended
    with pytest.raises(RuntimeError, match="nothing is suspended"):
        l.cbs.restore()
    with pytest.raises(KeyError, match="did you mean Loss"):
        l.cbs.suspend(["Los"])


class Boom(k1lib.Callback):
    def endLoss(self) -> None:
        raise ValueError("boom")


def test_a_failing_callback_is_named_and_cleanup_runs() -> None:
    l = learner()
    spy = Spy()
    l.cbs.append(Boom())
    l.cbs.append(spy)
    l.model.eval()
    with pytest.raises(ValueError, match="boom") as info:
        l.run(1)
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "'Boom'" in notes and "'endLoss'" in notes
    assert spy.seen[-1] == "endRun"
    assert not l.model.training  # mode as before the run


def test_event_like_typos_are_rejected_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="did you mean 'startBackward'"):

        class Typo(k1lib.Callback):
            def startBakcward(self) -> None: ...


def test_unknown_event_names() -> None:
    l = learner()
    with pytest.raises(ValueError, match="did you mean 'startRun'"):
        l.cbs("startRnu")


def test_callback_attributes_fall_through_to_the_learner() -> None:
    l = learner()
    seen = []

    class Peek(k1lib.Callback):
        def startEpoch(self) -> None:
            seen.append((self.epoch, self.epochs))

    l.cbs.append(Peek())
    l.run(2)
    assert seen == [(0, 2), (1, 2)]
    with pytest.raises(AttributeError, match="did you mean epoch, epochs"):
        l.cbs.Peek.epochz  # noqa: B018


def test_lookups_raise_with_close_matches() -> None:
    l = learner()
    with pytest.raises(KeyError, match="did you mean Loss"):
        l.cbs.remove("Los")
    with pytest.raises(AttributeError, match="did you mean Loss"):
        l.cbs.Los  # noqa: B018
    with pytest.raises(AttributeError, match="Loss"):
        l.Los  # noqa: B018
    assert l.Loss is l.cbs.Loss
    with pytest.raises(ValueError, match="already there"):
        l.cbs.append(k1lib.callbacks.Loss())


def test_callbacks_are_sorted_by_order_like_the_readme() -> None:
    l = k1lib.Learner()
    l.cbs.withModifyBatch(lambda x, y: (x, y))
    l.cbs.withDType(torch.float32)
    l.cbs.withCancelOnLowLoss(1, epochMode=True)
    assert l.cbs.names() == [
        "ProgressBar",
        "DontTrainValid",
        "Autosave",
        "LossLandscape",
        "HookModule",
        "HookParam",
        "ModifyBatch",
        "DType",
        "CancelOnLowLoss",
        "Loss",
        "CancelOnExplosion",
        "ParamFinder",
    ]
    assert repr(l.cbs).startswith("Callbacks:\n- ProgressBar\n- DontTrainValid\n")
    assert '- cbs.suspend(["Loss", "Cuda"]): to temporarily prevent triggering events in' in repr(l.cbs)


def test_loss_records_what_the_loop_computed() -> None:
    l = learner(train=3, valid=2)
    losses: list[float] = []
    l.cbs.withInspectLoss(lambda loss: losses.append(float(loss.detach())))
    l.run(2)
    assert l.Loss.train == pytest.approx([v for i, v in enumerate(losses) if i % 5 < 3])
    assert l.Loss.valid == pytest.approx([v for i, v in enumerate(losses) if i % 5 >= 3])
    assert l.Loss.epoch.train == pytest.approx([sum(losses[0:3]) / 3, sum(losses[5:8]) / 3])
    assert l.Loss.epoch.valid == pytest.approx([sum(losses[3:5]) / 2, sum(losses[8:10]) / 2])


def test_cancel_on_explosion_stops_on_nan(capsys: pytest.CaptureFixture[str]) -> None:
    l = learner()
    l.lossF = lambda y, yb: (y - yb).mean() * float("nan")
    l.run(3)
    assert "Run cancelled: Loss is nan" in capsys.readouterr().out
    assert l.epoch == 0


def test_batch_and_epoch_limits() -> None:
    l = learner(train=5, valid=5)
    spy = Spy()
    l.cbs.append(spy)
    l.cbs.withBatchLimit(2).withEpochLimit(3)
    l.run(10)
    assert spy.seen.count("startEpoch") == 4  # the 4th is cancelled at its start
    assert spy.seen.count("endLoss") == 3 * 2


def test_progress_bar_writes_few_lines_to_a_log() -> None:
    l = learner(train=50, valid=10, quiet=False)
    stream = io.StringIO()
    l.cbs.ProgressBar.stream = stream
    l.run(3)
    lines = stream.getvalue().splitlines()
    # one line per epoch and the final progress line (a run this short prints no other)
    assert [line.split("  ")[0] for line in lines[:3]] == ["epoch 0/3", "epoch 1/3", "epoch 2/3"]
    assert len(lines) == 4 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("Progress: 100%, epoch:  2/3, batch:  60/60, elapsed:")


def test_record_returns_batches_and_leaves_the_learner_as_it_was() -> None:
    l = learner(train=4, valid=4)
    before = [p.detach().clone() for p in l.model.parameters()]
    xbs, ybs, ys = l.record(1, 3)
    assert len(xbs) == len(ybs) == len(ys) == 6
    assert all(torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))
    assert l.Loss.train == [] and "_Recorder" not in l.cbs
    assert not any(cb.suspended for cb in l.cbs)


def test_run_without_setup_says_what_is_missing() -> None:
    l = k1lib.Learner()
    with pytest.raises(RuntimeError, match=r"model, data, opt, lossF not set") as info:
        l.run(1)
    assert "l.model = " in str(info.value)


def test_bad_css_fails_when_set() -> None:
    l = k1lib.Learner()
    with pytest.raises(ValueError, match="unknown pseudo-class"):
        l.css = "Linear:propA"
    assert l.css == "*"


class Interrupt(k1lib.Callback):
    def startStep(self) -> None:
        raise KeyboardInterrupt


def test_keyboard_interrupt_still_runs_endRun_and_restores_the_mode() -> None:
    l = learner()
    spy = Spy()
    l.cbs.append(Interrupt())
    l.cbs.append(spy)
    l.model.eval()
    with pytest.raises(KeyboardInterrupt):
        l.run(3)
    assert spy.seen[-1] == "endRun"
    assert not l.model.training
    assert torch.is_grad_enabled()  # DontTrainValid's no_grad never leaks out of a run


def test_timings_count_time_per_callback_and_event() -> None:
    l = learner()
    l.run(1)
    timings = l.cbs.timings
    assert set(timings.by_callback()) >= {"Loss", "DontTrainValid", "CancelOnExplosion"}
    assert timings.seconds[("Loss", "endLoss")] > 0
    assert "Loss" in repr(timings) and "endLoss" in repr(timings)
    fig = timings.plot()
    assert len(fig.axes[0].patches) == len(timings.by_callback())


def test_with_checkpoint_and_manual_events() -> None:
    l = learner()
    seen: list[int] = []
    l.cbs.withCheckpoint("endEpoch", lambda cb: seen.append(cb.epoch))
    l.Loss.withCheckpoint("startRun", lambda cb: seen.append(-1))
    l.run(2)
    assert seen == [-1, 0, 1]
    l.cbs("startRun")
    assert seen[-1] == -1
    with pytest.raises(ValueError, match="unknown event 'endEpcoh'; did you mean 'endEpoch'"):
        l.Loss.withCheckpoint("endEpcoh", print)


def test_detach_and_a_custom_callbacks_object() -> None:
    l = learner()
    l.Loss.detach()
    assert "Loss" not in l.cbs
    cbs = k1lib.Callbacks()
    l.cbs = cbs
    assert cbs.learner is l and len(l.cbs) == 0
    l.run(1)  # a run needs no callback at all
    with pytest.raises(TypeError, match=r"must be a k1lib\.Callbacks"):
        l.cbs = []  # type: ignore[assignment]


def test_dtype_casts_model_and_batches() -> None:
    l = learner()
    l.data.train = [(x.double(), y.double()) for x, y in l.data.train]
    l.data.valid = [(x.double(), y.double()) for x, y in l.data.valid]
    seen: list[torch.dtype] = []
    l.cbs.withDType(torch.float32).withInspectBatch(lambda xb, yb: seen.append(xb.dtype))
    l.run(1)
    assert set(seen) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in l.model.parameters())
    with pytest.raises(TypeError, match=r"needs a torch\.dtype"):
        l.cbs.withDType("float32")  # type: ignore[arg-type]


def test_loss_plot_slices_valid_in_proportion() -> None:
    l = learner(train=8, valid=2)
    l.run(5)  # 40 train losses, 10 valid
    fig = l.Loss.plot()[20:].plot()
    train_line, valid_line = fig.axes[0].lines[0], fig.axes[1].lines[0]
    assert list(train_line.get_xdata()) == list(range(20, 40))
    assert list(valid_line.get_xdata()) == list(range(5, 10))  # the same half of the run
    assert list(valid_line.get_ydata()) == pytest.approx(l.Loss.valid[5:])


def test_frozen_prop_freezes_for_the_run_and_restores() -> None:
    l = learner()
    l.css = "#0: frozen"
    l.model[2].bias.requires_grad_(False)  # already frozen before: must stay frozen
    first = [p.detach().clone() for p in l.model[0].parameters()]
    last = l.model[2].weight.detach().clone()
    seen: list[bool] = []
    l.cbs.withInspectBatch(lambda xb, yb: seen.append(l.model[0].weight.requires_grad))
    l.run(1)
    assert seen and not any(seen)  # frozen during the run
    assert all(torch.equal(a, b) for a, b in zip(first, l.model[0].parameters(), strict=True))
    assert not torch.equal(last, l.model[2].weight)  # the rest trained
    assert l.model[0].weight.requires_grad and l.model[0].bias.requires_grad  # restored
    assert not l.model[2].bias.requires_grad
    l.css = "*"  # "all" is not "frozen": everything trains
    l.run(1)
    assert not torch.equal(first[0], l.model[0].weight)


def test_css_optimizer_groups_parameters_by_rules() -> None:
    l = learner()
    l.opt = k1lib.cssOptimizer(l.model, torch.optim.SGD, {"#2": {"lr": 0.5}}, lr=0.01)
    groups = {g["lr"]: g["param_names"] for g in l.opt.param_groups}
    assert groups == {0.01: ["0.weight", "0.bias"], 0.5: ["2.weight", "2.bias"]}
    l.run(1)  # the groups train


def test_module_selector_freeze_hookF_hookB() -> None:
    l = learner()
    l.css = "#0: watch"
    tree = l.moduleSelector
    assert all(isinstance(node, type(tree)) for node in tree.modules())
    seen: list[str] = []
    with (
        tree.hookF(lambda path, m, i, o: seen.append(path)),
        tree.hookB(lambda path, m, grad, key: seen.append("back " + path)),
    ):
        l.model(torch.randn(3, 2, requires_grad=True)).sum().backward()
    assert seen == ["0", "back 0"]
    assert not l.model[0]._forward_hooks and not l.model[0]._backward_hooks
    with tree.freeze():
        assert not l.model[0].weight.requires_grad and l.model[2].weight.requires_grad
    assert l.model[0].weight.requires_grad


def test_batches_per_epoch_counts_both_loaders_within_the_limit() -> None:
    l = learner(train=5, valid=3)
    l.run(1)
    assert l.batches == 8 and l.batch == 8
    l.run(1, 2)
    assert l.batches == 4 and l.batch == 4


@pytest.mark.parametrize("batches", [-1, "2", 1.5, True])
def test_a_bad_batches_argument_fails_before_anything_is_frozen(batches: object) -> None:
    l = learner()
    l.css = "#0: frozen"
    with pytest.raises(ValueError, match=r"batches must be an int, 0 or more, or None, got"):
        l.run(1, batches)  # type: ignore[arg-type]
    assert all(p.requires_grad for p in l.model.parameters())


def test_a_cancel_raised_in_endRun_still_lets_every_callback_clean_up() -> None:
    l = learner()
    seen: list[str] = []

    class Early(k1lib.Callback):
        order = 0

        def endRun(self) -> None:
            raise k1lib.CancelRunException("stop")

    class Late(k1lib.Callback):
        order = 99

        def endRun(self) -> None:
            seen.append("late")

    l.cbs.append(Early()).append(Late())
    with pytest.raises(k1lib.CancelRunException):
        l.run(1)
    assert seen == ["late"]
    assert all(not m._forward_hooks for m in l.model.modules())
