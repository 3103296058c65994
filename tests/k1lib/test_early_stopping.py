"""``EarlyStopping`` and ``BestCheckpoint``: stop at the exact epoch a monitored quantity's
patience runs out, save and restore the best epoch bit for bit, keep their state across a
resume, and name the quantities there are when the monitor is unknown."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch

from k1lib.callbacks import BestCheckpoint, Callback, EarlyStopping

from .helpers import assert_same, learner


class Scripted(Callback):
    """Publishes ``"valid score"``: the next value of ``script`` at each epoch's end."""

    order = 20

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script = script
        self.values: list[float] = []

    def endEpoch(self) -> None:
        self.values.append(self.script[len(self.values)])

    def quantities(self) -> dict[str, list[float]]:
        return {"valid score": self.values}

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = list(state["values"])


def scripted(script: list[float]) -> Any:
    l = learner()
    l.cbs.remove("Autosave")
    l.cbs.append(Scripted(script))
    return l


def run(l: Any, epochs: int) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        l.run(epochs)
    return out.getvalue()


@pytest.mark.parametrize(
    ("script", "mode", "patience", "min_delta", "epochs_run"),
    [
        ([5, 4, 4.5, 4.2, 4.1, 1, 1, 1], "min", 3, 0.0, 5),  # best at 1, then 3 without: stop after 4
        ([5, 4, 4.5, 3.9, 4.1, 4.0, 4.2, 1], "min", 3, 0.0, 7),  # 3.9 resets the wait
        ([5, 4, 3.95, 3.92, 3.5, 1, 1, 1], "min", 2, 0.1, 4),  # 3.95, 3.92: less than minDelta better
        ([0.5, 0.6, 0.605, 0.61, 0.9, 0.9], "max", 2, 0.02, 4),
        ([1, 2, 3, 4, 5, 6], "max", 1, 0.0, 6),  # always improving: never stops
        ([1, 1, 1, 1, 1, 1], "min", 1, 0.0, 2),  # an equal value is no improvement
    ],
)
def test_stops_at_the_end_of_the_epoch_that_exhausts_patience(
    script: list[float], mode: str, patience: int, min_delta: float, epochs_run: int
) -> None:
    l = scripted(script)
    l.cbs.withEarlyStopping("valid score", patience=patience, mode=mode, minDelta=min_delta)
    out = run(l, len(script))
    assert len(l.Loss.epoch.train) == len(l.Scripted.values) == epochs_run
    stopped = epochs_run < len(script)
    assert ("Run cancelled: Early stopping: valid score has not improved" in out) == stopped
    assert l.EarlyStopping.wait == (patience if stopped else l.EarlyStopping.wait)


def expected_stop(values: list[float], patience: int) -> int:
    """The number of epochs a min-mode early stop lets run, computed from the values alone."""
    best, wait = float("inf"), 0
    for i, value in enumerate(values):
        best, wait = (value, 0) if value < best else (best, wait + 1)
        if wait >= patience:
            return i + 1
    return len(values)


def test_on_the_real_validation_loss_of_a_diverging_run() -> None:
    l = learner()
    l.cbs.remove("Autosave")
    l.cbs.remove("CancelOnExplosion")
    for group in l.opt.param_groups:
        group["lr"] = 0.45  # large enough that the validation loss goes up and down
    l.cbs.withEarlyStopping(patience=2)
    run(l, 30)
    valid = l.Loss.epoch.valid
    assert len(valid) < 30  # it did stop
    assert len(valid) == expected_stop(valid, 2)


def test_an_unknown_monitor_fails_at_the_start_listing_the_quantities() -> None:
    l = learner()
    l.cbs.withAccuracy()
    l.cbs.withEarlyStopping("valid acuracy")
    with pytest.raises(KeyError, match="did you mean 'valid accuracy'") as info:
        l.run(3)
    for name in ("train loss", "valid loss", "train accuracy", "valid accuracy"):
        assert repr(name) in str(info.value)
    assert l.epoch == 0 and l.Loss.epoch.train == []  # nothing ran
    l = learner()
    l.cbs.withBestCheckpoint("best.pth", monitor="valid f1")
    with pytest.raises(KeyError, match="no recorded quantity 'valid f1'"):
        l.run(1)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping(mode="lowest")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="minDelta"):
        EarlyStopping(minDelta=-1)
    with pytest.raises(TypeError, match="path"):
        BestCheckpoint(3)  # type: ignore[arg-type]


