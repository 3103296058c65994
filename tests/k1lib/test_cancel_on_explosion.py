"""CancelOnExplosion: a loss above the limit or not finite cancels the run, read at once on the
CPU and through a non-blocking copy on CUDA (simulated here with CPU tensors)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from k1lib.callbacks.cancel_on_explosion import CancelOnExplosion

from .helpers import learner


def exploding(l: Any, at: int, value: float) -> list[int]:
    """Make training batch ``at`` (counted over the run) report ``value`` as its loss; returns
    the list of training batches whose loss was computed."""
    seen: list[int] = []
    plain = l.lossF

    def loss_f(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = plain(y, yb)
        if l.model.training:
            seen.append(len(seen))
            if seen[-1] == at:
                return loss * 0 + value
        return loss

    l.lossF = loss_f
    return seen


def quiet_learner(train: int = 5) -> Any:
    l = learner(train=train)
    l.cbs.remove("Autosave")
    return l


@pytest.mark.parametrize(
    ("value", "message"),
    [(float("nan"), "Loss is nan: not a finite number"), (2e6, "Loss exploded: 2e+06 > 1e+06")],
)
def test_on_the_cpu_the_batch_that_explodes_cancels_before_its_step(
    value: float, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    l = quiet_learner()
    seen = exploding(l, 2, value)
    l.run(2)
    assert seen == [0, 1, 2]
    assert f"Run cancelled: {message}." in capsys.readouterr().out
    assert all(torch.isfinite(p).all() for p in l.model.parameters())  # no step on that loss


def test_every_checks_one_batch_in_every() -> None:
    l = quiet_learner()
    l.cbs.remove("CancelOnExplosion")
    l.cbs.withCancelOnExplosion(every=3)
    seen = exploding(l, 1, 1e9)  # the 2nd batch is not checked: training goes on
    l.run(1)
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="every must be an int of 1 or more, got 0"):
        CancelOnExplosion(every=0)


class Deferred(CancelOnExplosion):
    """Reads every loss through a copy, as on CUDA (the copies land at once on the CPU)."""

    def _deferred(self, loss: torch.Tensor) -> bool:
        return True


def deferred_learner(train: int = 5) -> Any:
    l = quiet_learner(train)
    l.cbs.remove("CancelOnExplosion")
    l.cbs.append(Deferred(), "CancelOnExplosion")
    return l


def test_through_copies_it_cancels_one_batch_later(capsys: pytest.CaptureFixture[str]) -> None:
    l = deferred_learner()
    seen = exploding(l, 1, float("inf"))
    l.run(2)
    assert seen == [0, 1, 2]  # the copy of batch 1 is read at batch 2
    assert "Run cancelled: Loss is inf: not a finite number." in capsys.readouterr().out


def test_through_copies_an_explosion_in_the_last_batch_ends_the_epoch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    l = deferred_learner(train=3)
    seen = exploding(l, 2, 5e6)
    l.run(3)
    assert seen == [0, 1, 2]  # the second epoch never starts
    assert l.epoch == 0
    assert "Run cancelled: Loss exploded: 5e+06 > 1e+06." in capsys.readouterr().out


def test_through_copies_nan_survives_the_running_max() -> None:
    cb = Deferred()
    cb._worst = torch.tensor(float("nan"))
    worst = torch.maximum(cb._worst, torch.tensor(3.0))
    assert math.isnan(float(worst))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_no_batch_waits_for_the_gpu() -> None:
    l = quiet_learner(train=20)
    for name in ("Loss", "HookModule", "HookParam", "LossLandscape", "ParamFinder", "DontTrainValid"):
        l.cbs.remove(name)
    l.data.train = [(x.cuda(), y.cuda()) for x, y in l.data.train]  # nothing to copy per batch
    l.data.valid = []
    l.model.cuda()
    l.cbs.CancelOnExplosion.endEpoch = lambda: None  # its one wait an epoch is not a batch's
    l.run(1)  # warm up: the pinned buffers, CUDA's own first-use syncs
    torch.cuda.set_sync_debug_mode("error")
    try:
        l.run(1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
