"""Checkpoints (``Learner.save`` / ``load``, ``k1lib/_checkpoint.py``) and ``Autosave``."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import k1lib
from k1lib._checkpoint import FORMAT, VERSION, CheckpointError
from k1lib.data import Data, DataLoader, FunctionDataset

from .helpers import learner, ran

# each test gets its own directory: Autosave writes into the current one
pytestmark = pytest.mark.usefixtures("own_dir")


def adam_learner(hidden: int = 4, autosave: bool = False) -> Any:
    l = learner()
    if hidden != 4:
        l.model = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Linear(1, 1))
    l.opt = torch.optim.Adam(l.model.parameters(), lr=1e-2)
    if not autosave:
        l.cbs.remove("Autosave")
    return l


def snapshot(l: Any) -> dict[str, Any]:
    """Everything load could change, copied."""
    opt = l.opt.state_dict()
    return {
        "model": {k: v.clone() for k, v in l.model.state_dict().items() if isinstance(v, torch.Tensor)},
        "opt_state": {
            i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for i, s in opt["state"].items()
        },
        "opt_groups": [dict(g) for g in opt["param_groups"]],
        "loss": (list(l.Loss.train), list(l.Loss.valid), list(l.Loss.epoch.train), list(l.Loss.epoch.valid)),
        "css": l.css,
        "counters": (l.epoch, l.epochs, l.batch, l.batches),
        "rng": torch.get_rng_state().clone(),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["opt_state"].keys() == b["opt_state"].keys()
    for i in a["opt_state"]:
        for k in a["opt_state"][i]:
            x, y = a["opt_state"][i][k], b["opt_state"][i][k]
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, (i, k)
    assert a["opt_groups"] == b["opt_groups"]
    for key in ("loss", "css", "counters"):
        assert a[key] == b[key], key
    assert torch.equal(a["rng"], b["rng"])


# ---- save / load ---------------------------------------------------------------------------------


def test_round_trip_restores_model_adam_loss_css_and_counters() -> None:
    torch.manual_seed(3)
    a = adam_learner()
    a.css = "Linear: HookParam, HookModule"
    a.run(2)
    a.save("ck.pth")
    saved = snapshot(a)
    assert saved["opt_state"][0]["step"].item() == 6  # 3 training batches x 2 epochs

    b = adam_learner()
    torch.manual_seed(99)  # load restores the global generator too
    assert b.Loss.train == [] and b.opt.state_dict()["state"] == {}
    assert b.load("ck.pth") is b
    assert_same(snapshot(b), saved)
    assert len(b.Loss.train) == 6 and len(b.Loss.epoch.valid) == 2


def test_the_file_holds_state_dicts_only_and_skips_callbacks_without_state() -> None:
    l = adam_learner()
    l.run(1)
    l.save("ck.pth")
    checkpoint = torch.load("ck.pth", weights_only=True)
    assert checkpoint["format"] == FORMAT and checkpoint["version"] == VERSION
    assert set(checkpoint) == {
        "format",
        "version",
        "model",
        "opt",
        "callbacks",
        "css",
        "counters",
        "rng",
        "data",
        "digest",
    }
    assert checkpoint["data"] == {}  # lists of batches: no split to keep
    # DontTrainValid, CancelOnExplosion, ... return {}: they are left out
    assert "DontTrainValid" in l.cbs and "CancelOnExplosion" in l.cbs
    assert list(checkpoint["callbacks"]) == [cb.name for cb in l.cbs if cb.state_dict()]
    assert "Loss" in checkpoint["callbacks"] and "DontTrainValid" not in checkpoint["callbacks"]
    assert checkpoint["callbacks"]["Loss"]["class"] == "Loss"
    assert checkpoint["opt"]["class"] == "torch.optim.adam.Adam"


def build(loader_seed: int | None) -> Any:
    """A README-like learner on a small exp dataset, shuffled by torch's global generator or by
    the train loader's own seeded generator."""
    torch.manual_seed(0)
    l = k1lib.Learner()
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    l.model = nn.Sequential(nn.Linear(1, 8), nn.LeakyReLU(), nn.Linear(8, 8), nn.LeakyReLU(), nn.Linear(8, 1))
    dataset = FunctionDataset(torch.exp, n=600)
    if loader_seed is None:
        l.data = Data.fromDataset(dataset, batchSize=50)
    else:
        l.data = Data(
            DataLoader((dataset.x[:500], dataset.y[:500]), 50, seed=loader_seed),
            DataLoader((dataset.x[500:], dataset.y[500:]), 50, shuffle=False),
        )
    l.opt = torch.optim.Adam(l.model.parameters(), lr=1e-2)
    l.lossF = lambda y, yb: ((y.squeeze() - yb) ** 2).mean()
    l.cbs.withModifyBatch(lambda x, y: (x[:, None], y))
    l.cbs.withDType(torch.float32)
    return l


