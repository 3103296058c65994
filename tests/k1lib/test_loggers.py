"""Loggers (``cbs.withTensorBoard``, ``cbs.withCSV``): what TensorBoard's own reader and the csv
module read back equals what k1lib recorded (quantities, lrs, HookModule / HookParam statistics,
parameters); a resumed learner writes on with no duplicate steps; only rank 0 writes; nothing
is read on the host inside batches; a missing ``tensorboard`` says how to install it."""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from k1lib import _distributed
from k1lib.callbacks import Callback, Callbacks, CSVLogger, TensorBoard
from k1lib.callbacks.metrics import quantities

from .helpers import batches, learner


def f32(x: float) -> float:
    """``x`` as TensorBoard stores a scalar (float32)."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files in ``folder``, as TensorBoard reads them."""
    acc = events(folder)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def by_epoch(values: list[float]) -> list[tuple[int, float]]:
    return [(i, f32(v)) for i, v in enumerate(values)]


def texts(written: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, str]]]:
    """The values as text: a NaN equals a NaN."""
    return {tag: [(step, repr(value)) for step, value in points] for tag, points in written.items()}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def quiet(train: int = 3, valid: int = 2) -> Any:
    l = learner(train, valid)
    l.cbs.remove("Autosave")
    return l


class Snapshots(Callback):
    """The model's parameters at each epoch's end (before the loggers, order 50, write them)."""

    order = 45

    def __init__(self) -> None:
        super().__init__()
        self.params: list[dict[str, torch.Tensor]] = []

    def endEpoch(self) -> None:
        self.params.append({k: v.detach().clone() for k, v in self.learner.model.named_parameters()})


# ---- TensorBoard: what it wrote is what was recorded ----------------------------------------------


def test_tensorboard_scalars_equal_the_recorded_quantities_lrs_and_hook_statistics(tmp_path: Path) -> None:
    l = quiet()
    l.css = "Linear: HookModule\n#2: HookParam"
    l.cbs.withMetric("mae", lambda y, yb: (y - yb).abs()).withOneCycle(0.1)
    l.cbs.withTensorBoard(tmp_path / "tb")
    l.run(3)
    q = quantities(l.cbs)
    for phase in ("train", "valid"):  # one run a phase, the tag without it
        expected = {"loss": by_epoch(q[f"{phase} loss"]), "mae": by_epoch(q[f"{phase} mae"])}
        assert scalars(tmp_path / "tb" / phase) == expected
    lrs = l.OneCycle.lrs
    assert len(lrs) == 9 and len(set(map(tuple, lrs))) > 3  # one per optimizer step, changing
    assert scalars(tmp_path / "tb" / "lr") == {"lr": [(i, f32(step[0])) for i, step in enumerate(lrs)]}
    root = scalars(tmp_path / "tb")
    hm, hp = l.HookModule, l.HookParam
    expected: dict[str, list[tuple[int, float]]] = {}
    for i, module in enumerate(("0", "2")):
        for direction in ("forward", "backward"):
            for stat in ("means", "stds"):
                per_batch = getattr(getattr(hm[i], direction), stat)  # 3 training batches an epoch
                epochs = [float(per_batch[3 * e : 3 * e + 3].mean()) for e in range(3)]
                expected[f"HookModule/{direction}/{stat}/{module}"] = by_epoch(epochs)
    for i, name in enumerate(("2.weight", "2.bias")):
        p = hp[i]
        for stat, reduce in (("means", "mean"), ("stds", "mean"), ("mins", "min"), ("maxs", "max")):
            per_batch = getattr(p, stat)
            expected[f"HookParam/{stat}/{name}"] = by_epoch(
                [float(getattr(per_batch[3 * e : 3 * e + 3], reduce)()) for e in range(3)]
            )
    assert texts(root) == texts(expected)  # NaN where recorded: the std of a one-element bias


@pytest.mark.parametrize(("css", "names"), [("#2: HookParam", ["2.weight", "2.bias"]), ("*", None)])
def test_parameter_histograms_once_an_epoch(tmp_path: Path, css: str, names: list[str] | None) -> None:
    l = quiet()
    l.css = css
    snaps = Snapshots()
    l.cbs.append(snaps).withTensorBoard(tmp_path / "tb", histograms=True)
    l.run(2)
    acc = events(tmp_path / "tb")
    names = names or [n for n, _ in l.model.named_parameters()]  # no HookParam selection: all
    assert sorted(acc.Tags()["histograms"]) == sorted(f"params/{n}" for n in names)
    for n in names:
        hist = acc.Histograms(f"params/{n}")
        assert [h.step for h in hist] == [0, 1]
        for h, params in zip(hist, snaps.params, strict=True):
            p = params[n]
            assert h.histogram_value.num == p.numel()
            assert (h.histogram_value.min, h.histogram_value.max) == (float(p.min()), float(p.max()))
    assert not torch.equal(snaps.params[0]["2.weight"], snaps.params[1]["2.weight"])  # it trained


