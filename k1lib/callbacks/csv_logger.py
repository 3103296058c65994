"""``CSVLogger``: one row per epoch in a CSV file: the epoch, each published quantity, the lr
and the seconds trained so far.

Columns: ``epoch`` (``cb.logged`` before the row: 0 first, counted on from run to run and in
checkpoints; see ``_epoch_log``), the published quantities (``train loss``, ``valid loss``,
``valid accuracy``, ...: every name published when a row is written, in publishing order; a
cell is empty when its epoch recorded no value), the lr (``lr``, or ``lr/group0``, ... for
several param groups: the lr of the epoch's last optimizer step from a Scheduler or OneCycle,
else the optimizer's at the epoch's end) and ``elapsed`` (seconds of training in the runs of
this callback, checkpoints included). Numbers are written as Python's ``repr``: ``float()``
of a cell is the recorded value exactly.

Writing: the first row of each run rewrites the file atomically (a temporary file renamed over
it, as checkpoints are written), keeping the rows of the epochs before that row's: after an
earlier run all of them, after ``l.load`` those before the checkpoint's epoch (a resumed
learner goes on where its checkpoint was and drops what a lost later part of the run wrote);
a new learner (epoch 0) starts the file afresh. Later rows are appended, one write and a
flush each; a row a crash tore (no line end) is dropped when the file is next read. A
quantity that appears after the first row (a callback added between runs) widens the header:
the file is rewritten atomically with the new column, earlier rows empty in it. Only rank 0
writes.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from pathlib import Path
from typing import IO, Any, TextIO

from .. import _files
from ._epoch_log import EpochLogger, Lrs, lr_names
from .metrics import quantities

__all__ = ["CSVLogger"]

_LR = re.compile(r"^lr(/group\d+)?$")
_FIXED = ("epoch", "elapsed")


class CSVLogger(EpochLogger):
    """Writes a CSV row per epoch to ``path``: the epoch, the published quantities, the lr and
    the seconds trained (see the module docstring)."""

    doc = """
- cb.path: the CSV file (csv.DictReader reads it; float() of a cell is the recorded value)
- cb.logged: epochs written so far (the next row's epoch)
- cb.elapsed: seconds of training so far, over all runs
"""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"CSVLogger: path must be a path, got {type(path).__name__}: {path!r:.60}")
        if not str(path):
            raise ValueError("CSVLogger: path must not be empty; give a file, e.g. 'log.csv'")
        self.path = path
        self.elapsed = 0.0
        self._columns: list[str] = []
        self._file: TextIO | None = None
        self._started = 0.0  # time.perf_counter() as the run started
        self._before = 0.0  # elapsed before this run

    def begin(self) -> None:
        if not Path(self.path).parent.is_dir():
            raise FileNotFoundError(f"CSVLogger: the folder of {str(self.path)!r} does not exist")
        if Path(self.path).is_dir():
            raise IsADirectoryError(f"CSVLogger: {str(self.path)!r} is a folder; give a file, e.g. 'log.csv'")
        if not os.access(Path(self.path).parent, os.W_OK):
            raise PermissionError(f"CSVLogger: the folder of {str(self.path)!r} is not writable")
        self._started, self._before = time.perf_counter(), self.elapsed
        self._columns, self._file = [], None

    def write_epoch(self, epoch: int, values: dict[str, float], lrs: Lrs) -> None:
        self.elapsed = self._before + time.perf_counter() - self._started
        last = lrs[-1][1] if lrs else self.optimizer_lrs()  # no step this epoch: the optimizer's
        row = {"epoch": str(epoch), **{name: repr(value) for name, value in values.items()}}
        row.update(zip(lr_names(len(last)), map(repr, last), strict=True))
        row["elapsed"] = f"{self.elapsed:.3f}"
        rows: list[dict[str, str]] | None = None
        if self._file is None:  # the run's first row: what the file holds decides the columns
            rows = self._read(before=epoch)
        columns = self._wanted(row)
        if rows is None and columns == self._columns:
            self._write([row], append=True)
            return
        if rows is None:  # a new column: the file again, wider
            rows = self._read(before=epoch)
        self._columns = columns
        self._write([*rows, row], append=False)

    def _wanted(self, row: dict[str, str]) -> list[str]:
        """The columns the file needs: the ones it has, then new quantities and lrs."""
        cbs = self._callbacks()
        lrs = [c for c in self._columns if _LR.match(c)]
        lrs += [c for c in row if _LR.match(c) and c not in lrs]
        names = [c for c in self._columns if c not in _FIXED and c not in lrs]
        names += [n for n in quantities(cbs) if n not in names and n not in lrs and n not in _FIXED]
        return ["epoch", *names, *lrs, "elapsed"]

    def _read(self, before: int) -> list[dict[str, str]]:
        """The file's rows of epochs before ``before`` (its columns become the known ones);
        none for epoch 0: a new record."""
        path = Path(self.path)
        if before == 0 or not path.is_file():
            return []
        text = path.read_text(encoding="utf-8")
        text = text[: text.rfind("\n") + 1]  # a last row without its line end was torn by a crash
        reader = csv.DictReader(io.StringIO(text))
        self._columns = [c for c in reader.fieldnames or [] if c]
        rows = []
        for record in reader:
            try:
                epoch = int(record.get("epoch") or "")
            except ValueError:
                continue  # not one of our rows
            if epoch < before:
                rows.append({k: v for k, v in record.items() if k is not None and v is not None})
        return rows

    def _write(self, rows: list[dict[str, str]], append: bool) -> None:
        """Append ``rows`` (one write, flushed), or write the whole file atomically."""
        text = io.StringIO()
        writer = csv.DictWriter(text, self._columns, restval="", lineterminator="\n")
        if append:
            writer.writerows(rows)
            assert self._file is not None
            self._file.write(text.getvalue())
            self._file.flush()
            return
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode("utf-8")

        def write(f: IO[bytes]) -> None:
            f.write(data)

        self.finish()
        target = Path(self.path)
        _files.replace(_files.write_temporary(target, write), target)
        self._file = open(target, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open for the run

    def finish(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "elapsed": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        elapsed = state.get("elapsed", 0.0)
        if isinstance(elapsed, bool) or not isinstance(elapsed, int | float) or not elapsed >= 0:
            raise ValueError(f"{self.name}: 'elapsed' should be a number of 0 or more, got {elapsed!r:.60}")
        super().load_state_dict(state)
        self.elapsed = float(elapsed)