@pytest.mark.parametrize("loader_seed", [None, 7], ids=["global-generator", "loader-generator"])
def test_a_resumed_run_continues_identically(loader_seed: int | None) -> None:
    whole = ran(build(loader_seed), 5)

    first = ran(build(loader_seed), 3)
    first.save("half.pth")
    resumed = build(loader_seed)
    torch.manual_seed(12345)  # whatever happened in between
    resumed.load("half.pth").run(2)

    assert resumed.Loss.train == whole.Loss.train and len(whole.Loss.train) == 50
    assert resumed.Loss.valid == whole.Loss.valid
    for (k, v), w in zip(resumed.model.state_dict().items(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


# ---- the data's split (issue 13, point 12) -------------------------------------------------------


def split_learner(split_seed: int | None, n: int = 600, global_seed: int = 0) -> Any:
    """``build(None)`` with ``Data.fromDataset(seed=split_seed)`` on ``n`` samples, torch's
    global generator seeded with ``global_seed`` before the split is drawn."""
    l = build(None)
    torch.manual_seed(global_seed)
    l.data = Data.fromDataset(FunctionDataset(torch.exp, n=n), batchSize=50, seed=split_seed)
    torch.manual_seed(0)
    return l


def split_of(l: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return l.data.train.x.clone(), l.data.valid.x.clone()


@pytest.mark.parametrize(
    ("saved_seed", "resumed_seed", "resumed_global"),
    [(None, None, 1), (3, 4, 0), (3, None, 0)],
    ids=["global-generator-reseeded", "other-seed", "seed-then-none"],
)
def test_a_resumed_run_trains_on_the_saved_split(
    saved_seed: int | None, resumed_seed: int | None, resumed_global: int
) -> None:
    whole = ran(split_learner(saved_seed), 4)
    first = ran(split_learner(saved_seed), 2)
    first.save("half.pth")
    resumed = split_learner(resumed_seed, global_seed=resumed_global)
    assert not torch.equal(split_of(resumed)[1], split_of(first)[1])  # a split of its own
    resumed.load("half.pth")
    for ours, theirs in zip(split_of(resumed), split_of(first), strict=True):
        assert torch.equal(ours, theirs)
    if (saved_seed is None) == (resumed_seed is None):  # generators in the same places:
        resumed.run(2)  # the same training orders too, so the same run
        assert resumed.Loss.train == whole.Loss.train and resumed.Loss.valid == whole.Loss.valid


def test_a_checkpoint_of_another_dataset_loads_with_a_warning_and_keeps_the_split() -> None:
    a = split_learner(1)
    a.run(1)
    a.save("ck.pth")
    b = split_learner(2, n=700)
    before = split_of(b)
    with pytest.warns(
        UserWarning, match=r"split of a Data.fromDataset of 600 samples, but l.data's dataset has 700"
    ):
        b.load("ck.pth")
    for ours, theirs in zip(split_of(b), before, strict=True):
        assert torch.equal(ours, theirs)
    assert b.Loss.train == a.Loss.train  # the rest loaded
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, a.model.state_dict()[k]), k
    c = split_learner(2)
    c.data = Data(list(c.data.train), list(c.data.valid))
    with pytest.warns(UserWarning, match=r"l.data was not made by Data.fromDataset"):
        c.load("ck.pth")


def test_a_checkpoint_of_version_2_without_a_split_loads_with_the_learners_split() -> None:
    from k1lib._checkpoint import digest_of

    a = split_learner(1)
    a.run(1)
    a.save("ck.pth")
    old = torch.load("ck.pth", weights_only=True)
    del old["data"], old["digest"]
    old["version"] = 2
    torch.save({**old, "digest": digest_of(old)}, "v2.pth")
    b = split_learner(2)
    before = split_of(b)
    b.load("v2.pth")
    for ours, theirs in zip(split_of(b), before, strict=True):
        assert torch.equal(ours, theirs)
    assert b.Loss.train == a.Loss.train


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["split"].__setitem__("order", torch.zeros(600, dtype=torch.int32)), "not a permutation"),
        (lambda d: d["split"].__setitem__("train", 0), r"need 0 < train < samples"),
        (lambda d: d.__setitem__("split", "all"), "should be a dict of 'samples'"),
    ],
)
def test_a_malformed_split_is_refused_before_anything_changes(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    a = split_learner(1)
    a.opt = torch.optim.Adam(a.model.parameters(), lr=1e-2)
    a.run(1)
    a.save("ck.pth")
    b = split_learner(2)
    b.run(1)
    before, split = snapshot(b), split_of(b)
    with pytest.raises(CheckpointError, match=rf"'edited\.pth' is malformed: .*{message}"):
        b.load(_edited("ck.pth", lambda c: edit(c["data"])))
    assert_same(snapshot(b), before)
    for ours, theirs in zip(split_of(b), split, strict=True):
        assert torch.equal(ours, theirs)


def test_a_model_failing_to_load_puts_the_split_back() -> None:
    a = split_learner(1)
    a.model.append(Picky())
    a.run(1)
    a.save("ck.pth")
    b = split_learner(2)
    b.model.append(Picky())
    b.opt = torch.optim.Adam(b.model.parameters(), lr=1e-2)
    split = split_of(b)
    with pytest.raises(CheckpointError, match="wants layout 3"):
        b.load("ck.pth")
    for ours, theirs in zip(split_of(b), split, strict=True):
        assert torch.equal(ours, theirs)


# ---- an optimizer of another model (issue 13, point 13) --------------------------------------------


def test_loading_into_a_learner_whose_optimizer_is_of_another_model_changes_nothing() -> None:
    a = adam_learner()
    a.run(1)
    a.save("ck.pth")
    b = adam_learner()
    b.run(1)
    b.model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))  # the cell run again
    before = snapshot(b)
    with pytest.raises(
        RuntimeError, match=r"^loading 'ck\.pth': none of the 4 tensors l\.opt optimizes is a"
    ):
        b.load("ck.pth")
    assert_same(snapshot(b), before)
    b.opt = torch.optim.Adam(b.model.parameters(), lr=1e-2)  # the fix the message names
    b.load("ck.pth")
    assert_same(snapshot(b), snapshot(a))


def test_save_refuses_state_that_a_weights_only_load_could_not_read() -> None:
    class Odd(k1lib.Callback):
        def state_dict(self) -> dict[str, Any]:
            return {"ok": [1, 2.0], "bad": object()}

    l = adam_learner()
    l.cbs.append(Odd())
    with pytest.raises(
        CheckpointError, match=r"checkpoint\.callbacks\.Odd\.state\.bad is a builtins\.object"
    ):
        l.save("ck.pth")
    assert os.listdir() == []


