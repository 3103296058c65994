"""Metrics (``cbs.withMetric``, ``cbs.withAccuracy``): per-epoch values equal to a hand
computation over the same batches, kept on the device during the epoch, published by name,
shown by the progress bar, plotted and saved in checkpoints."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

if __name__ == "__main__":  # run by torchrun as the DDP worker: the checkout's k1lib
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import k1lib
from k1lib.callbacks import Accuracy, Callbacks, Metric
from k1lib.callbacks.metrics import latest, quantities


@dataclass
class Data:
    train: list[tuple[torch.Tensor, torch.Tensor]]
    valid: list[tuple[torch.Tensor, torch.Tensor]]


def _split(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def classifier(lr: float = 0.0, quiet: bool = True) -> Any:
    """5 classes, 8 features; 23 training samples in batches of 6 (the last of 5), 13
    validation samples in batches of 4 (the last of 1). With ``lr=0`` the model never changes,
    so a hand computation with it sees what the run saw."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    xt, yt = torch.randn(23, 8, generator=g), torch.randint(0, 5, (23,), generator=g)
    xv, yv = torch.randn(13, 8, generator=g), torch.randint(0, 5, (13,), generator=g)
    l = k1lib.Learner()
    l.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    l.data = Data(_split(xt, yt, 6), _split(xv, yv, 4))
    l.opt = torch.optim.SGD(l.model.parameters(), lr=lr)
    l.lossF = nn.functional.cross_entropy
    l.cbs.remove("Autosave")
    if quiet:
        l.cbs.remove("ProgressBar")
    return l


