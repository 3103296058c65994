"""Crash safety of the files k1lib writes (``k1lib/_files.py``): Autosave's rotation under kills
at any point, and the temporary files killed writers leave (issue 12, points 3 and 4)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from k1lib import _files
from k1lib._checkpoint import read

from .helpers import learner

SLOTS = ["autosave-0.pth", "autosave-1.pth", "autosave-2.pth"]


# each test gets its own directory: Autosave writes into the current one
pytestmark = pytest.mark.usefixtures("own_dir")


def autosaver() -> Any:
    """A learner whose Autosave writes a marked checkpoint: ``l.epochs`` is the mark."""
    l = learner()
    l.model.add_module("ballast", torch.nn.Linear(256, 256))  # 260 kB: writes take a while
    return l


def save_marked(l: Any, mark: int) -> None:
    l.epochs = mark
    l.Autosave.save()


def marks(directory: Path = Path()) -> list[int]:
    """The marks in the rotation, oldest first (after finishing a half-done rotation, as the
    first read would); every file must read whole."""
    _files.finish(directory)
    return [read(directory / name)["counters"]["epochs"] for name in SLOTS if (directory / name).exists()]


def leftovers(directory: Path = Path()) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith((".tmp", ".rotation")))


# ---- every point of a rotation, deterministically ------------------------------------------------


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (no except Exception catches it)."""


def test_a_rotation_stopped_before_any_rename_is_finished_by_the_next_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    l = autosaver()
    for mark in (1, 2, 3):
        save_marked(l, mark)
    real = os.replace
    for stop_at in range(1, 5):  # the journal's rename, the two shifts, the new file's rename
        calls = 0

        def replace(src: Any, dst: Any, stop_at: int = stop_at) -> None:
            nonlocal calls
            calls += 1
            if calls == stop_at:
                raise Killed
            real(src, dst)

        previous = marks()
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            save_marked(l, 10 + stop_at)
        monkeypatch.setattr(os, "replace", real)
        # a new process: nothing of the old one's memory
        monkeypatch.setattr(_files, "_ours", set())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            now = marks()  # read() finishes the rotation first
        assert now in (previous, [*previous[1:], 10 + stop_at]), (stop_at, previous, now)
        if stop_at > 1:  # the journal was written: the new file is in
            assert now == [*previous[1:], 10 + stop_at]
        save_marked(l, 20 + stop_at)
        assert leftovers() == []