# ---- atomic writes -------------------------------------------------------------------------------


def crashing_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save writes half a file, then fails (a full disk, a kill)."""

    def save(obj: object, f: Any, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def test_a_crash_during_save_leaves_the_previous_file_and_no_temporary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    l = adam_learner()
    l.save("ck.pth")
    before = Path("ck.pth").read_bytes()
    l.run(1)
    crashing_save(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        l.save("ck.pth")
    assert Path("ck.pth").read_bytes() == before
    assert os.listdir() == ["ck.pth"]


def test_a_crash_during_autosave_leaves_the_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    l = adam_learner(autosave=True)
    l.run(1)
    l.run(1)
    before = {p.name: p.read_bytes() for p in Path().iterdir()}
    assert sorted(before) == ["autosave-1.pth", "autosave-2.pth"]
    crashing_save(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        l.run(1)
    assert {p.name: p.read_bytes() for p in Path().iterdir()} == before


def test_save_into_a_missing_directory_names_it() -> None:
    with pytest.raises(FileNotFoundError, match="'nowhere' does not exist"):
        adam_learner().save("nowhere/ck.pth")


# ---- bad files -----------------------------------------------------------------------------------

MARKS: list[str] = []


def _mark() -> None:
    MARKS.append("ran")


class Payload:
    """Unpickling this would run code."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _mark, ()


def test_a_file_holding_arbitrary_objects_is_refused_without_running_them() -> None:
    torch.save({"format": FORMAT, "version": VERSION, "model": {}, "x": Payload()}, "evil.pth")
    l = adam_learner()
    with pytest.raises(CheckpointError, match=r"'evil\.pth' holds a .*_mark object.*weights_only=True"):
        l.load("evil.pth")
    assert MARKS == []


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"not a checkpoint at all"],
    ids=["truncated", "empty", "garbage"],
)
def test_a_damaged_file_gives_a_clear_error_and_the_rotation_stays(damage: Callable[[bytes], bytes]) -> None:
    l = adam_learner(autosave=True)
    l.run(1)
    l.run(1)
    rotation = {p.name: p.read_bytes() for p in Path().iterdir()}
    Path("bad.pth").write_bytes(damage(Path("autosave-2.pth").read_bytes()))
    before = snapshot(l)
    with pytest.raises(
        CheckpointError, match=r"'bad\.pth' (cannot be read|is not a file written by torch\.save)"
    ):
        l.load("bad.pth")
    assert_same(snapshot(l), before)
    assert {p.name: p.read_bytes() for p in Path().iterdir() if p.name != "bad.pth"} == rotation


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (VERSION, r"is corrupted: what it holds does not match the digest"),
        (1, r"is corrupted: the checksum of its part '.*/data/\d+'"),
    ],
    ids=["digest", "version-1-crc"],
)
def test_a_flipped_bit_in_a_tensor_is_caught(version: int, message: str) -> None:
    l = adam_learner()
    with torch.no_grad():
        l.model[0].weight.copy_(torch.arange(8.0).reshape(4, 2) + 0.5)
    l.save("ck.pth")
    if version == 1:  # as k1lib wrote it before the digest
        checkpoint = torch.load("ck.pth", weights_only=True)
        del checkpoint["digest"]
        torch.save({**checkpoint, "version": 1}, "ck.pth")
    data = bytearray(Path("ck.pth").read_bytes())
    at = data.find((torch.arange(8.0) + 0.5).numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10
    Path("ck.pth").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"'ck\.pth' {message}"):
        l.load("ck.pth")


