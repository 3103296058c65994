"""``Loss``: records training and validation losses, per batch and per epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .callback import Callback

if TYPE_CHECKING:
    from .._group import Group

__all__ = ["Loss"]


class EpochValues:
    """``cb.epoch.train`` / ``cb.epoch.valid``: one value per epoch (Loss's mean losses, a
    Metric's values); ``what`` names them in the repr."""

    def __init__(self, what: str = "losses") -> None:
        self.what = what
        self.train: list[float] = []
        self.valid: list[float] = []

    def __repr__(self) -> str:
        return f"epoch {self.what}: train {self.train}, valid {self.valid}"


class Loss(Callback):
    """Losses of every batch (``train``, ``valid``) and epoch means (``epoch.train``,
    ``epoch.valid``). Losses stay tensors during an epoch and reach the host once at its
    end: no device sync per batch. With several processes each loss is the mean over the
    ranks of that batch's losses (every rank holds the same lists)."""

    order = 20
    doc = """
- cb.train: for all training losses over all epochs and batches (#epochs * #batches)
- cb.valid: for all validation losses over all epochs and batches (#epochs * #batches)
- cb.plot(): to plot the 2 above
- cb.epoch: for average losses of each epochs
"""

    def __init__(self) -> None:
        super().__init__()
        self.train: list[float] = []
        self.valid: list[float] = []
        self.epoch = EpochValues()
        # losses not on the host yet, with their batch numbers (averaged by batch under DDP)
        self._pending: dict[bool, list[tuple[int, torch.Tensor]]] = {True: [], False: []}

    def endLoss(self) -> None:
        learner = self.learner
        self._pending[learner.training].append((learner.batch, learner.loss.detach()))

    def _group(self) -> Group | None:
        """The run's processes when there are several (averages are exchanges), else None."""
        learner = self.cbs.learner if self.cbs is not None else None
        return learner.group if learner is not None and learner.group.several else None

    @staticmethod
    def _host(pending: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        if not pending:
            return torch.zeros(0)
        return torch.stack([loss.float().reshape(()) for _, loss in pending]).cpu()

    def _flush(self) -> None:
        # with several processes, each loss becomes the mean over the ranks of that batch's
        # loss (every rank flushes at the same points, empty lists too: it is an exchange)
        sync = self._group()
        for training, pending in self._pending.items():
            if not pending and sync is None:
                continue
            losses = self._host(pending)
            if sync is not None:
                losses = sync.average(losses, torch.tensor([batch for batch, _ in pending], dtype=torch.long))
            pending.clear()
            values = losses.tolist()
            if not values:
                continue
            (self.train if training else self.valid).extend(values)
            (self.epoch.train if training else self.epoch.valid).append(sum(values) / len(values))

    def endEpoch(self) -> None:
        self._flush()

    def endRun(self) -> None:
        self._flush()

    def quantities(self) -> dict[str, list[float]]:
        """The per-epoch quantities it publishes (``k1lib.callbacks.metrics.quantities``):
        ``{"train loss": epoch.train, "valid loss": epoch.valid}``."""
        return {"train loss": self.epoch.train, "valid loss": self.epoch.valid}

    def plot(self) -> Any:
        """Training and validation losses; slicing picks a range of training batches and the
        validation curve follows the same fraction of the run."""
        from ..viz import SliceablePlot, indices

        train, valid = list(self.train), list(self.valid)

        def draw(sl: slice) -> None:
            import matplotlib.pyplot as plt

            start, stop, _ = indices(sl, len(train))
            _, axes = plt.subplots(1, 2, figsize=(10, 3))
            xs = range(start, stop)
            axes[0].plot(list(xs), train[start:stop])
            axes[0].set_title(f"Train loss, batch {start} to {stop}")
            if train and valid:
                vs, ve = round(start * len(valid) / len(train)), round(stop * len(valid) / len(train))
                axes[1].plot(list(range(vs, ve)), valid[vs:ve])
                axes[1].set_title(f"Valid loss, batch {vs} to {ve}")
            for ax in axes:
                ax.set_xlabel("batch")

        return SliceablePlot(
            draw,
            docs="Reminder: the actual slice you put in is for the training plot. The valid loss's plot "
            "will update automatically to be in the same time frame",
        )

    def state_dict(self) -> dict[str, Any]:
        if self._group() is None:
            self._flush()
            train, valid = self.train, self.valid
        else:
            # under DDP a flush is an exchange with the other ranks, which a checkpoint (taken
            # on rank 0 alone, say) must not need: the epoch so far is this rank's own losses
            train = self.train + self._host(self._pending[True]).tolist()
            valid = self.valid + self._host(self._pending[False]).tolist()
        return {
            "train": train,
            "valid": valid,
            "epoch_train": self.epoch.train,
            "epoch_valid": self.epoch.valid,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train, self.valid = list(state["train"]), list(state["valid"])
        self.epoch.train, self.epoch.valid = list(state["epoch_train"]), list(state["epoch_valid"])
