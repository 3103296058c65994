"""Sharded checkpoints (``k1lib/_sharded_checkpoint.py``) of an FSDP2-sharded model on CPU (gloo).

One torchrun launch of 2 ranks trains a small sharded model of Blocks with Adam a few steps, saves
it, loads it back and runs the scenarios that need ranks (damaged directories, a rank failing mid-save,
Autosave's rotation, BestCheckpoint); one launch of 4 ranks loads what 2 saved (DCP reshards).
``fsdp_checkpoint_worker.py`` saves what each rank saw; the tests here read it and, in this
process, load the directory into the plain model and consolidate it. Kills at every rename of a
save are made in forked children of this process (a plain model saves alone). Bounded in time:
a hang fails the test, it does not stall CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

from k1lib import _files  # noqa: E402
from k1lib import _sharded_checkpoint as sharded  # noqa: E402
from k1lib._checkpoint import CheckpointError, read  # noqa: E402

WORKER = Path(__file__).with_name("fsdp_checkpoint_worker.py")
sys.path.insert(0, str(WORKER.parent))

import fsdp_checkpoint_worker as worker  # noqa: E402

from .helpers import learner, torchrun  # noqa: E402

LISTING = [".metadata", "__0_0.distcp", "__1_0.distcp", sharded.MANIFEST, sharded.STATE]


def launch(ranks: int, phase: str, shared: Path) -> None:
    torchrun(WORKER, [phase, str(shared)], ranks)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder both launches worked in: ``ck`` saved by 2 ranks, and what each rank saw."""
    out = tmp_path_factory.mktemp("sharded")
    launch(2, "save", out)
    launch(4, "load", out)
    return out