def test_random_damage_never_escapes_as_another_error() -> None:
    l = adam_learner()
    l.run(1)
    l.save("ck.pth")
    data = Path("ck.pth").read_bytes()
    g = torch.Generator().manual_seed(0)
    refused = 0
    for i in range(60):
        damaged = bytearray(data)
        for at in torch.randint(len(data), (3,), generator=g).tolist():
            damaged[at] = int(torch.randint(256, (), generator=g))
        cut = int(torch.randint(len(data) // 2, len(data), (), generator=g)) if i % 2 else len(data)
        Path("bad.pth").write_bytes(bytes(damaged[:cut]))
        try:
            l.load("bad.pth")
        except CheckpointError:
            refused += 1
    assert refused >= 50  # the rest hit bytes nothing reads (zip padding)


def test_not_a_checkpoint_and_newer_versions_are_refused() -> None:
    l = adam_learner()
    torch.save({"weight": torch.ones(1)}, "plain.pth")
    with pytest.raises(
        CheckpointError,
        match=r"'plain\.pth' is not a k1lib checkpoint: it holds a dict with keys \['weight'\]",
    ):
        l.load("plain.pth")
    l.save("ck.pth")
    checkpoint = torch.load("ck.pth", weights_only=True)
    checkpoint["version"] = VERSION + 1
    torch.save(checkpoint, "future.pth")
    with pytest.raises(
        CheckpointError,
        match=rf"format version {VERSION + 1}; this k1lib reads versions 1 to {VERSION} \(.*newer",
    ):
        l.load("future.pth")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file 'missing\.pth'"):
        l.load("missing.pth")


# ---- checkpoints that do not fit the learner -----------------------------------------------------


def test_a_mismatched_model_names_the_keys_and_changes_nothing() -> None:
    small = adam_learner()
    small.run(1)
    small.save("small.pth")
    l = adam_learner(hidden=5)
    l.css = "Linear: HookModule, HookParam"
    l.run(1)
    before = snapshot(l)
    with pytest.raises(CheckpointError) as info:
        l.load("small.pth")
    assert str(info.value) == (
        "'small.pth' does not fit l.model (nothing was changed):\n"
        "  missing in the checkpoint: 3.weight, 3.bias\n"
        "  shape mismatch:\n"
        "    0.weight: checkpoint (4, 2), model (5, 2)\n"
        "    0.bias: checkpoint (4,), model (5,)\n"
        "    2.weight: checkpoint (1, 4), model (1, 5)"
    )
    assert_same(snapshot(l), before)

    adam_learner(hidden=5).save("big.pth")
    with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint: 3\.weight, 3\.bias"):
        adam_learner().load("big.pth")


def test_another_optimizer_class_is_refused() -> None:
    adam = adam_learner()
    adam.run(1)
    adam.save("adam.pth")
    l = learner()  # SGD
    l.cbs.remove("Autosave")
    l.run(1)
    before = {k: v.clone() for k, v in l.model.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"torch\.optim\.adam\.Adam optimizer; l\.opt is a torch\.optim\.sgd\.SGD"
    ):
        l.load("adam.pth")
    assert all(torch.equal(v, before[k]) for k, v in l.model.state_dict().items())


class Counter(k1lib.Callback):
    def __init__(self, n: int = 0, fail: bool = False) -> None:
        super().__init__()
        self.n, self.fail = n, fail

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.fail:
            raise KeyError("wants another layout")
        self.n = state["n"]


def test_state_for_a_callback_the_learner_lacks_is_skipped_with_a_warning() -> None:
    a = adam_learner()
    a.cbs.append(Counter(5))
    a.run(1)
    a.save("ck.pth")
    b = adam_learner()
    with pytest.warns(UserWarning, match=r"state for callbacks this learner lacks: Counter \(skipped\)"):
        b.load("ck.pth")
    assert b.Loss.train == a.Loss.train
    c = adam_learner()
    c.cbs.append(Counter(0))
    c.load("ck.pth")
    assert c.Counter.n == 5


def test_a_callback_failing_to_load_undoes_the_others() -> None:
    a = adam_learner()
    a.cbs.append(Counter(5))
    a.run(2)
    a.save("ck.pth")
    b = adam_learner()
    b.cbs.append(Counter(1, fail=True))
    b.run(1)
    before = snapshot(b)
    with pytest.raises(CheckpointError, match=r"callback 'Counter' could not load its state \(KeyError"):
        b.load("ck.pth")
    assert_same(snapshot(b), before)
    assert b.Counter.n == 1


# ---- Autosave ------------------------------------------------------------------------------------


def saved_epochs(path: str | Path) -> int:
    return len(torch.load(path, weights_only=True)["callbacks"]["Loss"]["state"]["epoch_train"])


def test_autosave_rotates_the_newest_three(capsys: pytest.CaptureFixture[str]) -> None:
    l = adam_learner(autosave=True)
    for _ in range(4):
        l.run(1)
        assert capsys.readouterr().out == "Saved to autosave-2.pth\n"
    assert sorted(os.listdir()) == ["autosave-0.pth", "autosave-1.pth", "autosave-2.pth"]
    assert [saved_epochs(f"autosave-{i}.pth") for i in range(3)] == [2, 3, 4]
    assert [p.name for p in l.Autosave.files()] == ["autosave-0.pth", "autosave-1.pth", "autosave-2.pth"]


def test_autosave_directory_and_keep_are_configurable(capsys: pytest.CaptureFixture[str]) -> None:
    l = adam_learner()
    l.cbs.withAutosave(directory="runs/a", keep=2)
    for _ in range(3):
        l.run(1)
    assert capsys.readouterr().out.splitlines() == ["Saved to runs/a/autosave-1.pth"] * 3
    assert sorted(os.listdir("runs/a")) == ["autosave-0.pth", "autosave-1.pth"]
    assert [saved_epochs(f"runs/a/autosave-{i}.pth") for i in range(2)] == [2, 3]
    with pytest.raises(ValueError, match="keep must be an int of 1 or more, got 0"):
        k1lib.callbacks.Autosave(keep=0)


def test_autosave_after_the_cancel_message(capsys: pytest.CaptureFixture[str]) -> None:
    l = learner(quiet=False)
    l.cbs.ProgressBar.logEvery = 1e9
    l.cbs.withCancelOnLowLoss(1e9)
    l.run(3)
    out = capsys.readouterr().out
    assert out.endswith("Run cancelled: Low loss 1e+09 achieved!.\nSaved to autosave-2.pth\n")
    assert out.startswith("Progress:")


class Fail(k1lib.Callback):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def startBatch(self) -> None:
        if self.epoch == 1:
            raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "interrupt"])
