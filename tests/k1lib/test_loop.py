"""The loop (``k1lib/_loop.py``): the phase is the learner's, the optimizer step is one pipeline
(``k1lib/_step.py``) checked against the raw torch loop it replaces, and the step events'
rules (every handler runs, the step comes before a cancel raised there)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import k1lib
from k1lib import Callback, CancelBatchException

from .helpers import Batches, learner


class Steps:
    """Counts the optimizer's steps (a post hook: no callback involved)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.count = 0
        opt.register_step_post_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1


# ---- the phase -----------------------------------------------------------------------------------


class EvalInBatch(Callback):
    """Fine-tuning with dropout off: the model goes to eval mode in every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.phases: list[bool] = []

    def startBatch(self) -> None:
        assert self.learner.model is not None
        self.learner.model.eval()
        self.phases.append(self.learner.training)


def test_model_eval_in_startBatch_still_trains() -> None:
    l = learner(train=6, valid=2)
    l.model = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 1))
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.css = "Linear: HookParam"
    before = [p.detach().clone() for p in l.model.parameters()]
    steps = Steps(l.opt)
    l.cbs.append(EvalInBatch())
    l.run(1)
    assert steps.count == 6  # every training batch stepped
    assert any(not torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))
    assert len(l.Loss.train) == 6 and len(l.Loss.valid) == 2  # filed by the phase, not the mode
    assert len(l.HookParam[0].means) == 6
    assert l.EvalInBatch.phases == [True] * 6 + [False] * 2


def test_the_phase_is_set_at_each_change_and_the_model_mode_follows() -> None:
    seen: list[tuple[str, bool, bool]] = []
    l = learner(train=2, valid=1)
    for event in ("startEpoch", "startBatch", "startValidBatches", "endEpoch"):
        l.cbs.withCheckpoint(
            event, lambda cb, e=event: seen.append((e, cb.learner.training, cb.model.training))
        )
    l.model.eval()
    l.run(1)
    assert seen == [
        ("startEpoch", True, False),  # the phase first; model.train() follows the event
        ("startBatch", True, True),
        ("startBatch", True, True),
        ("startValidBatches", False, False),
        ("startBatch", False, False),
        ("endEpoch", False, False),
    ]
    assert not l.model.training  # as before the run


# ---- the optimizer step --------------------------------------------------------------------------


def mse(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return ((y - yb) ** 2).mean()


def data(batches: int, seed: int = 3) -> Batches:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * 8, 4, generator=g)
    y = (x * torch.tensor([1.0, -2.0, 3.0, 0.5])).sum(1, keepdim=True) * 50  # large: clipping acts
    return Batches(list(zip(x.split(8), y.split(8), strict=True)), [])


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))


def hand_written(
    epochs: int, batches: int, n: int, max_norm: float
) -> tuple[nn.Module, torch.amp.GradScaler]:
    """float16 autocast, a GradScaler, accumulation of n batches (a last partial group of k
    stepped as its mean) and clipping, as the torch docs write them."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")

    def step() -> None:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(net.parameters(), max_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()

    for _ in range(epochs):
        pending = 0
        for xb, yb in data(batches).train:
            with torch.autocast("cpu", dtype=torch.float16):
                loss = mse(net(xb), yb)
            scaler.scale(loss / n).backward()
            pending += 1
            if pending == n:
                step()
                pending = 0
        if pending:
            for p in net.parameters():
                assert p.grad is not None
                p.grad.mul_(n / pending)
            step()
    return net, scaler


@pytest.mark.parametrize("batches", [6, 7])  # 7: a last group of 1
def test_float16_accumulation_and_clipping_match_the_hand_written_loop(batches: int) -> None:
    l = k1lib.Learner()
    l.model = model()
    l.data = data(batches)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=1e-3, momentum=0.9)
    l.lossF = mse
    for name in ("ProgressBar", "Autosave", "HookModule", "HookParam"):
        l.cbs.remove(name)
    l.cbs.withAutocast(torch.float16).withGradAccumulation(2).withGradClipping(1.0)
    l.run(3)
    net, scaler = hand_written(3, batches, 2, 1.0)
    for p, q in zip(l.model.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert l.Autocast.scaler.get_scale() == scaler.get_scale()
    assert l.GradAccumulation.pending == 0
    assert float(l.GradClipping.norm) > 1.0  # it clipped


class CancelAtStep(Callback):
    def startStep(self) -> bool:
        raise CancelBatchException("after the step")


class SkipStep(Callback):
    order = 20  # after CancelAtStep: runs although that one raised

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def startStep(self) -> bool:
        self.asked += 1
        return self.learner.batch == 1


def test_every_startStep_handler_runs_and_a_cancel_there_comes_after_the_step() -> None:
    l = learner(train=3, valid=0)
    steps = Steps(l.opt)
    events: list[str] = []
    l.cbs.append(CancelAtStep())
    l.cbs.append(SkipStep())
    l.cbs.withCheckpoint("cancelBatch", lambda cb: events.append(f"cancelBatch {cb.learner.batch}"))
    l.run(1)
    assert l.SkipStep.asked == 3
    assert steps.count == 2  # batch 1 skipped by SkipStep; the cancels did not skip any
    assert events == ["cancelBatch 0", "cancelBatch 1", "cancelBatch 2"]


def test_a_step_callback_added_mid_run_takes_part_from_the_next_batch() -> None:
    l = learner(train=4, valid=0)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    steps = Steps(l.opt)

    def add(cb: Callback) -> None:
        if cb.learner.batch == 1 and "GradAccumulation" not in cb.learner.cbs:
            cb.learner.cbs.withGradAccumulation(2)

    l.cbs.withCheckpoint("startBatch", add)
    l.run(1)
    assert steps.count == 3  # batch 0 alone, then batches 1-2, then 3 as the last partial group


# ---- batches ---------------------------------------------------------------------------------------


def test_a_batch_that_is_neither_a_pair_nor_a_mapping_is_refused_naming_it() -> None:
    l = learner()
    before = {k: v.clone() for k, v in l.model.state_dict().items()}
    l.data = Batches([(torch.zeros(4, 2), torch.zeros(4, 1), torch.zeros(4))], [])
    with pytest.raises(
        TypeError, match=r"a batch must be a pair \(xb, yb\) or a mapping.*a tuple of 3 items"
    ):
        l.run(1)
    for k, v in l.model.state_dict().items():
        assert torch.equal(v, before[k])


# ---- runs that end early leave nothing behind ------------------------------------------------------


def test_the_phase_is_as_before_after_a_run_cancelled_in_training() -> None:
    l = learner(train=3, valid=1)
    l.cbs.withCancelOnLowLoss(1e9)  # cancels in the first training batch
    l.run(1)
    assert l.training is False


class FailsOnce(torch.optim.SGD):
    """An optimizer whose second step fails (out of memory, say)."""

    calls = 0

    def step(self, closure: Any = None) -> Any:
        FailsOnce.calls += 1
        if FailsOnce.calls == 2:
            raise RuntimeError("out of memory (the test)")
        return super().step(closure)


def test_a_run_that_fails_in_the_step_leaves_no_gradients_nor_a_half_done_scaler() -> None:
    l = learner(train=3, valid=0)
    FailsOnce.calls = 0
    l.opt = FailsOnce(l.model.parameters(), lr=0.1)
    l.cbs.withAutocast(torch.float16).withGradClipping(1.0)
    with pytest.raises(RuntimeError, match="out of memory"):
        l.run(1)
    assert all(p.grad is None for p in l.model.parameters())
    before = [p.detach().clone() for p in l.model.parameters()]
    l.run(1)  # the scaler was unscaled and never updated: the next unscale_ failed
    assert FailsOnce.calls > 2
    assert any(not torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))