def test_without_a_scheduler_the_lr_of_each_param_group_once_an_epoch(tmp_path: Path) -> None:
    l = quiet()
    l.opt = torch.optim.SGD(
        [{"params": l.model[0].parameters(), "lr": 0.1}, {"params": l.model[2].parameters(), "lr": 0.02}]
    )
    l.cbs.withTensorBoard(tmp_path / "tb").withCSV(tmp_path / "log.csv")
    l.run(2)
    l.opt.param_groups[1]["lr"] = 0.005
    l.run(1)  # a second run: epochs count on
    assert scalars(tmp_path / "tb" / "lr") == {
        "lr/group0": [(0, f32(0.1)), (1, f32(0.1)), (2, f32(0.1))],
        "lr/group1": [(0, f32(0.02)), (1, f32(0.02)), (2, f32(0.005))],
    }
    assert [(r["epoch"], r["lr/group0"], r["lr/group1"]) for r in rows(tmp_path / "log.csv")] == [
        ("0", "0.1", "0.02"),
        ("1", "0.1", "0.02"),
        ("2", "0.1", "0.005"),
    ]
    assert scalars(tmp_path / "tb" / "train")["loss"] == by_epoch(l.Loss.epoch.train)


# ---- resuming -----------------------------------------------------------------------------------------


def logged(l: Any, tmp_path: Path) -> Any:
    l.cbs.withScheduler(torch.optim.lr_scheduler.StepLR(l.opt, step_size=2, gamma=0.5))
    l.cbs.withTensorBoard(tmp_path / "tb").withCSV(tmp_path / "log.csv")
    return l


def assert_written(l: Any, tmp_path: Path, epochs: int) -> None:
    """The event files and the CSV hold each of ``epochs`` epochs once, as ``l`` recorded them."""
    q = quantities(l.cbs)
    assert len(q["train loss"]) == epochs
    assert scalars(tmp_path / "tb" / "train") == {"loss": by_epoch(q["train loss"])}
    assert scalars(tmp_path / "tb" / "valid") == {"loss": by_epoch(q["valid loss"])}
    lrs = l.Scheduler.lrs
    assert scalars(tmp_path / "tb" / "lr") == {"lr": [(i, f32(step[0])) for i, step in enumerate(lrs)]}
    table = rows(tmp_path / "log.csv")
    assert [int(r["epoch"]) for r in table] == list(range(epochs))
    assert [float(r["train loss"]) for r in table] == q["train loss"]  # exactly: written as repr
    assert [float(r["valid loss"]) for r in table] == q["valid loss"]
    assert [float(r["lr"]) for r in table] == [lrs[3 * e + 2][0] for e in range(epochs)]  # the last step's
    elapsed = [float(r["elapsed"]) for r in table]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0


def test_a_resumed_learner_writes_on_from_its_checkpoint_without_duplicate_steps(tmp_path: Path) -> None:
    l = logged(quiet(), tmp_path)
    l.run(2)
    l.save(tmp_path / "c.pth")
    l.run(2)  # epochs 2 and 3, then lost: the resumed learner redoes them
    assert_written(l, tmp_path, 4)
    resumed = logged(quiet(), tmp_path)
    resumed.load(tmp_path / "c.pth")
    assert (resumed.TensorBoard.logged, resumed.CSVLogger.logged) == (2, 2)
    resumed.data = batches(seed=1)  # other batches from here: other values than the lost epochs'
    resumed.run(3)
    assert resumed.Loss.epoch.train[2] != l.Loss.epoch.train[2]  # other values: it lost the first run's
    assert_written(resumed, tmp_path, 5)
    assert resumed.CSVLogger.elapsed > float(rows(tmp_path / "log.csv")[1]["elapsed"])


class Scripted(Callback):
    """Publishes ``"valid score"``: the next value of ``script`` at each epoch's end."""

    order = 20

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script, self.values = script, []

    def endEpoch(self) -> None:
        self.values.append(self.script[len(self.values)])

    def quantities(self) -> dict[str, list[float]]:
        return {"valid score": self.values}

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = list(state["values"])