def test_a_failed_run_is_not_saved(
    exc: BaseException, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    l = adam_learner(autosave=True)
    l.run(1)
    before = Path("autosave-2.pth").read_bytes()
    l.cbs.append(Fail(exc))
    with pytest.raises(type(exc)):
        l.run(2)
    assert "Saved" not in capsys.readouterr().out.split("Saved to autosave-2.pth\n", 1)[1]
    assert sorted(os.listdir()) == ["autosave-2.pth"] and Path("autosave-2.pth").read_bytes() == before
    assert f"the run ended with {type(exc).__name__}: not saved" in caplog.text
    l.cbs.remove("Fail")
    l.run(1)  # the next good run saves again
    assert sorted(os.listdir()) == ["autosave-1.pth", "autosave-2.pth"]


def test_a_run_inside_an_except_block_is_still_saved() -> None:
    l = adam_learner(autosave=True)
    try:
        raise LookupError("the caller's own")
    except LookupError:
        l.run(1)
    assert os.listdir() == ["autosave-2.pth"]


def test_record_saves_nothing() -> None:
    l = adam_learner(autosave=True)
    l.record(1, 2)
    assert os.listdir() == []


def test_autosave_repr() -> None:
    text = repr(adam_learner(autosave=True).Autosave)
    assert text.startswith("Callback `Autosave`, use...\n- cb.directory: ")
    assert "\n- cb.files(): " in text


# ---- devices -------------------------------------------------------------------------------------


def cuda_learner() -> Any:
    l = learner()
    l.cbs.remove("Autosave")
    l.model.cuda()
    l.opt = torch.optim.Adam(l.model.parameters(), lr=1e-2)
    l.cbs.withModifyBatch(lambda x, y: (x.cuda(), y.cuda()))
    return l


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_checkpoints_load_onto_the_models_device() -> None:
    gpu = ran(cuda_learner(), 1)
    gpu.save("gpu.pth")
    cuda_rng = torch.cuda.get_rng_state()
    torch.cuda.manual_seed(5)

    cpu = adam_learner()
    cpu.load("gpu.pth")
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    for k, v in cpu.model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, gpu.model.state_dict()[k].cpu()), k
    assert all(t.device.type == "cpu" for s in cpu.opt.state.values() for t in s.values())
    cpu.run(1)
    cpu.save("cpu.pth")

    back = cuda_learner()
    back.load("cpu.pth")
    for k, v in back.model.state_dict().items():
        assert v.device.type == "cuda" and torch.equal(v.cpu(), cpu.model.state_dict()[k]), k
    assert back.opt.state_dict()["state"][0]["exp_avg"].device.type == "cuda"
    assert ran(back, 1).Loss.train[:6] == cpu.Loss.train


def test_a_numpy_scalar_in_a_callback_state_is_refused_at_save(tmp_path: Path) -> None:
    # isinstance(np.float64(.5), float) is True, but torch.load(weights_only=True) refuses it
    np = pytest.importorskip("numpy")

    class Best(k1lib.Callback):
        def state_dict(self) -> dict[str, Any]:
            return {"best": np.float64(0.5)}

    l = learner()
    l.cbs.append(Best())
    with pytest.raises(CheckpointError, match=r"callbacks\.Best\.state\.best is a numpy"):
        l.save(tmp_path / "c.pth")
    assert not (tmp_path / "c.pth").exists()


def test_recorded_statistics_stay_on_the_cpu_after_load(tmp_path: Path) -> None:
    l = learner()
    l.cbs.remove("Autosave")
    l.run(1)
    l.save(tmp_path / "c.pth")
    other = learner()
    other.cbs.remove("Autosave")
    other.load(tmp_path / "c.pth")
    assert other.HookParam.data.device.type == "cpu"
    other.run(1)  # appends new rows to the loaded ones
    assert len(other.HookParam.data) == 2 * len(l.data.train)


# ---- integrity: what torch reads is what was saved (issue 12, point 1) -----------------------------


def zip_regions(data: bytes) -> dict[str, list[int]]:
    """The byte positions of a torch.save zip, by what they hold."""
    import zipfile
    from io import BytesIO

    regions: dict[str, list[int]] = {
        "local header": [],
        "name and padding": [],
        "tensor data": [],
        "other data": [],
    }
    with zipfile.ZipFile(BytesIO(data)) as archive:
        infos = archive.infolist()
    for info in infos:
        start = info.header_offset
        extra = int.from_bytes(data[start + 28 : start + 30], "little")
        body = start + 30 + len(info.filename.encode()) + extra
        regions["local header"] += range(start, start + 30)
        regions["name and padding"] += range(start + 30, body)
        kind = "tensor data" if re.search(r"/data/\d+$", info.filename) else "other data"
        regions[kind] += range(body, body + info.compress_size)
    directory = data.find(b"PK\x01\x02")
    end = data.rfind(b"PK\x06\x06")  # zip64 end records, then the end record
    end = data.rfind(b"PK\x05\x06") if end < 0 else end
    regions["central directory"] = list(range(directory, end))
    regions["end records"] = list(range(end, len(data)))
    covered = {i for positions in regions.values() for i in positions}
    regions["between"] = [i for i in range(len(data)) if i not in covered]
    return regions


def test_a_directory_flag_or_compression_method_flipped_is_refused() -> None:
    # neither is covered by the zip's CRCs: the first loaded garbage weights, the second
    # let a raw zlib.error escape
    l = adam_learner()
    l.run(1)
    l.save("ck.pth")
    data = Path("ck.pth").read_bytes()
    records = [i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)]

    refused = []
    for at, mask in [(r + 38, 0x10) for r in records] + [(r + 10, 0x08) for r in records]:
        damaged = bytearray(data)
        damaged[at] ^= mask
        Path("bad.pth").write_bytes(bytes(damaged))
        fresh = adam_learner()
        before = snapshot(fresh)
        try:
            fresh.load("bad.pth")
        except CheckpointError:
            refused.append(at)
            assert_same(snapshot(fresh), before)
        else:
            # a record torch never reads (.format_version, serialization_id), or a tensor's that
            # torch read right anyway: the digest says nothing differs
            assert_same(snapshot(fresh), snapshot(l))
    # each flip was refused or loaded exactly what was saved (above). Whether torch reads a
    # flipped record's bytes right varies from run to run (a tensor read as a directory lands in
    # memory that may hold its very bytes): the digest decides, so count loosely
    assert len(refused) >= len(records) // 2, (len(refused), len(records))