def test_a_rotation_left_half_done_is_finished_by_autosave_files(monkeypatch: pytest.MonkeyPatch) -> None:
    l = autosaver()
    for mark in (1, 2, 3):
        save_marked(l, mark)
    real = os.replace
    calls = 0

    def replace(src: Any, dst: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:  # after 1 -> 0 and 2 -> 1: autosave-2.pth is missing
            raise Killed
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        save_marked(l, 4)
    monkeypatch.setattr(os, "replace", real)
    assert sorted(n for n in os.listdir() if not n.startswith(".")) == SLOTS[:2]
    assert [p.name for p in l.Autosave.files()] == SLOTS
    assert marks() == [2, 3, 4]
    assert leftovers() == []


@pytest.mark.parametrize(
    "journal",
    [
        '{"format": "k1lib.rotation", "moves": [["notes.txt", "autosave-2.pth"]]}',
        '{"format": "k1lib.rotation", "moves": [["autosave-1.pth", "../autosave-0.pth"]]}',
        '{"format": "k1lib.rotation", "moves": [["autosave-1.pth\\u0000", "autosave-0.pth"]]}',
        "[" * 100_000,
        "fifo",
    ],
    ids=["other-file", "other-folder", "nul", "deep-json", "fifo"],
)
def test_a_journal_that_k1lib_did_not_write_moves_nothing(
    journal: str, caplog: pytest.LogCaptureFixture
) -> None:
    l = autosaver()
    save_marked(l, 1)
    Path("notes.txt").write_text("mine")
    if journal == "fifo":
        os.mkfifo(".autosave.rotation")  # opening it for reading would wait for a writer
    else:
        Path(".autosave.rotation").write_text(journal)
    l.save("other.pth")  # saves elsewhere in the folder go on
    assert "not a rotation journal k1lib wrote" in caplog.text
    assert Path("notes.txt").read_text() == "mine" and marks() == [1]
    with pytest.raises(
        OSError, match=r"an earlier save there could not be finished .*remove '\.autosave\.rotation'"
    ):
        save_marked(l, 2)  # the rotation itself does not guess
    assert marks() == [1]


# ---- signals and forks ---------------------------------------------------------------------------


def run_in_child(work: Any, timeout: float = 20.0) -> int:
    """Run ``work()`` in a forked child; its exit status, or -1 if it had not ended in time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with torch's threads
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_signal_handler_that_saves_during_a_save_does_not_deadlock() -> None:
    # a preemption handler (SIGTERM, SIGUSR1 on a cluster) that saves: the main thread may be
    # inside a save when it runs; before, the handler waited for a lock its own thread held
    l = autosaver()
    save_marked(l, 1)

    def work() -> None:
        real = os.replace

        def slow_replace(src: Any, dst: Any) -> None:
            time.sleep(0.05)
            real(src, dst)

        os.replace = slow_replace
        signal.signal(signal.SIGALRM, lambda *args: save_marked(l, 3))
        signal.setitimer(signal.ITIMER_REAL, 0.08)  # lands among the renames of save 2
        save_marked(l, 2)
        signal.setitimer(signal.ITIMER_REAL, 0)

    assert run_in_child(work) == 0
    assert marks() in ([1, 2, 3], [1, 3, 2])  # both saves are in, whichever finished first
    assert leftovers() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_process_forked_during_a_save_does_not_keep_the_folder_locked() -> None:
    import fcntl

    children = []

    def work() -> None:  # runs holding the lock, as the renames do
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()  # a DataLoader worker, a multiprocessing pool started meanwhile
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        children.append(pid)

    _files._locked(Path(), work)
    fd = os.open(".", os.O_RDONLY)
    try:
        # the child lets go of its copy as soon as it runs (before: when it exits, 3 s later)
        deadline = time.monotonic() + 1.5
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the forked child holds the folder's lock"
                time.sleep(0.01)
    finally:
        os.close(fd)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


# ---- real kills ----------------------------------------------------------------------------------


def writer(l: Any, first: int, report: int) -> None:
    """The child: save marks first, first+1, ... forever, with slow renames (a kill lands
    between them often), telling the parent each mark it starts and finishes."""
    real = os.replace

    def slow_replace(src: Any, dst: Any) -> None:
        time.sleep(0.004)
        real(src, dst)

    os.replace = slow_replace
    mark = first
    while True:
        os.write(report, f"S{mark}\n".encode())
        save_marked(l, mark)
        os.write(report, f"D{mark}\n".encode())
        mark += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kills_at_random_points_never_lose_a_checkpoint() -> None:
    l = autosaver()
    rng = random.Random(12)
    history: list[int] = []  # the marks saved completely, in order
    next_mark = 1
    deadline = time.monotonic() + 30
    kills = 0
    landed = {"before the journal": 0, "after it": 0}  # kills during a save, by where they hit
    while kills < 40 and time.monotonic() < deadline:
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with torch's threads
            pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                os.close(read_end)
                writer(l, next_mark, write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        time.sleep(rng.uniform(0.005, 0.12))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with os.fdopen(read_end) as lines:
            reported = lines.read().split()
        kills += 1
        done = [int(r[1:]) for r in reported if r[0] == "D"]
        started = [int(r[1:]) for r in reported if r[0] == "S"]
        history += done
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "finished the rotation ..."
            now = marks()
        # the previous files, or the previous files plus the one being written
        unfinished = [s for s in started if s not in done]
        allowed = [history[-3:]] + [(history + unfinished)[-3:]] * bool(unfinished)
        assert now in allowed, (kills, reported, now, allowed)
        if unfinished:
            landed["after it" if now == allowed[-1] else "before the journal"] += 1
        if unfinished and now == allowed[-1]:
            history += unfinished
        next_mark = max(started, default=next_mark - 1) + 1
    assert kills >= 20
    assert landed["before the journal"] >= 3 and landed["after it"] >= 3, landed
    # the next save leaves no temporary files and no journal behind
    save_marked(l, next_mark)
    assert leftovers() == []
    assert marks() == [*history, next_mark][-3:]


# ---- stale temporaries ---------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_save_removes_temporaries_whose_writer_is_gone() -> None:
    host = _files._HOST
    dead = Path(f".ck.pth.k1-{host}-{dead_pid()}-0123abcd.tmp")
    alive = Path(f".ck.pth.k1-{host}-{os.getppid()}-0123abcd.tmp")  # pytest's parent runs
    elsewhere_old = Path(".ck.pth.k1-00000000-1-0123abcd.tmp")
    elsewhere_new = Path(".ck.pth.k1-00000000-2-0123abcd.tmp")
    before_version_2_old = Path(".ck.pth.0123abcd.tmp")  # named as k1lib named them before
    before_version_2_new = Path(".ck.pth.4567abcd.tmp")
    not_ours = Path(".ck.pth.tmp")
    for p in (
        dead,
        alive,
        elsewhere_old,
        elsewhere_new,
        before_version_2_old,
        before_version_2_new,
        not_ours,
    ):
        p.write_bytes(b"half a checkpoint")
    hours_ago = time.time() - 2 * 3600
    for p in (elsewhere_old, before_version_2_old, not_ours):
        os.utime(p, (hours_ago, hours_ago))
    l = learner()
    l.save("other.pth")
    assert sorted(n for n in os.listdir() if n.startswith(".")) == sorted(
        p.name for p in (alive, elsewhere_new, before_version_2_new, not_ours)
    )


def test_a_temporary_a_journal_needs_is_kept_and_used(caplog: pytest.LogCaptureFixture) -> None:
    l = autosaver()
    for mark in (1, 2, 3, 4):
        save_marked(l, mark)
    # as a process killed after the first shift of saving 4 left it: the new file is still a
    # temporary, of a dead process, and the journal names it
    temporary = Path(f".autosave-2.pth.k1-{_files._HOST}-{dead_pid()}-0123abcd.tmp")
    os.replace("autosave-2.pth", temporary)
    os.replace("autosave-1.pth", "autosave-2.pth")
    Path(".autosave.rotation").write_text(
        '{"format": "k1lib.rotation", "moves": [["autosave-1.pth", "autosave-0.pth"], '
        f'["autosave-2.pth", "autosave-1.pth"], ["{temporary.name}", "autosave-2.pth"]]}}'
    )
    learner().save("other.pth")  # a save in the folder: finish the rotation, then clean
    assert "finished the autosave rotation" in caplog.text and "(2 of its 3 renames" in caplog.text
    assert marks() == [2, 3, 4]
    assert leftovers() == []
