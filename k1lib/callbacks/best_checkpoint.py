"""``BestCheckpoint``: a checkpoint of the epoch where a recorded quantity was best.

It watches one of the per-epoch quantities the callbacks publish (``"valid loss"``, a metric:
``k1lib.callbacks.metrics``) and, at the end of each epoch that improves it, saves the learner
with ``Learner.save`` (the same atomic writer: a crash mid-save leaves the previous best
whole). ``restoreBest`` puts the best epoch's weights back into the model when the run ends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .callback import Callback
from .early_stopping import _Monitor

__all__ = ["BestCheckpoint"]


class BestCheckpoint(Callback):
    """Saves the learner to ``path`` (``l.save``: ``l.load(path)`` resumes from it) at the end
    of each epoch where ``monitor`` is better than ever (``mode="min"``: lower; ``"max"``:
    higher). With ``restoreBest``, the model gets the best epoch's weights back (bit for bit;
    the model only: the optimizer and the callbacks keep the last epoch's state) when the run
    ends, however it ended. An unknown ``monitor`` fails as the run starts, listing the
    quantities there are. With several processes every rank decides the same (the quantities
    are agreed across ranks) and rank 0 writes; a sharded model (FSDP2) is saved by every rank,
    as a directory (``k1lib._sharded_checkpoint``), and its best weights are kept as shards.

    Its state (the best value) is in checkpoints and kept from run to run: a later run saves
    only what beats the earlier runs' best."""

    order = 45  # after Loss, the metrics and EarlyStopping: the file holds their epoch's state
    doc = """
- cb.path: the best checkpoint's file; l.load(cb.path) resumes from it
- cb.best: the best value of the monitored quantity so far
- cb.bestEpoch: the epoch (of its run) it was recorded in
"""

    def __init__(
        self,
        path: str | os.PathLike[str],
        monitor: str = "valid loss",
        mode: str = "min",
        restoreBest: bool = False,  # noqa: N803 - camelCase as the seed's arguments
    ) -> None:
        super().__init__()
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"BestCheckpoint: path must be a path, got {type(path).__name__}: {path!r:.60}")
        self._monitor = _Monitor("BestCheckpoint", monitor, mode)
        self.path, self.monitor, self.mode, self.restoreBest = path, monitor, mode, bool(restoreBest)
        self.bestEpoch: int | None = None
        # the best weights of this run, on the CPU (restoreBest only): no file read at the end
        self._weights: dict[str, Any] | None = None

    @property
    def best(self) -> float | None:
        """The best value of the monitored quantity so far (None before any)."""
        return self._monitor.best

    def startRun(self) -> None:
        assert self.cbs is not None
        self._monitor.check(self.cbs)
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"BestCheckpoint: the folder of {str(self.path)!r} does not exist")
        self._weights = None

    def endEpoch(self) -> None:
        assert self.cbs is not None
        value = self._monitor.new_value(self.cbs)
        if value is None or not self._monitor.improves(value):
            return
        learner = self.learner
        self._monitor.best, self.bestEpoch = value, learner.epoch
        learner.save(self.path)  # after the update: the file holds this callback's new best
        if self.restoreBest:
            from .._fsdp import is_sharded
            from .._unwrap import unwrap

            assert learner.model is not None
            if is_sharded(learner.model):  # this rank's shards, on the CPU
                from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

                shards = get_model_state_dict(unwrap(learner.model), options=StateDictOptions())
                # one copy on the CPU (torch's cpu_offload makes none of shards already there:
                # they would follow training)
                self._weights = {
                    k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
                    for k, v in shards.items()
                }
                return
            state = unwrap(learner.model).state_dict()
            self._weights = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def endRun(self) -> None:
        if not self.restoreBest or self._monitor.best is None:
            return
        from .._fsdp import is_sharded
        from .._unwrap import unwrap

        assert self.learner.model is not None
        model = unwrap(self.learner.model)
        if self._weights is not None:
            if is_sharded(model):
                from torch.distributed.checkpoint.state_dict import set_model_state_dict

                set_model_state_dict(model, self._weights)
            else:
                model.load_state_dict(self._weights)
        elif Path(self.path).is_dir():  # an earlier run's best (a resumed run), saved sharded
            from .._sharded_checkpoint import load_weights

            load_weights(model, self.path)
        else:  # an earlier run's best (a resumed run): it is in the file
            from .._checkpoint import read

            model.load_state_dict(read(self.path, map_location="cpu")["model"])

    def state_dict(self) -> dict[str, Any]:
        return {**self._monitor.state_dict(), "best_epoch": self.bestEpoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._monitor.load_state_dict(state)
        self.bestEpoch = state["best_epoch"]