def test_every_region_of_a_checkpoint_damaged_is_refused_or_loads_what_was_saved() -> None:
    torch.manual_seed(0)
    l = adam_learner()
    l.run(1)
    l.save("ck.pth")
    saved = snapshot(l)
    data = Path("ck.pth").read_bytes()
    regions = zip_regions(data)
    assert {name for name, at in regions.items() if at} >= {
        "local header",
        "name and padding",
        "tensor data",
        "other data",
        "central directory",
        "end records",
    }
    g = torch.Generator().manual_seed(1)
    outcomes: dict[str, list[int]] = {}
    for name, positions in regions.items():
        # small regions whole, large ones sampled (every byte of each kind of field is hit in
        # the headers: they repeat for each of the ~26 records)
        picked = (
            positions
            if len(positions) <= 150
            else [positions[int(i)] for i in torch.randperm(len(positions), generator=g)[:150]]
        )
        refused = loaded = 0
        for at in picked:
            damaged = bytearray(data)
            damaged[at] ^= int(torch.randint(1, 256, (), generator=g))
            Path("bad.pth").write_bytes(bytes(damaged))
            fresh = adam_learner()
            before = snapshot(fresh)
            try:
                fresh.load("bad.pth")
            except CheckpointError:
                refused += 1
                assert_same(snapshot(fresh), before)
            else:
                loaded += 1
                assert_same(snapshot(fresh), saved)
        outcomes[name] = [refused, loaded]
    # what may load unrefused is what nothing reads (torch's version and id records, padding,
    # the zip's dates, the bytes of a storage beyond the tensor viewing it), and then it loaded
    # what was saved (checked above)
    assert outcomes["tensor data"][0] > 0 and outcomes["central directory"][0] > 0, outcomes


def test_a_checkpoint_of_version_1_without_a_digest_still_loads() -> None:
    l = adam_learner()
    l.run(1)
    l.save("ck.pth")
    old = torch.load("ck.pth", weights_only=True)
    del old["digest"]
    old["version"] = 1
    torch.save(old, "v1.pth")
    fresh = adam_learner()
    fresh.load("v1.pth")
    assert_same(snapshot(fresh), snapshot(l))


def test_a_digest_that_does_not_match_is_refused() -> None:
    l = adam_learner()
    l.save("ck.pth")
    checkpoint = torch.load("ck.pth", weights_only=True)
    checkpoint["model"]["0.weight"][0, 0] += 1  # rewritten with valid CRCs: only the digest knows
    torch.save(checkpoint, "edited.pth")
    with pytest.raises(CheckpointError, match=r"'edited\.pth' is corrupted: what it holds does not match"):
        adam_learner().load("edited.pth")


# ---- atomic load: a malformed optimizer state changes nothing (issue 12, point 2) ------------------


def _swap_first_two(state: dict[Any, Any]) -> None:
    state[0], state[1] = state[1], state[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("state"), r"the optimizer's state should be a dict of 'state'"),
        (lambda s: s["state"][0].__setitem__("step", "3"), r"0\.weight: its 'step' is '3', not a number"),
        (
            lambda s: s["state"][0].__setitem__("step", torch.zeros(2)),
            r"its 'step' is a tensor of shape \(2,\)",
        ),
        (
            lambda s: s["state"][0].__setitem__("exp_avg", torch.zeros(3)),
            r"another order\?\):\n  0\.weight: its 'exp_avg' is \(3,\), the parameter \(4, 2\)",
        ),
        (
            lambda s: _swap_first_two(s["state"]),
            r"0\.weight: its 'exp_avg' is \(4,\), the parameter \(4, 2\)",
        ),
        (
            lambda s: s["state"][1].__setitem__("exp_avg_sq", [0.0] * 4),
            r"0\.bias: its 'exp_avg_sq' is a list",
        ),
        (lambda s: s["state"].__setitem__(99, {}), r"state for parameter ids \[99\] that none"),
        (lambda s: s["param_groups"][0]["params"].__setitem__(1, 0), r"ids should be distinct ints"),
        (
            lambda s: s["param_groups"][0].__setitem__("lr", "fast"),
            r"group 0 has lr='fast'; l\.opt's is 0\.01",
        ),
        (lambda s: s["param_groups"][0].__setitem__("betas", (0.9,)), r"group 0 has betas=\(0\.9,\)"),
    ],
    ids=[
        "no-state",
        "string-step",
        "two-steps",
        "wrong-shape",
        "other-order",
        "list-buffer",
        "stray-id",
        "duplicate-id",
        "string-lr",
        "short-betas",
    ],
)
@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused-adam"])
def test_a_malformed_optimizer_state_is_refused_before_anything_changes(
    edit: Callable[[dict[str, Any]], None], message: str, fused: bool
) -> None:
    # a fused kernel does not check shapes: an exp_avg of another shape corrupted memory
    a = adam_learner()
    a.opt = torch.optim.Adam(a.model.parameters(), lr=1e-2, fused=fused)
    a.run(1)
    a.save("ck.pth")
    checkpoint = torch.load("ck.pth", weights_only=True)
    edit(checkpoint["opt"]["state"])
    del checkpoint["digest"]
    checkpoint["version"] = 1  # hand-edited files have no digest to match
    torch.save(checkpoint, "edited.pth")
    b = adam_learner()
    b.opt = torch.optim.Adam(b.model.parameters(), lr=1e-2, fused=fused)
    b.run(1)
    before = snapshot(b)
    with pytest.raises(CheckpointError, match=message):
        b.load("edited.pth")
    assert_same(snapshot(b), before)
    b.run(1)  # and the learner still trains


class Momentum(torch.optim.Optimizer):
    """An optimizer k1lib knows nothing about: its state is checked by a trial step."""

    def __init__(self, params: Any, lr: float = 0.1, read_values: bool = False) -> None:
        super().__init__(params, {"lr": lr, "read_values": read_values})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["read_values"]:
                    float(p.grad.abs().max())  # reads a value: cannot run on the meta device
                state = self.state[p]
                velocity = state.setdefault("velocity", torch.zeros_like(p))
                velocity.mul_(0.9).add_(p.grad)
                state["count"] = state.get("count", 0) + 1
                p.add_(velocity, alpha=-group["lr"])


