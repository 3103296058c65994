"""Files that survive a kill at any instant: atomic writes, crash-safe rotations, stale temporaries.

Every file k1lib writes goes first to a temporary file beside its target, named
``.{target}.k1-{host}-{pid}-{token}.tmp`` (``host`` a hash of the machine's name), flushed to
disk, then renamed over the target: a reader sees the old file or the new one, never half.

A rotation (``Autosave``'s ``autosave-0.pth`` .. ``autosave-2.pth``) needs several renames.
Before the first, the planned renames are written to a small journal (``.{stem}.rotation``,
itself written atomically); the journal is removed after the last. A process killed before
the journal exists leaves the previous files (and a temporary, removed later); killed after,
it leaves the journal, and the next save or load in that folder finishes the rotation
(``recover``), so the new file is in and no file is lost but the oldest, which a rotation
drops anyway. Which renames were done is read from the files themselves (``_pending``).

A writer killed before its rename leaves its temporary file. The next save in the folder
removes temporaries whose writer is gone (``clean``): of our naming, from this machine, whose
process no longer runs; from another machine (or named as before version 2 of the checkpoint
format), untouched for an hour.

The renames and recoveries in one folder are serialised by ``flock`` on the folder (POSIX;
where it is not available, as on Windows, two processes must not rotate one folder at the
same time). The lock is taken by a short-lived thread (``_locked``): a signal handler that
saves while the main thread is inside a save then waits for that thread, not for itself, and
a process forked meanwhile does not inherit the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = ["clean", "finish", "fsync_directory", "names", "recover", "replace", "rotate", "write_temporary"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\..+\.k1-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_OLD_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # k1lib before checkpoint format 2
_JOURNAL = re.compile(r"^\.(?P<stem>[A-Za-z0-9_-]+)\.rotation$")
_JOURNAL_FORMAT = "k1lib.rotation"
_JOURNAL_MAX_BYTES = 1 << 16
# another machine's temporary untouched this long is stale (its process cannot be asked)
_STALE_AFTER_S = 3600.0
# temporaries this process is writing now (another thread may save while one cleans)
_ours: set[str] = set()
# lock descriptors held now: a forked child closes its copies (see _locked)
_held: set[int] = set()


def _temporary_of(target: Path) -> Path:
    return target.parent / f".{target.name}.k1-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def write_temporary(target: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """A new temporary file beside ``target`` holding what ``write(f)`` wrote, flushed to disk.
    On failure it is removed and the error raised."""
    temporary = _temporary_of(target)
    _ours.add(temporary.name)
    try:
        # os.open, not mkstemp: the file gets the usual permissions (umask), not 0600
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(temporary, flags, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _done_with(temporary)
        raise
    return temporary


def _done_with(temporary: Path) -> None:
    with contextlib.suppress(OSError):
        temporary.unlink(missing_ok=True)
    _ours.discard(temporary.name)


def replace(temporary: Path, target: Path) -> Path:
    """Rename ``temporary`` (from ``write_temporary``) over ``target``, after finishing the
    rotations and removing the stale temporaries of the folder. On failure ``target`` is as
    before and the temporary is removed."""

    def work() -> Path:
        recover(target.parent)
        clean(target.parent)
        os.replace(temporary, target)
        fsync_directory(target.parent)
        return target

    try:
        return _locked(target.parent, work)
    finally:
        _done_with(temporary)


def fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _locked(directory: Path, work: Callable[[], _T]) -> _T:
    """``work()`` run by a new thread holding an exclusive ``flock`` on ``directory``.

    A thread, so that no lock is ever held by the thread Python runs signal handlers in: a
    handler that saves into the same folder waits for this thread to finish, as another
    process would, instead of for itself. The caller waits; what ``work`` raises is raised."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with _flock(directory):
                outcome["value"] = work()
        except BaseException as e:  # handed to the caller
            outcome["error"] = e

    # not a daemon: an interpreter exiting (Ctrl-C in the caller) lets the renames finish
    thread = threading.Thread(target=run, name="k1lib-files")
    thread.start()
    try:
        thread.join()
    except BaseException:  # Ctrl-C: the renames finish (or fail) before the caller cleans up
        thread.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def _flock(directory: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    _held.add(fd)
    try:
        with contextlib.suppress(OSError):  # a filesystem without locks: go on unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _held.discard(fd)
        os.close(fd)  # closing releases the lock


def _close_held() -> None:
    """In a forked child: close the copies of the parent's lock descriptors (the lock stays
    with the parent's thread, which the child does not have)."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held)


# ---- rotations -----------------------------------------------------------------------------------


def _journal_of(directory: Path, stem: str) -> Path:
    return directory / f".{stem}.rotation"


def rotate(slots: Sequence[Path], temporary: Path, stem: str) -> Path:
    """Put ``temporary`` (a complete, flushed file from ``write_temporary``) into the newest of
    ``slots`` (oldest first, named ``{stem}-{i}.pth``, in one folder), shifting the existing
    files towards the oldest and dropping the oldest beyond ``len(slots)``; returns the newest
    slot. A kill at any point is finished by the next ``recover``."""
    directory = slots[-1].parent

    def work() -> Path:
        stuck = recover(directory)
        if stem in stuck:
            raise OSError(
                f"cannot save into the {stem} rotation in {str(directory)!r}: an earlier rotation "
                f"there could not be finished ({stuck[stem]}); fix that, or remove "
                f"{str(_journal_of(directory, stem))!r} and its files by hand"
            )
        clean(directory)
        existing = [p for p in slots if p.is_file()]
        final = [*existing, temporary][-len(slots) :]
        destinations = slots[len(slots) - len(final) :]
        pairs = zip(final, destinations, strict=True)
        moves = _ordered([(src.name, dst.name) for src, dst in pairs if src != dst])
        journal = _journal_of(directory, stem)
        content = json.dumps({"format": _JOURNAL_FORMAT, "moves": moves}).encode()
        journal_temporary = write_temporary(journal, lambda f: _write_all(f, content))
        try:
            os.replace(journal_temporary, journal)
        finally:
            _done_with(journal_temporary)
        fsync_directory(directory)
        # the commit point: from here on the journal needs the temporary, whatever happens
        committed.append(True)
        _finish(directory, moves)
        journal.unlink()
        fsync_directory(directory)
        return slots[-1]

    committed: list[bool] = []
    try:
        return _locked(directory, work)
    finally:
        if committed:
            _ours.discard(temporary.name)  # renamed into place, or left for the next recover
        else:
            _done_with(temporary)


def _write_all(f: IO[bytes], content: bytes) -> None:
    f.write(content)


def _ordered(moves: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``moves`` ordered so that none overwrites a file a later one still reads: the
    journal's recovery relies on it (``_pending``)."""
    todo, done = list(moves), []
    while todo:
        sources = {src for src, _ in todo}
        ready = next((m for m in todo if m[1] not in sources), None)
        if ready is None:  # a cycle: impossible for a shift that keeps the files' order
            raise RuntimeError(f"k1lib: cannot order the rotation's renames {moves}")
        todo.remove(ready)
        done.append(ready)
    return done


def _pending(directory: Path, moves: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The moves of a journal not yet done. No move overwrites a file a later move reads, so
    every move not done still has its source; the last one done has not (only a later move,
    not done, could have put a file back there). So the moves after the last one whose source
    is gone are the ones left."""
    for i in range(len(moves) - 1, -1, -1):
        if not (directory / moves[i][0]).exists():
            return moves[i + 1 :]
    return moves


def _finish(directory: Path, moves: list[tuple[str, str]]) -> None:
    for src, dst in moves:
        os.replace(directory / src, directory / dst)
        fsync_directory(directory)  # each rename on disk before the next (power loss)


def finish(directory: Path) -> None:
    """Finish the rotations a killed process left half done in ``directory`` before reading
    from it; failures (a read-only folder) are logged, and the folder is read as it is."""
    if any(_JOURNAL.match(name) for name in names(directory)):
        _locked(directory, lambda: recover(directory))


def recover(directory: Path) -> dict[str, str]:
    """Finish every rotation in ``directory`` that a killed process left half done (the caller
    holds the folder's lock); returns the stems of those that could not be, with why. Never
    raises: a journal that cannot be read or finished is logged and left as it is."""
    stuck = {}
    for name in names(directory):
        found = _JOURNAL.match(name)
        if found is None:
            continue
        stem, journal = found.group("stem"), directory / name
        moves = _read_journal(journal, stem)
        if moves is None:
            _log.warning("k1lib: %s is not a rotation journal k1lib wrote; left as it is", journal)
            stuck[stem] = f"{journal} is not a rotation journal k1lib wrote"
            continue
        left = _pending(directory, moves)
        try:
            _finish(directory, left)
            journal.unlink()
            fsync_directory(directory)
        except OSError as e:
            _log.warning("k1lib: could not finish the %s rotation in %s: %s", stem, directory, e)
            stuck[stem] = str(e)
            continue
        _log.warning(
            "k1lib: finished the %s rotation in %s that an earlier process left half done "
            "(%d of its %d renames were left to do)",
            stem,
            directory,
            len(left),
            len(moves),
        )
    return stuck


def _read_journal(journal: Path, stem: str) -> list[tuple[str, str]] | None:
    """The journal's moves; ``None`` if it is not one we wrote: a regular file, small, whose
    moves name only this rotation's slots and temporaries (a journal cannot move other files)."""
    try:
        fd = os.open(journal, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _JOURNAL_MAX_BYTES:
            return None
        content = json.loads(os.read(fd, _JOURNAL_MAX_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    if not isinstance(content, dict) or content.get("format") != _JOURNAL_FORMAT:
        return None
    moves = content.get("moves")
    if not isinstance(moves, list):
        return None
    ours = re.compile(rf"^(\.)?{re.escape(stem)}-\d+\.pth(?(1)\.k1-[0-9a-f]{{8}}-\d+-[0-9a-f]{{8}}\.tmp)$")
    checked = []
    for move in moves:
        if not (isinstance(move, list) and len(move) == 2 and all(isinstance(n, str) for n in move)):
            return None
        if not all(ours.match(n) for n in move):
            return None
        checked.append((move[0], move[1]))
    return checked


def names(directory: Path) -> list[str]:
    """The names in ``directory`` (none if it cannot be listed)."""
    try:
        return os.listdir(directory)
    except OSError:
        return []


# ---- stale temporaries ---------------------------------------------------------------------------


def clean(directory: Path) -> list[str]:
    """Remove the temporaries in ``directory`` whose writer is gone (the caller holds the
    folder's lock and has run ``recover``, so no journal needs one); returns their names."""
    removed = []
    now = time.time()
    for name in names(directory):
        found = _TEMPORARY.match(name)
        if name in _ours or not (found or _OLD_TEMPORARY.match(name)):
            continue
        path = directory / name
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if found and found.group("host") == _HOST and os.name != "nt":  # os.kill on Windows kills
            gone = not _running(int(found.group("pid")))
        else:
            gone = age > _STALE_AFTER_S
        if gone:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(name)
    if removed:
        _log.info("k1lib: removed %d temporary files killed writers left in %s", len(removed), directory)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # not in _ours: a write of ours that failed without cleaning up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid too large to ask about: keep it)
    return True