def test_a_best_checkpoint_written_before_the_logger_wrote_its_epoch_resumes_after_that_epoch(
    tmp_path: Path,
) -> None:
    def scored() -> Any:
        l = quiet()
        l.cbs.append(Scripted([3.0, 1.0, 2.0, 4.0, 5.0]))
        l.cbs.withBestCheckpoint(tmp_path / "best.pth", monitor="valid score")  # order 45: before
        l.cbs.withTensorBoard(tmp_path / "tb").withCSV(tmp_path / "log.csv")
        return l

    l = scored()
    l.run(4)  # best at epoch 1
    resumed = scored()
    resumed.load(tmp_path / "best.pth")
    assert resumed.TensorBoard.logged == resumed.CSVLogger.logged == 2  # epoch 1 was written
    resumed.run(1)
    q = quantities(resumed.cbs)
    expected = {"loss": by_epoch(q["valid loss"]), "score": by_epoch(q["valid score"])}
    assert scalars(tmp_path / "tb" / "valid") == expected
    assert [h[1] for h in scalars(tmp_path / "tb" / "valid")["score"]] == [3.0, 1.0, 2.0]
    assert [r["valid score"] for r in rows(tmp_path / "log.csv")] == ["3.0", "1.0", "2.0"]


# ---- how runs end -------------------------------------------------------------------------------------


class FailAt(Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at = (epoch, batch)

    def endLoss(self) -> None:
        if self.learner.training and (self.learner.epoch, self.learner.batch) == self.at:
            raise ValueError("broken batch")


def test_a_failed_run_closes_the_files_with_the_epoch_it_left_midway(tmp_path: Path) -> None:
    l = quiet()
    l.cbs.append(FailAt(1, 2)).withTensorBoard(tmp_path / "tb").withCSV(tmp_path / "log.csv")
    with pytest.raises(ValueError, match="broken batch"):
        l.run(3)
    train = l.Loss.epoch.train
    assert len(train) == 2 and len(l.Loss.epoch.valid) == 1  # Loss recorded epoch 1's two batches
    assert scalars(tmp_path / "tb" / "train") == {"loss": by_epoch(train)}
    table = rows(tmp_path / "log.csv")
    assert [(r["epoch"], r["train loss"], r["valid loss"]) for r in table] == [
        ("0", repr(train[0]), repr(l.Loss.epoch.valid[0])),
        ("1", repr(train[1]), ""),
    ]
    assert l.TensorBoard.logged == 2
    l.cbs.remove("FailAt")
    l.run(1)  # the next run goes on from epoch 2, in new files
    assert scalars(tmp_path / "tb" / "train") == {"loss": by_epoch(l.Loss.epoch.train)}
    assert [r["epoch"] for r in rows(tmp_path / "log.csv")] == ["0", "1", "2"]


def test_a_cancelled_run_writes_the_epoch_that_cancelled_it(tmp_path: Path) -> None:
    l = quiet()
    l.cbs.append(Scripted([3.0, 2.0, 2.5, 2.6, 2.7, 1.0]))
    l.cbs.withEarlyStopping("valid score", patience=2).withTensorBoard(tmp_path / "tb")
    l.run(6)  # cancelled at the end of epoch 3
    assert len(l.Scripted.values) == 4
    assert scalars(tmp_path / "tb" / "valid")["score"] == by_epoch([3.0, 2.0, 2.5, 2.6])


# ---- CSV ----------------------------------------------------------------------------------------------


class Late(Callback):
    """Publishes ``"valid late"`` from the run it is added in."""

    order = 20

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def endEpoch(self) -> None:
        self.values.append(0.5 + len(self.values))

    def quantities(self) -> dict[str, list[float]]:
        return {"valid late": self.values}


def test_csv_one_row_per_epoch_and_a_new_quantity_widens_the_header(tmp_path: Path) -> None:
    l = quiet()
    path = tmp_path / "log.csv"
    l.cbs.withCSV(path)
    l.run(2)
    assert path.read_text().splitlines()[0] == "epoch,train loss,valid loss,lr,elapsed"
    l.cbs.append(Late())
    l.run(2)
    table = rows(path)
    assert list(table[0]) == ["epoch", "train loss", "valid loss", "valid late", "lr", "elapsed"]
    assert [r["valid late"] for r in table] == ["", "", "0.5", "1.5"]
    assert [float(r["train loss"]) for r in table] == l.Loss.epoch.train
    assert path.read_text().count("epoch") == 1  # one header


def test_csv_a_row_torn_by_a_crash_is_dropped(tmp_path: Path) -> None:
    l = quiet()
    path = tmp_path / "log.csv"
    l.cbs.withCSV(path)
    l.run(2)
    with open(path, "a", encoding="utf-8") as f:
        f.write("1")  # the start of a row the crash tore (epoch "1..." of a longer run)
    l.run(1)
    table = rows(path)
    assert [r["epoch"] for r in table] == ["0", "1", "2"]
    assert [float(r["train loss"]) for r in table] == l.Loss.epoch.train


def test_a_fresh_learner_starts_the_files_afresh(tmp_path: Path) -> None:
    for seed in range(2):
        l = quiet()
        torch.manual_seed(seed)
        l.model[0].reset_parameters()
        l.cbs.withTensorBoard(tmp_path / "tb").withCSV(tmp_path / "log.csv")
        l.run(2)
    assert scalars(tmp_path / "tb" / "train") == {"loss": by_epoch(l.Loss.epoch.train)}  # the last one's
    assert [float(r["train loss"]) for r in rows(tmp_path / "log.csv")] == l.Loss.epoch.train


# ---- ranks, host syncs, errors ------------------------------------------------------------------------


def test_only_rank_0_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_distributed, "rank", lambda: 1)
    l = quiet()
    assert l.rank == 1
    l.cbs.withTensorBoard(tmp_path / "tb", histograms=True).withCSV(tmp_path / "log.csv")
    l.run(2)
    assert os.listdir(tmp_path) == []
    assert l.TensorBoard.logged == l.CSVLogger.logged == 2  # every rank counts (same checkpoints)


