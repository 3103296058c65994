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
format), untouched for an hour. A temporary that a journal still names is kept.

Directories (a sharded checkpoint, ``_sharded_checkpoint``) are written the same way: into a
temporary directory beside the target, named as a temporary file is, then renamed. A directory
cannot be renamed over another, so replacing one (``replace_tree``) and rotating them take one
more rename: the old directory is first renamed to a temporary name (its trash), and that
rename is journalled like a rotation's (``.{target}.k1-replacing``), so a kill between the
two leaves the journal, and the next ``recover`` puts the new directory in; the trash is then
removed (by the writer, or as a stale temporary by the next save). A stale temporary
directory is removed whole.

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
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "clean",
    "discard",
    "finish",
    "fsync_directory",
    "names",
    "recover",
    "replace",
    "replace_tree",
    "rotate",
    "temporary_directory",
    "write_bytes",
    "write_temporary",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\..+\.k1-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_OLD_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # k1lib before checkpoint format 2
_JOURNAL = re.compile(r"^\.(?P<stem>[A-Za-z0-9_-]+)\.rotation$")
_REPLACE_JOURNAL = re.compile(r"^\.(?P<name>.+)\.k1-replacing$")
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


def temporary_directory(target: Path) -> Path:
    """A new empty temporary directory beside ``target``, named as ``write_temporary`` names a
    file; ``replace_tree`` or ``rotate`` renames it into place, ``discard`` removes it."""
    temporary = _temporary_of(target)
    _ours.add(temporary.name)
    try:
        temporary.mkdir()
    except BaseException:
        _ours.discard(temporary.name)
        raise
    return temporary


def discard(temporary: Path) -> None:
    """Remove a temporary (a file or a directory) of ours that was not renamed into place."""
    _done_with(temporary)


def _done_with(temporary: Path) -> None:
    with contextlib.suppress(OSError):
        _remove(temporary)
    _ours.discard(temporary.name)