def test_a_resumed_run_keeps_counting(tmp_path: Path) -> None:
    script = [3, 2, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0, 3.1]
    l = scripted(script)
    l.cbs.withEarlyStopping("valid score", patience=3)
    run(l, 4)  # wait 2 after epoch 3
    assert (l.EarlyStopping.best, l.EarlyStopping.wait) == (2, 2)
    l.save(tmp_path / "mid.pth")
    resumed = scripted(script)
    resumed.cbs.withEarlyStopping("valid score", patience=3)
    resumed.load(tmp_path / "mid.pth")
    assert resumed.EarlyStopping.state_dict() == l.EarlyStopping.state_dict()
    out = run(resumed, 5)  # one more epoch without improvement ends it
    assert len(resumed.Scripted.values) == 5
    assert "Early stopping" in out
    # a fresh one would have run 4 epochs more
    fresh = scripted(script[4:])
    fresh.cbs.withEarlyStopping("valid score", patience=3)
    run(fresh, 5)
    assert len(fresh.Scripted.values) == 4


class Snapshots(Callback):
    """The model's weights at each epoch's end."""

    order = 50

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[dict[str, torch.Tensor]] = []

    def endEpoch(self) -> None:
        self.weights.append({k: v.clone() for k, v in self.learner.model.state_dict().items()})


@pytest.mark.parametrize("restore", [True, False])
def test_best_checkpoint_saves_the_best_epoch_and_restores_it_bit_for_bit(
    tmp_path: Path, restore: bool
) -> None:
    script = [3.0, 1.0, 2.0, 1.5, 2.5]  # best at epoch 1; the model trains on after it
    l = scripted(script)
    path = tmp_path / "best.pth"
    l.cbs.withBestCheckpoint(path, monitor="valid score", restoreBest=restore).append(Snapshots())
    run(l, 5)
    snaps = l.Snapshots.weights
    assert not torch.equal(snaps[1]["0.weight"], snaps[4]["0.weight"])
    assert l.BestCheckpoint.best == 1.0 and l.BestCheckpoint.bestEpoch == 1
    assert_same(l.model.state_dict(), snaps[1] if restore else snaps[4])
    # the file is a checkpoint of epoch 1 that l.load reads
    other = scripted(script)
    other.cbs.withBestCheckpoint(path, monitor="valid score")
    other.load(path)
    assert_same(other.model.state_dict(), snaps[1])
    assert other.Scripted.values == [3.0, 1.0]
    assert other.Loss.epoch.valid == l.Loss.epoch.valid[:2]
    assert other.BestCheckpoint.best == 1.0


def test_best_checkpoint_on_max_with_a_metric_and_a_missing_folder(tmp_path: Path) -> None:
    l = scripted([0.1, 0.3, 0.2])
    l.cbs.withBestCheckpoint(tmp_path / "nowhere" / "b.pth", monitor="valid score", mode="max")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        l.run(1)
    l = scripted([0.1, 0.3, 0.2])
    l.cbs.withBestCheckpoint(tmp_path / "b.pth", monitor="valid score", mode="max", restoreBest=True)
    l.cbs.append(Snapshots())
    run(l, 3)
    assert l.BestCheckpoint.bestEpoch == 1
    assert_same(l.model.state_dict(), l.Snapshots.weights[1])


def test_restore_best_in_a_resumed_run_reads_the_earlier_best_from_the_file(tmp_path: Path) -> None:
    script = [2.0, 1.0, 3.0, 4.0]
    path = tmp_path / "best.pth"
    l = scripted(script)
    l.cbs.withBestCheckpoint(path, monitor="valid score", restoreBest=True).append(Snapshots())
    run(l, 2)
    l.save(tmp_path / "end.pth")
    resumed = scripted(script)
    resumed.cbs.withBestCheckpoint(path, monitor="valid score", restoreBest=True)
    resumed.load(tmp_path / "end.pth")
    run(resumed, 2)  # 3.0, 4.0: no better; the best is epoch 1 of the first run
    assert_same(resumed.model.state_dict(), l.Snapshots.weights[1])


def test_early_stopping_with_best_checkpoint_ends_on_the_best_weights(tmp_path: Path) -> None:
    l = scripted([4, 3, 3.5, 3.6, 3.7, 1])
    l.cbs.withEarlyStopping("valid score", patience=2).append(Snapshots())
    l.cbs.withBestCheckpoint(tmp_path / "b.pth", "valid score", restoreBest=True)
    run(l, 6)
    assert len(l.Snapshots.weights) == 4  # stopped after epoch 3
    assert_same(l.model.state_dict(), l.Snapshots.weights[1])