def test_no_tensor_is_read_on_the_host_inside_batches(
    tmp_path: Path, host_reads_raise_in_batches: Any
) -> None:
    l = quiet()
    l.cbs = Callbacks()
    host_reads_raise_in_batches(l.cbs)
    l.css = "Linear: HookModule, HookParam"
    l.cbs.withLoss().withHookModule().withHookParam().withOneCycle(0.1)
    l.cbs.withMetric("mae", lambda y, yb: (y - yb).abs())
    l.cbs.withTensorBoard(tmp_path / "tb", histograms=True).withCSV(tmp_path / "log.csv")
    l.run(2)
    # every statistic: 2 modules x 2 directions x 2, and 4 parameters x 4
    assert len(scalars(tmp_path / "tb")) == 2 * 2 * 2 + 4 * 4
    assert len(rows(tmp_path / "log.csv")) == 2


def test_a_missing_tensorboard_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install tensorboard.*k1lib\[tensorboard\]"):
        Callbacks().withTensorBoard("runs")
    CSVLogger("log.csv")  # needs nothing more


def test_importing_k1lib_does_not_import_tensorboard() -> None:
    code = (
        "import sys, k1lib\n"
        "print(sorted(m for m in sys.modules if 'tensorboard' in m.split('.') and not m.startswith('k1lib')))"
    )
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_bad_arguments_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="logdir must be a path, got int: 3"):
        TensorBoard(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logdir must not be empty"):
        TensorBoard("")
    with pytest.raises(TypeError, match="histograms must be True or False, got 'yes'"):
        TensorBoard("runs", histograms="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path must be a path, got NoneType"):
        CSVLogger(None)  # type: ignore[arg-type]
    l = quiet()
    l.cbs.withCSV(tmp_path / "nowhere" / "log.csv")
    with pytest.raises(FileNotFoundError, match=r"the folder of .*nowhere.* does not exist"):
        l.run(1)
    with pytest.raises(ValueError, match="'logged' should be an int of 0 or more, got -1"):
        TensorBoard("runs").load_state_dict({"logged": -1})
    assert "cb.logdir" in repr(TensorBoard("runs")) and "cb.elapsed" in repr(CSVLogger("log.csv"))


def test_a_path_that_cannot_be_written_fails_before_any_training(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for add, kind in (
        (lambda l: l.cbs.withTensorBoard(tmp_path / "afile"), ValueError),
        (lambda l: l.cbs.withTensorBoard(tmp_path / "afile" / "run"), ValueError),
        (lambda l: l.cbs.withCSV(tmp_path / "adir"), IsADirectoryError),
    ):
        l = learner()
        add(l)
        with pytest.raises(kind, match=r"afile|adir"):
            l.run(1)
        assert l.Loss.train == []  # no batch ran
