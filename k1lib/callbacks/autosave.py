"""``Autosave``: a checkpoint at the end of every run, in a rotation of the last few."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .._live import say
from .callback import Callback

__all__ = ["Autosave"]

_log = logging.getLogger(__name__)


class Autosave(Callback):
    """Saves the learner (``Learner.save``) at the end of each run into ``directory`` (made
    when first needed), keeping the last ``keep``: ``autosave-0.pth`` is the oldest and
    ``autosave-{keep-1}.pth`` (``autosave-2.pth`` by default) the newest. Each save shifts the
    files down one (1 to 0, 2 to 1, the oldest dropped) and writes the newest, then prints
    ``Saved to autosave-2.pth``.

    A run that ends normally or is cancelled (``CancelRunException``) is saved. A run that an
    exception or a KeyboardInterrupt ends is not: it may have stopped halfway through a step,
    and a checkpoint of that would not resume like any real run; the rotation is left as it
    was and a warning is logged (``l.save(path)`` still saves the state by hand). The failure
    is seen as the exception in flight when the Learner fires ``endRun`` from its ``finally``.
    The new checkpoint is written completely before any file is shifted, so a failed save (a
    full disk) leaves the previous rotation whole; the renames are journalled, so a process
    killed among them is finished by the next save, ``files()`` or ``l.load`` in the folder,
    which then holds the new file and the previous ones but the oldest (``k1lib._files``).
    ``Learner.record()`` suspends this callback, so recording saves nothing. With several
    processes only rank 0 writes and prints; the run's last agreement comes after, so no rank
    leaves the run before the file is there.

    A sharded model (FSDP2: ``k1lib._fsdp.is_sharded``) is saved by every rank, each slot a
    directory of the same name (``autosave-2.pth/``, a sharded checkpoint:
    ``k1lib._sharded_checkpoint``), rotated as the files are: a directory cannot be renamed
    over another, so the oldest is first renamed aside, in the same journal, and removed after.
    ``l.load(cb.files()[-1])`` loads either kind.
    """

    doc = """
- cb.directory: the folder the checkpoints go to
- cb.keep: how many checkpoints the rotation keeps
- cb.files(): the checkpoints there (files, or directories for a sharded model), oldest first;
  l.load(cb.files()[-1]) resumes the newest
- cb.save(): to save now (and rotate)
"""

    def __init__(self, directory: str | os.PathLike[str] = ".", keep: int = 3) -> None:
        super().__init__()
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"Autosave: keep must be an int of 1 or more, got {keep!r}")
        if not isinstance(directory, str | os.PathLike):
            raise TypeError(
                f"Autosave: directory must be a path, got {type(directory).__name__}: {directory!r:.60}"
            )
        self.directory = directory
        self.keep = keep
        self._running = False
        self._outer: BaseException | None = None

    def _path(self, i: int) -> Path:
        """The file (or directory) of rotation slot ``i`` (0 is the oldest)."""
        return Path(self.directory) / f"autosave-{i}.pth"

    def _slots(self) -> list[Path]:
        return [self._path(i) for i in range(self.keep)]

    def files(self) -> list[Path]:
        """The rotation's files that exist, oldest first (a rotation that a killed process left
        half done is finished first)."""
        from .._checkpoint import finish_rotations

        finish_rotations(Path(self.directory))
        return [p for p in self._slots() if p.is_file() or p.is_dir()]

    def save(self) -> Path:
        """Save the learner as the newest checkpoint, shifting the older ones; returns its path.
        With several processes, every rank builds the checkpoint and rank 0 writes it; a
        sharded model's is written by every rank (a collective: every rank calls this)."""
        from .._checkpoint import checkpoint_of, write_rotated
        from .._fsdp import is_sharded

        if is_sharded(self.learner.model):
            from .._sharded_checkpoint import save_rotated

            Path(self.directory).mkdir(parents=True, exist_ok=True)
            return save_rotated(self.learner, self._slots(), "autosave")
        checkpoint = checkpoint_of(self.learner)
        if self.learner.rank != 0:
            return self._path(self.keep - 1)
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        return write_rotated(checkpoint, self._slots(), "autosave")

    def startRun(self) -> None:
        self._running = True
        # an exception being handled already (run() called inside an except block) is not
        # this run's failure
        self._outer = sys.exc_info()[1]

    def endRun(self) -> None:
        # the Learner fires endRun in a finally: an exception in flight now is the run's own
        running, outer, self._running, self._outer = self._running, self._outer, False, None
        error = sys.exc_info()[1]
        if not running or (error is not None and error is not outer):
            what = type(error).__name__ if error is not None else "a failure before it started"
            _log.warning(
                "Autosave: the run ended with %s: not saved; the checkpoints in %s are unchanged",
                what,
                os.fspath(self.directory),
            )
            return
        path = self.save()
        if self.learner.rank == 0:
            say(f"Saved to {path}")
