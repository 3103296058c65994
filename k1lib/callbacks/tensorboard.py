"""``TensorBoard``: what the callbacks recorded, written once an epoch for TensorBoard
(``tensorboard --logdir LOGDIR``), with torch's ``SummaryWriter``.

Where it goes (``LOGDIR`` and folders in it, which TensorBoard shows as runs):

- ``train/`` and ``valid/``: each published quantity (``k1lib.callbacks.metrics``) under its
  name without the phase: ``"train loss"`` is tag ``loss`` in ``train/``, ``"valid loss"``
  tag ``loss`` in ``valid/``, so both phases of a quantity share one chart (as Keras writes
  them). Step: the epoch.
- ``LOGDIR`` itself: quantities without a phase; HookModule's and HookParam's statistics
  summed up per epoch (``HookModule/forward/means/0``, ``HookParam/stds/0.weight``: see
  ``_hook_summary``); with ``histograms=True``, a histogram of each parameter (HookParam's
  parameters when it selects some, else all the model's) as ``params/{name}``. Step: the epoch.
- ``lr/``: tag ``lr`` (``lr/group{i}`` for several param groups). With a Scheduler or
  OneCycle, each optimizer step's lr, step = its index in the scheduler's ``cb.lrs``; without
  one, the optimizer's lr at each epoch's end, step = the epoch. Its own folder: a resume
  discards data from its step on, and this step is not the epoch.

The epoch is ``cb.logged`` (see ``_epoch_log``): 0 for this callback's first epoch, counted on
from run to run and in checkpoints. Each run opens new event files, written at each epoch's
end (flushed then) and closed when the run ends, however it ends. A writer starting at step
``s`` marks its file so that TensorBoard's reader discards what earlier files in its folder
hold at step ``s`` or later: a learner resumed from an earlier checkpoint replaces the curves
from there, with no duplicate points; a new learner (step 0) writing into a used folder
replaces what was there (use a folder per experiment to compare them). Only rank 0 writes.

``import k1lib`` does not import ``tensorboard``; making this callback does, and says how to
install it when it is missing.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._unwrap import unwrap
from ._epoch_log import EpochLogger, Lrs, lr_names, split_phase
from ._hook_summary import HookSummary
from .hook_param import HookParam

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TensorBoard"]

_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(\d+)\.")


def summary_writer() -> type[SummaryWriter]:
    """torch's ``SummaryWriter``, or an ImportError saying how to install ``tensorboard``."""
    try:
        importlib.import_module("tensorboard")
        module = importlib.import_module("torch.utils.tensorboard")
    except ImportError as e:
        raise ImportError(
            "cbs.withTensorBoard needs the tensorboard package (torch's SummaryWriter writes with "
            "it): pip install tensorboard, or pip install 'k1lib[tensorboard]'"
        ) from e
    writer: type[SummaryWriter] = module.SummaryWriter
    return writer


def _after_older_files(folder: Path) -> None:
    """Wait until a new event file in ``folder`` sorts after the ones there. TensorBoard reads
    a folder's files in name order, and the name starts with the second the file was made,
    then a counter compared as text (``...9`` after ``...10``): a file made in the same second
    as an older one might be read first (a second at most; files from a clock ahead of this
    one are not waited for)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    seconds = [int(m.group(1)) for m in map(_EVENT_FILE.match, names) if m]
    if seconds:
        newest = max(seconds)
        while int(time.time()) == newest:
            time.sleep(0.05)


class TensorBoard(EpochLogger):
    """Writes the published quantities, the lr and HookModule / HookParam statistics (and,
    with ``histograms``, parameter histograms) to ``logdir`` for TensorBoard, once an epoch;
    see the module docstring for the tags and steps."""

    doc = """
- cb.logdir: the folder to give TensorBoard: tensorboard --logdir <logdir>
- cb.logged: epochs written so far (the next epoch's step)
- cb.histograms: whether parameter histograms are written each epoch
"""

    def __init__(self, logdir: str | os.PathLike[str], histograms: bool = False) -> None:
        super().__init__()
        if not isinstance(logdir, str | os.PathLike):
            raise TypeError(
                f"TensorBoard: logdir must be a path, got {type(logdir).__name__}: {logdir!r:.60}"
            )
        if not str(logdir):
            raise ValueError("TensorBoard: logdir must not be empty; give a folder, e.g. 'runs/exp1'")
        if not isinstance(histograms, bool):
            raise TypeError(f"TensorBoard: histograms must be True or False, got {histograms!r:.60}")
        self._writer_class = summary_writer()  # fails now, not at the run's start, when missing
        self.logdir, self.histograms = logdir, histograms
        self._writers: dict[str, SummaryWriter] = {}
        self._hooks = HookSummary()

    def _writer(self, run: str, step: int) -> SummaryWriter:
        """The writer of folder ``run`` (``""``: logdir), made at its first write, ``step``."""
        writer = self._writers.get(run)
        if writer is None:
            folder = Path(self.logdir) / run
            _after_older_files(folder)
            writer = self._writers[run] = self._writer_class(log_dir=str(folder), purge_step=step)
        return writer

    def begin(self) -> None:
        # a logdir that cannot be a folder fails now, not after the first epoch's training
        folder = Path(self.logdir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"TensorBoard: logdir {os.fspath(self.logdir)!r} cannot be a folder: {e}") from e
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"TensorBoard: logdir {os.fspath(self.logdir)!r} is not writable")
        self._hooks.start(self._callbacks())

    def write_epoch(self, epoch: int, values: dict[str, float], lrs: Lrs) -> None:
        for name, value in values.items():
            run, tag = split_phase(name)
            self._writer(run, epoch).add_scalar(tag, value, epoch)
        for step, groups in lrs:
            for tag, lr in zip(lr_names(len(groups)), groups, strict=True):
                self._writer("lr", step).add_scalar(tag, lr, step)
        for tag, value in self._hooks.take(self._callbacks()).items():
            self._writer("", epoch).add_scalar(tag, value, epoch)
        if self.histograms:
            for name, param in self._parameters():
                flat = param.detach().reshape(-1)
                finite = flat[torch.isfinite(flat)].float().cpu()  # one copy an epoch
                if finite.numel():
                    self._writer("", epoch).add_histogram(f"params/{name}", finite, epoch)
        for writer in self._writers.values():
            writer.flush()

    def _parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """HookParam's parameters when one selects some, else all the model's."""
        model = self.learner.model
        if model is None:
            return []
        named = dict(unwrap(model).named_parameters())
        for cb in self._callbacks():
            if isinstance(cb, HookParam) and not cb.suspended and cb.names:
                return [(n, named[n]) for n in cb.names if n in named]
        return list(named.items())

    def cancelRun(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def finish(self) -> None:
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()