def _by_hand(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            top = model(x).topk(k, dim=-1).indices
            correct += int((top == y[:, None]).any(-1).sum())
            total += len(y)
    return correct / total


def test_accuracy_and_top_k_equal_a_hand_count_over_uneven_batches() -> None:
    l = classifier()
    l.cbs.withAccuracy().withAccuracy(topk=3)
    l.run(2)
    for k, cb in ((1, l.cbs["accuracy"]), (3, l.cbs["top3 accuracy"])):
        train, valid = _by_hand(l.model, l.data.train, k), _by_hand(l.model, l.data.valid, k)
        assert cb.epoch.train == [train, train]
        assert cb.epoch.valid == [valid, valid]
    # sample-weighted, not a mean of batch means (which the 1-sample last batch would skew)
    with torch.no_grad():
        means = [float((l.model(x).argmax(-1) == y).float().mean()) for x, y in l.data.valid]
    assert sum(means) / len(means) != pytest.approx(l.accuracy.epoch.valid[0])


def test_a_metric_of_per_sample_values_or_of_batch_means_is_the_mean_over_samples() -> None:
    l = classifier()
    l.cbs.withMetric("abs", lambda y, yb: y.abs().sum(-1))  # one value per sample
    l.cbs.withMetric("mean abs", lambda y, yb: y.abs().sum(-1).mean())  # the batch's mean
    l.run(1)
    with torch.no_grad():
        for phase in ("train", "valid"):
            x = torch.cat([xb for xb, _ in getattr(l.data, phase)])
            expected = float(l.model(x).abs().sum(-1).double().mean())
            assert getattr(l.abs.epoch, phase)[0] == pytest.approx(expected, rel=1e-6)
            assert getattr(l.cbs["mean abs"].epoch, phase)[0] == pytest.approx(expected, rel=1e-6)


def test_metrics_follow_the_model_as_it_trains() -> None:
    l = classifier(lr=0.5)
    weights: list[dict[str, torch.Tensor]] = []
    # the model at the end of each epoch's training batches is what validation saw
    l.cbs.withCheckpoint(
        "startValidBatches",
        lambda cb: weights.append({k: v.clone() for k, v in cb.learner.model.state_dict().items()}),
    )
    l.cbs.withAccuracy()
    l.run(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    expected = []
    for state in weights:
        model.load_state_dict(state)
        expected.append(_by_hand(model, l.data.valid, 1))
    assert l.accuracy.epoch.valid == expected
    assert len(set(l.Loss.epoch.train)) == 3  # it did train


def test_no_tensor_is_read_on_the_host_inside_batches(host_reads_raise_in_batches: Any) -> None:
    l = classifier(lr=0.1)
    l.cbs = Callbacks()  # only what is tested: the loop, Loss and the metrics
    host_reads_raise_in_batches(l.cbs)
    l.cbs.withLoss().withAccuracy().withAccuracy(2).withMetric("norm", lambda y, yb: y.norm(dim=-1).mean())
    l.run(2)
    assert len(l.accuracy.epoch.valid) == len(l.cbs["top2 accuracy"].epoch.train) == 2
    # the guard works: the same read in a batch fails
    l.cbs.withCheckpoint("endLoss", lambda cb: cb.learner.loss.item(), name="Reader")
    with pytest.raises(AssertionError, match="host sync"):
        l.run(1)


def test_quantities_are_published_by_name_and_the_progress_bar_shows_the_latest() -> None:
    l = classifier(quiet=False)
    out = io.StringIO()
    l.cbs.remove("ProgressBar")
    l.cbs.append(k1lib.callbacks.ProgressBar(stream=out))
    l.cbs.withAccuracy()
    assert set(quantities(l.cbs)) == {"train loss", "valid loss", "train accuracy", "valid accuracy"}
    assert latest(l.cbs) == {}
    l.run(2)
    values = latest(l.cbs)
    assert values["valid accuracy"] == l.accuracy.epoch.valid[-1]
    assert values["train loss"] == l.Loss.epoch.train[-1]
    *epochs, last = out.getvalue().strip().splitlines()
    assert epochs[-1].startswith("epoch 1/2  train loss ")
    assert f"  valid accuracy {values['valid accuracy']:.4g}" in epochs[-1]
    assert f"  train accuracy {l.accuracy.epoch.train[0]:.4g}" in epochs[0]
    assert last.startswith("Progress: 100%, epoch:  1/2")


def test_metric_values_are_saved_in_checkpoints(tmp_path: Path) -> None:
    l = classifier(lr=0.1)
    l.cbs.withAccuracy(topk=2)
    l.run(2)
    l.save(tmp_path / "c.pth")
    other = classifier(lr=0.1)
    other.cbs.withAccuracy(topk=2)
    other.load(tmp_path / "c.pth")
    cb = other.cbs["top2 accuracy"]
    assert cb.epoch.train == l.cbs["top2 accuracy"].epoch.train
    assert cb.epoch.valid == l.cbs["top2 accuracy"].epoch.valid
    other.run(1)
    assert len(cb.epoch.valid) == 3


def test_the_plot_draws_both_phases(tmp_path: Path) -> None:
    l = classifier()
    l.cbs.withAccuracy()
    l.run(3)
    plot = l.accuracy.plot()
    fig = plot.plot()
    assert [len(line.get_xdata()) for line in fig.axes[0].lines] == [3, 3]
    plot[1:].save(tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 0


def test_bad_arguments_and_outputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="topk must be an int of 1 or more"):
        Accuracy(topk=0)
    with pytest.raises(TypeError, match="f must be a function"):
        Metric("m", 3)  # type: ignore[arg-type]
    l = classifier()
    l.cbs.withMetric("bad", lambda y, yb: 1.0)
    with pytest.raises(TypeError, match="must return a tensor"):
        l.run(1)
    l = classifier()
    l.cbs.withAccuracy()
    l.data = Data([(torch.randn(4, 8), torch.randn(4, 5))], [])
    l.lossF = nn.functional.mse_loss
    with pytest.raises(ValueError, match=r"class indices"):
        l.run(1)


# ---- two processes (DDP on the CPU, gloo): this file is its own torchrun worker --------------


def _ddp_rank(out: Path) -> None:
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    l = classifier()  # lr 0: the hand count over all batches is what the ranks saw together
    l.data = Data(l.data.train[:4], l.data.valid[:4])  # 6+6 | 6+5 and 4+4 | 4+1 samples a rank
    l.cbs.remove("LossLandscape")
    l.cbs.remove("ParamFinder")
    l.cbs.withAccuracy().withEarlyStopping("valid accuracy", patience=2, mode="max")
    l.cbs.withCheckpoint("startBatch", lambda cb: seen.append(len(cb.learner.yb)), name="Seen")
    seen: list[int] = []
    with contextlib.redirect_stdout(io.StringIO()):
        l.run(5)
    torch.save(
        {"accuracy": l.accuracy.state_dict(), "stopping": l.EarlyStopping.state_dict(), "seen": seen},
        out / f"rank{rank}.pt",
    )


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_two_ranks_record_the_accuracy_of_all_samples_and_stop_together(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    l = classifier()
    train, valid = _by_hand(l.model, l.data.train[:4], 1), _by_hand(l.model, l.data.valid[:4], 1)
    for got in ranks:
        # the same on both ranks: sums and counts combined, not a mean of the ranks' means
        assert got["accuracy"] == {"epoch_train": [train] * 3, "epoch_valid": [valid] * 3}
        # a constant accuracy: best at epoch 0, two epochs without, stopped on both ranks at 3
        assert got["stopping"]["wait"] == 2 and got["stopping"]["best"] == valid
    assert sum(ranks[0]["seen"]) != sum(ranks[1]["seen"])  # the ranks saw different sample counts


if __name__ == "__main__":
    _ddp_rank(Path(sys.argv[1]))


class _Scores(nn.Module):
    """Returns fixed token scores: class 1 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.zeros(1, 4, 3)
        y[..., 1] = 1
        return y + self.p


def _token_learner(labels: torch.Tensor) -> k1lib.Learner:
    l = k1lib.Learner()
    l.model = _Scores()
    l.data = k1lib.data.Data([(torch.zeros(1), labels)], [(torch.zeros(1), labels)])
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.0)
    l.lossF = lambda y, yb: nn.functional.cross_entropy(y.flatten(0, 1), yb.flatten())
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    return l


def test_accuracy_leaves_out_ignored_targets_as_cross_entropy_does() -> None:
    labels = torch.tensor([[1, 0, -100, -100]])  # 1 of the 2 labelled tokens right; 2 padding
    l = _token_learner(labels)
    l.cbs.withAccuracy().withAccuracy(name="counting padding", ignoreIndex=None)
    l.run(1)
    assert l.accuracy.epoch.valid == [0.5]
    assert l.cbs["counting padding"].epoch.valid == [0.25]


def test_accuracy_on_a_model_output_that_is_not_a_tensor_says_what_to_do() -> None:
    @dataclass
    class Output:
        logits: torch.Tensor

    with pytest.raises(ValueError, match=r"y and yb to be tensors.*got Output and Tensor.*withMetric"):
        Accuracy().f(Output(torch.zeros(2, 3)), torch.zeros(2))