@pytest.fixture(scope="module")
def two(shared: Path) -> list[dict[str, Any]]:
    return [torch.load(shared / f"save-rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def four(shared: Path) -> list[dict[str, Any]]:
    return [torch.load(shared / f"load-rank{r}.pt", weights_only=False) for r in range(4)]


def assert_equal(expected: Any, found: Any, where: str = "state") -> None:
    """Bitwise equal, nested; tensors with their dtype."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(found, torch.Tensor), where
        assert found.dtype == expected.dtype and torch.equal(found, expected), where
    elif isinstance(expected, dict):
        assert isinstance(found, dict) and found.keys() == expected.keys(), where
        for k in expected:
            assert_equal(expected[k], found[k], f"{where}[{k!r}]")
    elif isinstance(expected, list | tuple):
        assert type(found) is type(expected) and len(found) == len(expected), where
        for i, (a, b) in enumerate(zip(expected, found, strict=True)):
            assert_equal(a, b, f"{where}[{i}]")
    else:
        assert found == expected, where


# ---- saving and loading across ranks -------------------------------------------------------------


def test_two_ranks_write_one_sealed_directory_of_their_shards(
    shared: Path, two: list[dict[str, Any]]
) -> None:
    ck = shared / "ck"
    assert two[0]["listing"] == two[1]["listing"] == LISTING
    # each rank held half of every weight: Shard(0) of the embedding's 16 rows; 3 and 2 of 5
    assert [r["local_shapes"]["embed.weight"] for r in two] == [(8, 32), (8, 32)]
    assert [r["local_shapes"]["extra.bias"] for r in two] == [(3,), (2,)]
    manifest = json.loads((ck / sharded.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(set(LISTING) - {sharded.MANIFEST})
    for name, entry in manifest["files"].items():
        data = (ck / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    # the temporary directory was renamed into place: nothing else was left beside it
    assert not [p.name for p in shared.iterdir() if p.name.startswith(".")]


def test_loading_on_two_ranks_restores_weights_adam_and_the_rest(two: list[dict[str, Any]]) -> None:
    for rank in two:
        saved, loaded = rank["saved"], rank["loaded"]
        assert saved["opt"][0]["step"].item() == 3  # Adam's state after 3 steps is there
        assert_equal(saved, loaded)  # weights, Adam's moments, callback state, css, counters, rng
    assert_equal(two[0]["saved"]["model"], two[1]["saved"]["model"])


def test_four_ranks_load_what_two_saved(two: list[dict[str, Any]], four: list[dict[str, Any]]) -> None:
    saved = two[0]["saved"]
    assert [r["local_shapes"]["extra.bias"] for r in four] == [(2,), (2,), (1,), (0,)]
    for rank in four:
        assert rank["local_shapes"]["embed.weight"] == (4, 32)  # resharded in 4
        assert_equal(saved, rank["loaded"])


def test_one_process_loads_it_into_the_plain_model(
    shared: Path, two: list[dict[str, Any]], tmp_path: Path
) -> None:
    l = worker.sharded_learner(4, sharded_model=False)
    sharded.load(l, shared / "ck")
    assert_equal(two[0]["saved"], worker.snapshot(l))
    # the loaded Adam steps: its state is the optimizer's own, not a copy it ignores; and the
    # resumed run saves and loads in one process too
    worker.train(l, 1)
    assert l.opt.state_dict()["state"][0]["step"].item() == 4
    sharded.save(l, tmp_path / "resumed")
    again = worker.sharded_learner(5, sharded_model=False)
    sharded.load(again, tmp_path / "resumed")
    assert_equal(worker.snapshot(l), worker.snapshot(again))


def test_consolidate_writes_one_file_of_the_full_model(
    shared: Path, two: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = sharded.consolidate(shared / "ck", tmp_path / "model.pth")
    state = torch.load(out, weights_only=True)
    model = worker.sharded_learner(5, sharded_model=False).model
    model.load_state_dict(state)
    assert_equal(two[0]["saved"]["model"], {k: v.clone() for k, v in model.state_dict().items()})
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp' is corrupted"):
        sharded.consolidate(shared / "flipped", tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()


# ---- refusals ------------------------------------------------------------------------------------

REFUSED = {
    "flipped": r"__1_0\.distcp' is corrupted: its SHA-256 does not match",
    "truncated": r"__0_0\.distcp' is truncated or corrupted: \d+ bytes, \d+ when saved",
    "no_metadata": r"no_metadata/\.metadata' is missing: the sharded checkpoint .* is incomplete",
    "no_manifest": r"has no k1lib-manifest\.json: it is not a complete k1lib sharded checkpoint",
    "state_flipped": r"k1lib-state\.pth' is corrupted",
    "other_optimizer": r"a torch\.optim\.adam\.Adam optimizer; l\.opt is a torch\.optim\.sgd\.SGD",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_damaged_or_unfitting_checkpoint_is_refused_on_every_rank_and_changes_nothing(
    two: list[dict[str, Any]], case: str
) -> None:
    for rank in two:
        found = rank["damage"][case]
        assert found["error"]["type"] == "CheckpointError", found
        assert re.search(REFUSED[case], found["error"]["message"]), found["error"]["message"]
        assert found["unchanged"], case


def test_a_load_failing_on_one_rank_after_the_checks_is_put_back_on_every_rank(
    two: list[dict[str, Any]],
) -> None:
    r0, r1 = (rank["damage"]["fails_on_one_rank"] for rank in two)
    assert (
        "callback 'Marks' could not load its state (ValueError: cannot take these marks"
        in (r1["error"]["message"])
    )
    # rank 0 loaded it all, the model last, then learnt that rank 1 failed: all put back
    assert r0["error"]["type"] == "CheckpointError" and "rank 1" in r0["error"]["message"]
    assert r0["unchanged"] and r1["unchanged"]


def test_four_ranks_agree_on_a_file_one_of_them_found_damaged(four: list[dict[str, Any]]) -> None:
    # each rank checks a share of the files: the one that checked __1_0.distcp tells the others
    for rank in four:
        assert rank["flipped"]["error"]["type"] == "CheckpointError"
        assert "__1_0.distcp' is corrupted" in rank["flipped"]["error"]["message"]
        assert rank["flipped"]["unchanged"]


def test_a_rank_failing_mid_save_stops_every_rank_and_keeps_the_old_checkpoint(
    two: list[dict[str, Any]],
) -> None:
    for rank in two:
        found = rank["failed_save"]
        assert found["error"]["type"] == "CheckpointError"
        assert found["error"]["message"].endswith(
            "ck': rank 1 failed in DCP with OSError: disk full on rank 1"
        )
        assert found["manifest_kept"] and found["old_loads"]
        assert found["left"] == []  # the temporary directory was removed


def test_autosave_of_a_sharded_model_rotates_directories(two: list[dict[str, Any]]) -> None:
    for rank in two:
        found = rank["rotation"]
        assert found["files"] == ["autosave-0.pth", "autosave-1.pth"] and found["dirs"] == [True, True]
        assert found["marks"] == [2, 3]  # keep=2 of three saves: the oldest was dropped
        assert found["names"] == ["autosave-0.pth", "autosave-1.pth"]  # no trash, journal, temporary
        assert found["resumed_epochs"] == 3 and found["same_weights"]


def test_best_checkpoint_restores_a_sharded_model_from_a_directory(two: list[dict[str, Any]]) -> None:
    assert two[0]["best"]["restored"] and two[1]["best"]["restored"]


def test_a_directory_is_not_read_as_a_checkpoint_file(shared: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory: a sharded checkpoint"):
        read(shared / "ck")


def test_the_index_is_unpickled_with_dcps_classes_only(shared: Path, tmp_path: Path) -> None:
    """A directory made by hand with a pickle that runs code, and a manifest that matches it."""
    copy = tmp_path / "evil"
    shutil.copytree(shared / "ck", copy)
    marker = tmp_path / "ran"
    (copy / ".metadata").write_bytes(pickle.dumps(_RunsCode(str(marker))))
    sharded._write_manifest(copy, sharded._digests(copy, 0, 1))
    l = worker.sharded_learner(6, sharded_model=False)
    before = worker.snapshot(l)
    with pytest.raises(CheckpointError, match=r"holds a pickled posix\.mkdir|holds a pickled nt\.mkdir"):
        sharded.load(l, copy)
    assert not marker.exists()
    assert_equal(before, worker.snapshot(l))


@pytest.mark.parametrize("inside", [".metadata", "k1lib-manifest.json"])
def test_a_folder_where_a_file_of_the_checkpoint_should_be_is_refused(
    shared: Path, tmp_path: Path, inside: str
) -> None:
    copy = tmp_path / "odd"
    shutil.copytree(shared / "ck", copy)
    (copy / inside).unlink()
    (copy / inside).mkdir()
    l = worker.sharded_learner(6, sharded_model=False)
    before = worker.snapshot(l)
    with pytest.raises(CheckpointError, match=rf"{re.escape(inside)}' cannot be read \(IsADirectoryError"):
        sharded.load(l, copy)
    assert_equal(before, worker.snapshot(l))


class _RunsCode:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.mkdir, (self.path,)


def test_a_replacement_journal_that_k1lib_did_not_write_moves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    journal = tmp_path / ".ck.k1-replacing"
    journal.write_text('{"format": "k1lib.rotation", "moves": [["notes.txt", "ck"]]}')
    assert not sharded.is_checkpoint(tmp_path / "ck")
    assert (tmp_path / "notes.txt").read_text() == "keep me" and journal.exists()
    assert "is not a journal k1lib wrote" in caplog.text
    with pytest.raises(OSError, match="an earlier save there could not be finished"):
        sharded.save(marked(1), tmp_path / "ck")  # the save does not guess
    assert sorted(os.listdir(tmp_path)) == [".ck.k1-replacing", "notes.txt"]


def test_a_folder_that_is_not_a_checkpoint_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is a directory that is not a k1lib sharded checkpoint"):
        sharded.save(learner(), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["notes"]


# ---- kills at every rename -----------------------------------------------------------------------


def marked(mark: int) -> Any:
    """A plain learner with Adam whose checkpoints tell apart by ``l.epochs``."""
    l = learner()
    l.opt = torch.optim.Adam(l.model.parameters(), lr=1e-2)
    l.epochs = mark
    return l


def mark_of(path: Path) -> int:
    l = marked(0)
    sharded.load(l, path)
    return int(l.epochs)


@pytest.fixture
def kill_at() -> Iterator[Callable[[int, Callable[[], object]], bool]]:
    """``kill_at(n, save)``: run ``save()`` in a forked child killed (``os._exit``, nothing
    cleans up) at its ``n``-th rename or tree removal; True if it was killed, False if the
    save finished first."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")

    def run(stop_at: int, save: Callable[[], object]) -> bool:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                calls = [0]

                def counted(original: Callable[..., Any]) -> Callable[..., Any]:
                    def call(*args: Any, **kwargs: Any) -> Any:
                        calls[0] += 1
                        if calls[0] == stop_at:
                            os._exit(9)
                        return original(*args, **kwargs)

                    return call

                os.replace = counted(os.replace)  # type: ignore[assignment]
                os.rename = counted(os.rename)  # type: ignore[assignment]
                shutil.rmtree = counted(shutil.rmtree)  # type: ignore[assignment]
                save()
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 9), f"the save failed in the child (exit {code})"
        return code == 9

    yield run


def leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def test_a_save_killed_at_any_rename_leaves_the_old_or_the_new_checkpoint(
    tmp_path: Path, kill_at: Callable[[int, Callable[[], object]], bool]
) -> None:
    ck = tmp_path / "ck"
    sharded.save(marked(1), ck)
    seen = []
    for stop_at in range(1, 30):
        killed = kill_at(stop_at, lambda: sharded.save(marked(2), ck))
        # at every instant: the old one, the new one, or absent with the journal to finish it
        assert ck.is_dir() or (tmp_path / ".ck.k1-replacing").exists(), stop_at
        assert sharded.is_checkpoint(ck)  # finishes a replacement left half done
        mark = mark_of(ck)
        seen.append(mark)
        sharded.save(marked(1), ck)  # back to the old one; the killed save's leftovers go
        assert leftovers(tmp_path) == [], stop_at
        if not killed:
            break
    else:
        pytest.fail("the save never finished")
    # early kills leave the old one, kills once the journal is on disk the new one
    assert seen[0] == 1 and seen[-1] == 2 and seen == sorted(seen), seen
    assert seen.count(2) >= 3  # after the journal: the two renames and the old one's removal


def test_an_autosave_rotation_of_directories_killed_at_any_rename_keeps_every_checkpoint(
    tmp_path: Path, kill_at: Callable[[int, Callable[[], object]], bool]
) -> None:
    slots = [tmp_path / f"autosave-{i}.pth" for i in range(3)]
    for mark in (1, 2, 3):
        sharded.save_rotated(marked(mark), slots, "autosave")
    seen = []
    for stop_at in range(1, 40):
        killed = kill_at(stop_at, lambda: sharded.save_rotated(marked(4), slots, "autosave"))
        _files.finish(tmp_path)  # as the next save or load in the folder does first
        marks = [mark_of(p) for p in slots if p.exists()]
        assert marks in ([1, 2, 3], [2, 3, 4]), (stop_at, marks)
        seen.append(marks[-1])
        # back to 1, 2, 3: the killed save's leftovers (temporaries, the dropped one) go
        for p in slots:
            shutil.rmtree(p)
        for mark in (1, 2, 3):
            sharded.save_rotated(marked(mark), slots, "autosave")
        assert leftovers(tmp_path) == [], stop_at
        if not killed:
            break
    else:
        pytest.fail("the save never finished")
    assert seen[0] == 3 and seen[-1] == 4 and seen == sorted(seen), seen
