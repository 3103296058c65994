"""Autocast, the gradient scaler, gradient accumulation and clipping: each against the raw
torch loop it replaces, and the state they leave behind."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn

import k1lib
from k1lib.callbacks import Autocast, CancelBatchException

from .helpers import Batches, learner

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def mse(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return ((y - yb) ** 2).mean()


def data(sizes: list[int], seed: int = 1) -> Batches:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), 2, generator=g)
    y = x.sum(1, keepdim=True)
    return Batches(list(zip(x.split(sizes), y.split(sizes), strict=True)), [])


def trained(sizes: list[int], build: Any = None, epochs: int = 2, momentum: float = 0.9) -> Any:
    l = learner()
    l.data = data(sizes)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.05, momentum=momentum)
    if build is not None:
        build(l.cbs)
    l.run(epochs)
    return l


def fresh_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    # as learner() builds it: the same initial weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def assert_same_weights(a: nn.Module, b: nn.Module, exact: bool = False) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        if exact:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---- autocast ------------------------------------------------------------------------------------


class Probe(nn.Module):
    """Records the autocast state its forward runs under; fails on call ``failAt``."""

    def __init__(self, failAt: int = -1) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.seen: list[tuple[bool, torch.dtype]] = []
        self.failAt = failAt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.seen) == self.failAt:
            raise RuntimeError("boom")
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        out: torch.Tensor = self.lin(x)
        return out


def test_bf16_autocast_covers_the_forward_pass_only() -> None:
    l = learner()
    l.model = Probe()
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    outputs: list[torch.dtype] = []
    during_backward: list[bool] = []
    l.cbs.withInspectOutput(lambda y: outputs.append(y.dtype)).withAutocast()
    l.cbs.withCheckpoint("startStep", lambda cb: during_backward.append(torch.is_autocast_enabled("cpu")))
    l.run(1)
    assert l.model.seen == [(True, torch.bfloat16)] * 5  # 3 training and 2 validation batches
    assert set(outputs) == {torch.bfloat16}
    assert during_backward == [False] * 5
    assert l.Autocast.scaler is None and not torch.is_autocast_enabled("cpu")
    assert all(p.dtype == torch.float32 for p in l.model.parameters())


def test_no_autocast_state_leaks_after_an_exception_in_the_forward_pass() -> None:
    l = learner()
    l.model = Probe(failAt=1)
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    l.cbs.withAutocast()
    with pytest.raises(RuntimeError, match="boom"):
        l.run(1)
    assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled()


def test_a_cancelled_batch_leaves_autocast() -> None:
    def cancel(cb: Any) -> None:
        raise CancelBatchException

    l = learner()
    seen: list[bool] = []
    l.cbs.withAutocast().withCheckpoint("endPass", cancel)
    l.cbs.withCheckpoint("endBatch", lambda cb: seen.append(torch.is_autocast_enabled("cpu")))
    l.run(1)
    assert seen == [False] * 5


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match=r"floating torch\.dtype"):
        Autocast("bf16")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="GradScaler"):
        Autocast(torch.float16, scaler="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        k1lib.Callbacks().withGradAccumulation(0)
    with pytest.raises(ValueError, match="maxNorm must be a number > 0"):
        k1lib.Callbacks().withGradClipping(-1.0)


# ---- the gradient scaler ---------------------------------------------------------------------


def test_fp16_scaler_and_clipping_match_the_raw_amp_loop() -> None:
    sizes = [4] * 6
    l = trained(sizes, lambda cbs: cbs.withAutocast(torch.float16).withGradClipping(0.5), epochs=1)
    assert isinstance(l.Autocast.scaler, torch.amp.GradScaler)

    model, opt = fresh_model()
    scaler = torch.amp.GradScaler("cpu")
    skipped = 0
    for xb, yb in data(sizes).train:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = mse(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < before
        opt.zero_grad()
    assert_same_weights(l.model, model, exact=True)
    assert l.Autocast.scaler.get_scale() == scaler.get_scale()
    assert l.Autocast.skipped == skipped
    assert isinstance(l.GradClipping.norm, torch.Tensor) and torch.equal(l.GradClipping.norm, norm)
    assert all(torch.isfinite(torch.tensor(l.Loss.train)))  # the unscaled losses


def test_skipped_steps_are_counted_not_explosions() -> None:
    # a scale so large that the first gradients overflow: those steps are skipped
    init = 2.0**127
    scaler = torch.amp.GradScaler("cpu", init_scale=init, growth_interval=10**6)
    l = learner(train=24)
    l.lossF = lambda y, yb: mse(y, yb) * 1e4  # large gradients: a few skipped steps
    l.opt = torch.optim.SGD(l.model.parameters(), lr=1e-6)
    snapshots: list[list[torch.Tensor]] = [[p.detach().clone() for p in l.model.parameters()]]
    l.cbs.withAutocast(torch.bfloat16, scaler=scaler)
    l.cbs.withCheckpoint(
        "endBatch",
        lambda cb: (
            cb.model.training and snapshots.append([p.detach().clone() for p in cb.model.parameters()])
        ),
    )
    l.run(1)
    assert "CancelOnExplosion" in l.cbs
    assert len(l.Loss.train) == 24  # not cancelled
    skipped = l.Autocast.skipped
    assert 0 < skipped < 24
    assert scaler.get_scale() == init * 0.5**skipped
    unchanged = sum(
        all(torch.equal(p, q) for p, q in zip(a, b, strict=True)) for a, b in itertools.pairwise(snapshots)
    )
    assert unchanged == skipped


def test_a_skipped_backward_skips_the_scaler_too() -> None:
    l = learner()
    l.cbs.withDontTrain().withAutocast(torch.float16)
    before = [p.clone() for p in l.model.parameters()]
    l.run(1)
    assert l.Autocast.skipped == 0 and l.Autocast.scaler.get_scale() == 2.0**16
    assert all(torch.equal(p, q) for p, q in zip(before, l.model.parameters(), strict=True))


def test_scaler_state_round_trips_through_a_checkpoint() -> None:
    def build(cbs: Any) -> None:
        cbs.withAutocast(torch.float16)

    a = trained([4] * 6, build, epochs=1)
    a.save("amp.pth")
    b = learner()
    b.data = data([4] * 6)
    b.opt = torch.optim.SGD(b.model.parameters(), lr=0.05, momentum=0.9)
    build(b.cbs)
    b.load("amp.pth")
    assert b.Autocast.skipped == a.Autocast.skipped
    assert b.Autocast.scaler is None  # made at startRun, on the model's device type
    b.run(0)
    assert b.Autocast.scaler.get_scale() == a.Autocast.scaler.get_scale()
    assert b.Autocast.state_dict() == a.Autocast.state_dict()


# ---- accumulation and clipping ----------------------------------------------------------------


def test_accumulating_two_batches_of_4_equals_batches_of_8() -> None:
    small = trained([4] * 4, lambda cbs: cbs.withGradAccumulation(2))
    big = trained([8] * 2)
    assert_same_weights(small.model, big.model)


def test_a_last_incomplete_group_steps_as_one_batch() -> None:
    small = trained([4] * 3, lambda cbs: cbs.withGradAccumulation(2))
    big = trained([8, 4])
    assert_same_weights(small.model, big.model)
    assert small.GradAccumulation.pending == 0


def test_accumulation_records_each_batch_unscaled_loss() -> None:
    l = trained([4] * 4, lambda cbs: cbs.withGradAccumulation(2), epochs=1)
    model, _ = fresh_model()
    with torch.no_grad():  # no step between the first two batches: same weights
        first = [float(mse(model(xb), yb)) for xb, yb in data([4] * 4).train[:2]]
    assert l.Loss.train[:2] == pytest.approx(first, rel=1e-6)


def test_clipping_under_accumulation_clips_each_complete_group_once() -> None:
    l = trained([4] * 4, lambda cbs: cbs.withGradAccumulation(2).withGradClipping(0.05), epochs=1)
    model, opt = fresh_model()
    for i, (xb, yb) in enumerate(data([4] * 4).train):
        (mse(model(xb), yb) / 2).backward()
        if i % 2 == 1:
            norm = nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
            opt.zero_grad()
    assert_same_weights(l.model, model)
    assert l.GradClipping.norm is not None
    torch.testing.assert_close(l.GradClipping.norm, norm)


# ---- CUDA ----------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_fp16_with_scaler_trains_with_the_default_callbacks() -> None:
    l = learner(train=8)
    l.cbs.withCuda().withAutocast(torch.float16).withGradClipping(1.0).withGradAccumulation(2)
    dtypes: list[torch.dtype] = []
    l.cbs.withInspectOutput(lambda y: dtypes.append(y.dtype))
    l.run(2)
    assert set(dtypes) == {torch.float16}
    assert l.Autocast.scaler is not None and l.Autocast.scaler.is_enabled()
    assert l.GradClipping.norm is not None and l.GradClipping.norm.device.type == "cuda"
    assert len(l.Loss.train) == 16 and l.Autocast.skipped >= 0
    assert not torch.is_autocast_enabled("cuda")


@needs_cuda
def test_cuda_bf16_autocast() -> None:
    l = learner()
    dtypes: list[torch.dtype] = []
    l.cbs.withCuda().withAutocast().withInspectOutput(lambda y: dtypes.append(y.dtype))
    l.run(1)
    assert set(dtypes) == {torch.bfloat16} and l.Autocast.scaler is None


def test_fp16_validation_batches_that_train_step_through_the_scaler() -> None:
    # without DontTrainValid, validation batches train too: their gradients are scaled as well,
    # so a plain opt.step() on them would write scaled (or inf) gradients into the weights
    l = learner()
    l.cbs.remove("DontTrainValid")
    l.cbs.withAutocast(torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**16))
    l.run(2)
    assert all(torch.isfinite(p).all() for p in l.model.parameters())
    assert l.Autocast.skipped < 2 * (len(l.data.train) + len(l.data.valid))