def test_autocast_suspended_in_the_middle_of_a_pass_is_left() -> None:
    l = learner(train=2, valid=0)
    l.cbs.withAutocast(torch.bfloat16)
    l.cbs.withCheckpoint("endPass", lambda cb: cb.learner.cbs.suspend(["Autocast"]))
    l.run(1)
    l.cbs.restore()
    assert not torch.is_autocast_enabled("cpu")


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x).detach()


def test_a_loss_without_a_gradient_is_named_before_backward() -> None:
    l = learner(train=2, valid=0)
    l.model = Detached()
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match=r"l\.loss is a tensor without a gradient"):
        l.run(1)


def test_an_output_mapping_with_a_loss_entry_needs_no_lossF() -> None:
    class Scored(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.a(x)
            return {"out": out, "loss": ((out - y) ** 2).mean()}

    l = learner(train=3, valid=0)
    l.model = Scored()
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.lossF = None
    l.data = Batches([{"x": xb, "y": yb} for xb, yb in l.data.train], [])  # type: ignore[misc]
    l.run(1)
    assert len(l.Loss.train) == 3


def test_a_mapping_of_inputs_with_keys_that_are_not_names_is_refused() -> None:
    l = learner(train=1, valid=0)
    l.data = Batches([({0: torch.zeros(4, 2)}, torch.zeros(4, 1))], [])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"keys must be strings; this one has the key 0"):
        l.run(1)


class StopInBackward(nn.Module):
    """Ctrl-C in the middle of a backward pass: after the last layer's gradients are written."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 4), nn.Linear(4, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.requires_grad:
            h.register_hook(self._stop)
        return self.b(torch.relu(h))  # type: ignore[no-any-return]

    def _stop(self, grad: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt


def test_a_run_stopped_inside_backward_leaves_no_gradients() -> None:
    l = learner(train=3, valid=0)
    l.model = StopInBackward()
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        l.run(1)
    assert all(p.grad is None for p in l.model.parameters())


def test_a_loss_entry_that_is_not_a_tensor_is_named_by_its_type() -> None:
    l = learner(train=1, valid=0)
    l.lossF = None
    l.model = nn.Sequential(nn.Linear(2, 1))
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.cbs.withModifyOutput(lambda y: {"out": y, "loss": 1.0})
    with pytest.raises(RuntimeError, match=r"has a loss of type float, not a tensor"):
        l.run(1)