STEPS: list[object] = []


@pytest.mark.parametrize("read_values", [False, True], ids=["trial", "no-trial"])
def test_the_state_of_an_unknown_optimizer_is_checked_by_a_trial_step(read_values: bool) -> None:
    hook = register_optimizer_step_post_hook(lambda *args: STEPS.append(args))
    try:
        a = adam_learner()
        a.opt = Momentum(a.model.parameters(), read_values=read_values)
        a.run(1)
        a.save("ck.pth")
        STEPS.clear()
        b = adam_learner()
        b.opt = Momentum(b.model.parameters(), read_values=read_values)
        b.load("ck.pth")  # a valid state loads
        assert_same(snapshot(b), snapshot(a))
        assert STEPS == []  # the trial's step is not the user's: global step hooks do not see it
    finally:
        hook.remove()
    checkpoint = torch.load("ck.pth", weights_only=True)
    checkpoint["opt"]["state"]["state"][0]["velocity"] = torch.zeros(3)
    del checkpoint["digest"]
    torch.save({**checkpoint, "version": 1}, "edited.pth")
    c = adam_learner()
    c.opt = Momentum(c.model.parameters(), read_values=read_values)
    if read_values:  # no trial possible: the structure is all that is checked
        c.load("edited.pth")
        return
    before = snapshot(c)
    with pytest.raises(
        CheckpointError, match=r"a step with it fails \(RuntimeError.*\n  0\.weight: its 'velocity' is \(3,\)"
    ):
        c.load("edited.pth")
    assert_same(snapshot(c), before)


class Picky(nn.Module):
    """A module with its own extra state, whose load fails after the layers before it loaded."""

    def get_extra_state(self) -> dict[str, int]:
        return {"layout": 2}

    def set_extra_state(self, state: Any) -> None:
        raise ValueError("wants layout 3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_model_failing_halfway_through_its_load_is_put_back() -> None:
    a = adam_learner()
    a.model.append(Picky())
    a.cbs.append(Counter(5))
    a.run(2)
    a.save("ck.pth")
    b = adam_learner()
    b.model.append(Picky())
    b.cbs.append(Counter(1))
    b.run(1)
    before = snapshot(b)
    with pytest.raises(
        CheckpointError, match=r"could not load its state \(ValueError: wants layout 3\); its tensors"
    ):
        b.load("ck.pth")
    assert_same(snapshot(b), before)
    assert b.Counter.n == 1


def test_integers_saved_for_float_weights_are_refused() -> None:
    l = adam_learner()
    l.save("ck.pth")
    checkpoint = torch.load("ck.pth", weights_only=True)
    checkpoint["model"]["0.bias"] = checkpoint["model"]["0.bias"].long()
    del checkpoint["digest"]
    checkpoint["version"] = 1
    torch.save(checkpoint, "ints.pth")
    with pytest.raises(
        CheckpointError, match=r"type mismatch:\n    0\.bias: checkpoint torch\.int64, model torch\.float32"
    ):
        adam_learner().load("ints.pth")


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.AdamW(ps, amsgrad=True, foreach=True),
        lambda ps: torch.optim.NAdam(ps, foreach=True),
        lambda ps: torch.optim.Adamax(ps),
        lambda ps: torch.optim.RMSprop(ps, centered=True, momentum=0.5),
        lambda ps: torch.optim.Adafactor(ps),
        lambda ps: torch.optim.ASGD(ps),
    ],
    ids=["SGD", "AdamW", "NAdam", "Adamax", "RMSprop", "Adafactor", "ASGD"],
)
def test_every_valid_optimizer_state_loads(make: Callable[[Any], torch.optim.Optimizer]) -> None:
    def build() -> Any:
        l = adam_learner()
        l.model = Mixed()
        l.opt = make(l.model.parameters())
        return l

    a = build()
    a.run(1)
    a.save("ck.pth")
    b = build()
    b.load("ck.pth")  # torch itself casts some scalars of bf16 parameters' state (NAdam, ASGD)
    assert all(torch.equal(v, a.model.state_dict()[k]) for k, v in b.model.state_dict().items())
    b.run(1)