def _remove(path: Path) -> None:
    """Remove the file or the directory (whole) at ``path``; a link is removed, not followed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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


def write_bytes(target: Path, content: bytes) -> None:
    """``content`` as the file ``target``, atomically: a temporary flushed to disk, renamed over
    it, the folder flushed. Without the folder's lock or its recovery (``replace`` does both):
    for the small files of a save in progress (a journal, a sharded checkpoint's manifest)."""
    temporary = write_temporary(target, lambda f: _write_all(f, content))
    try:
        os.replace(temporary, target)
    finally:
        _done_with(temporary)
    fsync_directory(target.parent)


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


def _ready(directory: Path, journal: Path, where: str, also: str = "") -> None:
    """Before a journalled save (holding the folder's lock): finish what killed saves left
    (``recover``), refusing when ``journal``'s own earlier save could not be finished, then
    remove stale temporaries (``clean``). ``where`` names the save in the message."""
    stuck = recover(directory)
    if journal.name in stuck:
        raise OSError(
            f"cannot save {where}: an earlier save there could not be finished "
            f"({stuck[journal.name]}); fix that, or remove {str(journal)!r} {also}by hand"
        )
    clean(directory)


def rotate(slots: Sequence[Path], temporary: Path, stem: str) -> Path:
    """Put ``temporary`` (a complete, flushed file from ``write_temporary``, or a complete
    directory from ``temporary_directory``) into the newest of ``slots`` (oldest first, named
    ``{stem}-{i}.pth``, in one folder), shifting the existing ones towards the oldest and
    dropping the oldest beyond ``len(slots)``; returns the newest slot. A rotation of files
    drops the oldest by renaming the next over it; where a directory is involved (a slot or
    ``temporary``), the oldest is first renamed to a temporary name (removed at the end), as
    nothing can be renamed over a directory. A kill at any point is finished by the next
    ``recover``."""
    directory = slots[-1].parent
    journal = _journal_of(directory, stem)

    def work() -> Path:
        _ready(directory, journal, f"into the {stem} rotation in {str(directory)!r}", "and its files ")
        existing = [p for p in slots if p.is_file() or p.is_dir()]
        everything = [*existing, temporary]
        final = everything[-len(slots) :]
        destinations = slots[len(slots) - len(final) :]
        pairs = zip(final, destinations, strict=True)
        moves = [(src.name, dst.name) for src, dst in pairs if src != dst]
        trash = None
        if len(everything) > len(slots) and any(p.is_dir() for p in everything):
            trash = _temporary_of(everything[0])
            moves.insert(0, (everything[0].name, trash.name))
        _journalled(directory, journal, _ordered(moves), committed)
        if trash is not None:
            with contextlib.suppress(OSError):  # else a stale temporary: the next clean's
                _remove(trash)
        return slots[-1]

    committed: list[bool] = []
    try:
        return _locked(directory, work)
    finally:
        if committed:
            _ours.discard(temporary.name)  # renamed into place, or left for the next recover
        else:
            _done_with(temporary)


def replace_tree(temporary: Path, target: Path) -> Path:
    """Rename the directory ``temporary`` (from ``temporary_directory``, complete and flushed)
    to ``target``, replacing what is there (the caller checked it may be replaced). Where
    ``target`` exists, it is first renamed to a temporary name, in a journalled pair of
    renames: at every instant ``target`` is the old one, the new one, or absent with a journal
    that the next ``recover`` (any save or load in the folder) finishes by renaming the new one
    in. The old one is removed afterwards. On a failure before the journal is written,
    ``target`` is as before and ``temporary`` is removed."""
    directory = target.parent
    journal = directory / f".{target.name}.k1-replacing"

    def work() -> Path:
        _ready(directory, journal, f"to {str(target)!r}")
        if not os.path.lexists(target):
            committed.append(True)
            os.replace(temporary, target)
            fsync_directory(directory)
            return target
        trash = _temporary_of(target)
        _journalled(directory, journal, [(target.name, trash.name), (temporary.name, target.name)], committed)
        with contextlib.suppress(OSError):  # else a stale temporary: the next clean's
            _remove(trash)
        return target

    committed: list[bool] = []
    try:
        return _locked(directory, work)
    finally:
        if committed:
            _ours.discard(temporary.name)
        else:
            _done_with(temporary)


def _journalled(directory: Path, journal: Path, moves: list[tuple[str, str]], committed: list[bool]) -> None:
    """Write ``moves`` to ``journal`` (atomically), then do them, then remove the journal. Once
    the journal is on disk (``committed`` gets an entry) the moves will be done, here or by
    the next ``recover``."""
    write_bytes(journal, json.dumps({"format": _JOURNAL_FORMAT, "moves": moves}).encode())
    # the commit point: from here on the journal needs the temporary, whatever happens
    committed.append(True)
    _finish(directory, moves)
    journal.unlink()
    fsync_directory(directory)


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
        if not os.path.lexists(directory / moves[i][0]):
            return moves[i + 1 :]
    return moves


def _finish(directory: Path, moves: list[tuple[str, str]]) -> None:
    for src, dst in moves:
        os.replace(directory / src, directory / dst)
        fsync_directory(directory)  # each rename on disk before the next (power loss)


def finish(directory: Path) -> None:
    """Finish the rotations a killed process left half done in ``directory`` before reading
    from it; failures (a read-only folder) are logged, and the folder is read as it is."""
    if any(_journal_kind(name) for name in names(directory)):
        _locked(directory, lambda: recover(directory))


def _journal_kind(name: str) -> tuple[str, re.Pattern[str]] | None:
    """What the journal named ``name`` does (for messages) and the names its moves may touch
    (a journal cannot move other files); None if ``name`` is not a journal's."""
    found = _JOURNAL.match(name)
    if found is not None:
        stem = re.escape(found.group("stem"))
        # the slots and their temporaries (a rotation's new file, the dropped oldest directory)
        allowed = rf"^(\.)?{stem}-\d+\.pth(?(1)\.k1-[0-9a-f]{{8}}-\d+-[0-9a-f]{{8}}\.tmp)$"
        return f"the {found.group('stem')} rotation", re.compile(allowed)
    found = _REPLACE_JOURNAL.match(name)
    if found is not None:
        target = re.escape(found.group("name"))
        allowed = rf"^(\.)?{target}(?(1)\.k1-[0-9a-f]{{8}}-\d+-[0-9a-f]{{8}}\.tmp)$"
        return f"the replacing of {found.group('name')}", re.compile(allowed, re.DOTALL)
    return None


def recover(directory: Path) -> dict[str, str]:
    """Finish every rotation or replacement in ``directory`` that a killed process left half
    done (the caller holds the folder's lock); returns the names of the journals that could not
    be, with why. Never raises: a journal that cannot be read or finished is logged and left as
    it is."""
    stuck = {}
    for name in names(directory):
        kind = _journal_kind(name)
        if kind is None:
            continue
        (what, allowed), journal = kind, directory / name
        moves = _read_journal(journal, allowed)
        if moves is None:
            noun = "rotation journal" if _JOURNAL.match(name) else "journal"
            _log.warning("k1lib: %s is not a %s k1lib wrote; left as it is", journal, noun)
            stuck[name] = f"{journal} is not a {noun} k1lib wrote"
            continue
        left = _pending(directory, moves)
        try:
            _finish(directory, left)
            journal.unlink()
            fsync_directory(directory)
        except OSError as e:
            _log.warning("k1lib: could not finish %s in %s: %s", what, directory, e)
            stuck[name] = str(e)
            continue
        _log.warning(
            "k1lib: finished %s in %s that an earlier process left half done "
            "(%d of its %d renames were left to do)",
            what,
            directory,
            len(left),
            len(moves),
        )
    return stuck


def _read_journal(journal: Path, allowed: re.Pattern[str]) -> list[tuple[str, str]] | None:
    """The journal's moves; ``None`` if it is not one we wrote: a regular file, small, whose
    moves name only what ``allowed`` matches (a journal cannot move other files)."""
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
    checked = []
    for move in moves:
        if not (isinstance(move, list) and len(move) == 2 and all(isinstance(n, str) for n in move)):
            return None
        if not all(allowed.fullmatch(n) for n in move):
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
    """Remove the temporaries (files or directories) in ``directory`` whose writer is gone (the
    caller holds the folder's lock and has run ``recover``); one that a journal left there
    still names (it could not be finished) is kept. Returns their names."""
    removed = []
    now = time.time()
    listed = names(directory)
    needed = _named_by_journals(directory, listed)
    for name in listed:
        found = _TEMPORARY.match(name)
        if name in _ours or name in needed or not (found or _OLD_TEMPORARY.match(name)):
            continue
        path = directory / name
        if not found and path.is_dir():
            continue  # the old pattern named files only: a folder of that name is the user's
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
                _remove(path)
                removed.append(name)
    if removed:
        _log.info("k1lib: removed %d temporary files killed writers left in %s", len(removed), directory)
    return removed


def _named_by_journals(directory: Path, listed: list[str]) -> set[str]:
    needed: set[str] = set()
    for name in listed:
        kind = _journal_kind(name)
        moves = None if kind is None else _read_journal(directory / name, kind[1])
        for move in moves or ():
            needed.update(move)
    return needed


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