class Mixed(nn.Module):
    """A 0-dim parameter (as CLIP's logit_scale), a 1-element bias, bf16 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.a = nn.Linear(2, 1)
        self.b = nn.Linear(1, 1).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).bfloat16()).float() * self.scale


def test_shared_and_self_holding_containers_are_digested_once() -> None:
    shared = [1, 2, 3]
    a = adam_learner()
    a.cbs.append(Counter(5))
    a.Counter.state_dict = lambda: {"n": 5, "x": shared, "y": shared}  # type: ignore[method-assign]
    a.save("ck.pth")
    b = adam_learner()
    b.cbs.append(Counter(0))
    b.load("ck.pth")
    assert b.Counter.n == 5
    # a hand-made file whose list holds itself: the digest must end (and not match)
    checkpoint = torch.load("ck.pth", weights_only=True)
    loop: list[Any] = []
    loop.append(loop)
    checkpoint["callbacks"]["Counter"]["state"]["x"] = loop
    torch.save(checkpoint, "loop.pth")
    with pytest.raises(CheckpointError, match="does not match the digest"):
        b.load("loop.pth")


def _edited(path: str, edit: Callable[[dict[str, Any]], None]) -> str:
    """A hand-edited copy of the checkpoint at ``path`` (version 1: no digest to match)."""
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    del checkpoint["digest"]
    torch.save({**checkpoint, "version": 1}, "edited.pth")
    return "edited.pth"


def _set_state(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c["opt"]["state"]["state"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    ("make", "edit", "message"),
    [
        (
            lambda ps: torch.optim.Adam(ps, fused=True),
            _set_state("exp_avg", torch.zeros(1).expand(4, 2)),  # a fused kernel walked past its end
            r"0\.weight: its 'exp_avg' is a view whose elements overlap",
        ),
        (
            lambda ps: torch.optim.Adam(ps),
            _set_state("exp_avg", torch.zeros(4, 2, device="meta")),
            r"its 'exp_avg' is on the meta device",
        ),
        (lambda ps: torch.optim.ASGD(ps), _set_state("eta", "fast"), r"its 'eta' is 'fast', not a number"),
        (lambda ps: torch.optim.Adafactor(ps), _set_state("step", "3"), r"its 'step' is '3', not a number"),
        (
            lambda ps: torch.optim.Adam(ps),
            lambda c: c["model"].__setitem__("0.bias", torch.zeros(4, device="meta")),
            r"its model state holds '0\.bias', which are not names of dense tensors",
        ),
        (
            lambda ps: torch.optim.Adam(ps),
            lambda c: c["model"].__setitem__(7, torch.zeros(1)),
            r"its model state has keys that are not strings",
        ),
    ],
    ids=["fused-expanded", "meta-buffer", "asgd-string", "adafactor-string-step", "meta-weight", "int-key"],
)
def test_hostile_states_are_refused_before_anything_changes(
    make: Callable[[Any], torch.optim.Optimizer], edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    a = adam_learner()
    a.opt = make(a.model.parameters())
    a.run(1)
    a.save("ck.pth")
    b = adam_learner()
    b.opt = make(b.model.parameters())
    b.run(1)
    before = snapshot(b)
    with pytest.raises(CheckpointError, match=message):
        b.load(_edited("ck.pth", edit))
    assert_same(snapshot(b), before)


def test_a_transposed_buffer_is_made_dense_and_loads() -> None:
    a = adam_learner()
    a.opt = torch.optim.Adam(a.model.parameters(), fused=True)
    a.run(1)
    a.save("ck.pth")
    exp_avg = torch.load("ck.pth", weights_only=True)["opt"]["state"]["state"][0]["exp_avg"]
    b = adam_learner()
    b.opt = torch.optim.Adam(b.model.parameters(), fused=True)
    b.load(_edited("ck.pth", _set_state("exp_avg", exp_avg.t().contiguous().t())))
    loaded = b.opt.state[b.model[0].weight]["exp_avg"]
    assert loaded.is_contiguous() and torch.equal(loaded, exp_avg)


class Wrapper(torch.optim.Optimizer):
    """As Accelerate wraps an optimizer: its state lives in the one it holds."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.optimizer = inner

    state = property(lambda self: self.optimizer.state)  # type: ignore[assignment]
    param_groups = property(lambda self: self.optimizer.param_groups)  # type: ignore[assignment]
    defaults = property(lambda self: self.optimizer.defaults)  # type: ignore[assignment]

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def step(self, closure: Any = None) -> None:
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)


def test_a_wrapped_optimizer_that_cannot_be_copied_still_loads() -> None:
    a = adam_learner()
    a.opt = Wrapper(torch.optim.Adam(a.model.parameters()))
    a.run(1)
    a.save("ck.pth")
    b = adam_learner()
    b.opt = Wrapper(torch.optim.Adam(b.model.parameters()))
    b.load("ck.pth")
    assert_same(snapshot(b), snapshot(a))


def test_a_tiny_file_holding_a_huge_expanded_tensor_is_refused_without_materialising_it() -> None:
    # 10000 x 10000 float32 values from 4 bytes of storage: before, the digest made them dense
    # (400 MB; a larger shape, any amount); now it hashes the storage and the strides
    a = adam_learner()
    a.save("ck.pth")
    checkpoint = torch.load("ck.pth", weights_only=True)
    checkpoint["counters"]["huge"] = torch.zeros(1).expand(10_000, 10_000)
    torch.save(checkpoint, "bomb.pth")
    assert Path("bomb.pth").stat().st_size < 100_000
    script = (
        "import resource, torch, k1lib\n"
        "from k1lib._checkpoint import CheckpointError, read\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read('bomb.pth')\n"
        "except CheckpointError as e:\n"
        "    print('refused', e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, 'MB')\n"
    )
    here = {**os.environ, "PYTHONPATH": str(Path(k1lib.__file__).parents[1])}  # this k1lib
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=here, check=True)
    out = run.stdout
    assert "refused 'bomb.pth' is corrupted" in out
    assert int(out.split()[-2]) < 100, out


def test_loading_into_a_model_on_meta_in_one_process_is_refused(tmp_path: Path) -> None:
    """It would load nothing (the parameters stay on meta) and report success."""
    l = learner()
    l.save(tmp_path / "ck.pth")
    l.model = copy.deepcopy(l.model).to("meta")
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.1)
    with pytest.raises(k1lib.CheckpointError, match=r"l\.model is on the meta device"):
        l.load(tmp_path / "ck.pth")


def test_loading_into_a_model_with_a_buffer_on_meta_is_refused(tmp_path: Path) -> None:
    l = learner()
    l.save(tmp_path / "ck.pth")
    l.model.register_buffer("scale", torch.ones(1, device="meta"))
    with pytest.raises(k1lib.CheckpointError, match=r"l\.model is on the meta device"):
        l.load(tmp_path / "ck.pth")
    with pytest.raises(k1lib.CheckpointError, match=r"missing\.pth' does not exist"):
        l.load(tmp_path / "missing.pth")
