"""``Metric`` and ``Accuracy``: per-epoch metrics of the model's outputs, for training and
validation; and the per-epoch quantities the callbacks publish (``quantities``, ``latest``).

A metric is a function ``f(y, yb)`` of one batch's output and targets returning a tensor: per
sample values (1-d or more: summed, counted by elements) or the batch's mean (0-d: weighted by
the batch's sample count, ``yb.shape[0]``), so an epoch's value is the exact mean over its
samples, not a mean of batch means; or a pair ``(sum, count)`` of tensors, when some samples
do not count (Accuracy's ignored targets). Sums stay on the model's device during an epoch
(counts come from shapes, or stay on the device too) and reach the host once at its end: no
device sync per batch.
With several processes the sums and counts of all ranks are combined once an epoch, so every
rank records the same values.

Published quantities: a callback with a ``quantities()`` method returning
``{name: per-epoch values}`` publishes them (``Loss``: ``"train loss"``, ``"valid loss"``; a
metric ``m``: ``"train m"``, ``"valid m"``). ``quantities(l.cbs)`` gathers them all,
``latest(l.cbs)`` the newest value of each; ``EarlyStopping`` and ``BestCheckpoint`` monitor
them by name and the progress bar shows the latest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .callback import Callback
from .loss import EpochValues

if TYPE_CHECKING:
    from .._group import Group
    from .callbacks import Callbacks

__all__ = ["Accuracy", "Metric", "latest", "quantities"]

_PHASES = ("train", "valid")


def quantities(cbs: Callbacks) -> dict[str, list[float]]:
    """Every per-epoch quantity published by the callbacks of ``cbs``, by name:
    ``{"train loss": [...], "valid loss": [...], "valid accuracy": [...]}`` (the lists are
    the callbacks' own: read them, do not change them)."""
    out: dict[str, list[float]] = {}
    for cb in cbs:
        publish = getattr(type(cb), "quantities", None)
        if callable(publish):
            values = publish(cb)
            if isinstance(values, Mapping):
                out.update(values)
    return out


def latest(cbs: Callbacks) -> dict[str, float]:
    """The newest value of each published quantity that has one (what an end-of-epoch line
    shows): ``{"train loss": 0.31, "valid loss": 0.35, "valid accuracy": 0.9}``."""
    return {name: values[-1] for name, values in quantities(cbs).items() if values}


class Metric(Callback):
    """Records ``f(y, yb)`` per epoch, for training and validation: ``cb.epoch.train``,
    ``cb.epoch.valid`` (the mean over the epoch's samples). The callback's name is the
    metric's ``name`` (``l.cbs[name]``); it publishes ``"train {name}"`` and
    ``"valid {name}"``. ``f`` runs under ``torch.no_grad`` after the loss, on the output and
    targets the loss saw."""

    order = 20  # with Loss: before EarlyStopping and BestCheckpoint read the epoch's values
    doc = """
- cb.epoch.train, cb.epoch.valid: the metric's value of each epoch
- cb.plot(): to plot them
"""

    def __init__(self, name: str, f: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise TypeError(f"Metric: name must be a non-empty str, got {name!r:.60}")
        if not callable(f):
            raise TypeError(f"Metric {name!r}: f must be a function of (y, yb), got {type(f).__name__}")
        self.name = name
        self.f = f
        self.epoch = EpochValues("values")
        # per phase (True: training): the sum on the device, and the sample count (host int)
        self._sums: dict[bool, torch.Tensor | None] = {True: None, False: None}
        self._counts: dict[bool, int | torch.Tensor] = {True: 0, False: 0}

    # ---- the hot path: no host sync ---------------------------------------------------------
    def endLoss(self) -> None:
        learner = self.learner
        with torch.no_grad():
            value = self.f(learner.y, learner.yb)
            n: int | torch.Tensor
            pair = isinstance(value, tuple) and len(value) == 2
            if pair and all(isinstance(v, torch.Tensor) for v in value):
                # (sum, count): samples the metric leaves out (ignored targets) are not counted
                dtype = torch.float32 if value[0].device.type == "mps" else torch.float64
                total, n = value[0].detach().sum(dtype=dtype), value[1].detach().sum()
                self._add(learner.training, total, n)
                return
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"metric {self.name!r}: f(y, yb) must return a tensor (or a (sum, count) pair of "
                    f"tensors), got {type(value).__name__}"
                )
            value = value.detach()
            dtype = torch.float32 if value.device.type == "mps" else torch.float64
            if value.dim() == 0:
                yb = learner.yb
                n = int(yb.shape[0]) if isinstance(yb, torch.Tensor) and yb.dim() > 0 else 1
                total = value.to(dtype) * n
            else:
                n = value.numel()
                total = value.sum(dtype=dtype)
        self._add(learner.training, total, n)

    def _add(self, phase: bool, total: torch.Tensor, n: int | torch.Tensor) -> None:
        held = self._sums[phase]
        self._sums[phase] = total if held is None else held + total
        self._counts[phase] = self._counts[phase] + n  # a tensor count stays on the device

    # ---- once an epoch ----------------------------------------------------------------------
    def _group(self) -> Group | None:
        learner = self.cbs.learner if self.cbs is not None else None
        return learner.group if learner is not None and learner.group.several else None

    def _flush(self) -> None:
        sync = self._group()
        if sync is None and not any(self._counts.values()):
            return
        sums = [self._sums[p] for p in (True, False)]
        device = next((s.device for s in sums if s is not None), torch.device("cpu"))
        zero = torch.zeros((), dtype=torch.float64, device=device)
        on_device = torch.stack([zero if s is None else s.to(zero) for s in sums])
        values = torch.cat([on_device.cpu(), torch.tensor([float(self._counts[p]) for p in (True, False)])])
        if sync is not None:
            # every rank flushes at the same points (empty too): the mean over ranks of the
            # sums and of the counts, whose ratio is the sum over ranks over the count
            values = sync.average(values.double(), torch.arange(4))
        self._sums = {True: None, False: None}
        self._counts = {True: 0, False: 0}
        for i, phase in enumerate((True, False)):
            total, count = float(values[i]), float(values[i + 2])
            if count > 0:
                (self.epoch.train if phase else self.epoch.valid).append(total / count)

    def endEpoch(self) -> None:
        self._flush()

    def endRun(self) -> None:
        self._flush()  # a run cancelled mid-epoch: what it saw of that epoch

    def quantities(self) -> dict[str, list[float]]:
        """``{"train {name}": epoch.train, "valid {name}": epoch.valid}``."""
        return {f"train {self.name}": self.epoch.train, f"valid {self.name}": self.epoch.valid}

    def plot(self) -> Any:
        """The metric per epoch, training and validation (a ``k1lib.viz.SliceablePlot``:
        slicing picks a range of epochs)."""
        from ..viz import SliceablePlot, indices

        train, valid, name = list(self.epoch.train), list(self.epoch.valid), self.name

        def draw(sl: slice) -> None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5, 3))
            for label, values in (("train", train), ("valid", valid)):
                start, stop, _ = indices(sl, len(values))
                if stop > start:
                    ax.plot(list(range(start, stop)), values[start:stop], marker=".", label=label)
            ax.set_xlabel("epoch")
            ax.set_title(name)
            if train or valid:
                ax.legend()

        return SliceablePlot(draw, docs="Slices pick a range of epochs")

    def state_dict(self) -> dict[str, Any]:
        # an epoch in progress is not saved: a resumed run starts a new epoch
        return {"epoch_train": list(self.epoch.train), "epoch_valid": list(self.epoch.valid)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch.train, self.epoch.valid = list(state["epoch_train"]), list(state["epoch_valid"])


def _top_k(k: int, ignore: int | None) -> Callable[[Any, Any], Any]:
    def correct(y: Any, yb: Any) -> Any:
        if not isinstance(y, torch.Tensor) or not isinstance(yb, torch.Tensor):
            raise ValueError(
                f"accuracy: expected y and yb to be tensors (scores and class indices), got "
                f"{type(y).__name__} and {type(yb).__name__}; for a Hugging Face output, give the "
                "logits and labels yourself, e.g. withMetric('accuracy', lambda y, yb: "
                "(y.logits[:, :-1].argmax(-1) == yb['labels'][:, 1:]).float()) for a causal LM"
            )
        if y.dim() < 2 or y.shape[:-1] != yb.shape:
            raise ValueError(
                f"accuracy: expected scores (..., classes) and class indices (...), got y of shape "
                f"{tuple(y.shape)} and yb of shape {tuple(yb.shape)}"
            )
        if k == 1:
            hit = y.argmax(-1) == yb
        else:
            hit = (y.topk(min(k, y.shape[-1]), dim=-1).indices == yb.unsqueeze(-1)).any(-1)
        if ignore is None:
            return hit
        kept = yb != ignore  # as cross_entropy's ignore_index: padding is neither right nor wrong
        return (hit & kept).sum(), kept.sum()

    return correct


class Accuracy(Metric):
    """The fraction of samples whose target class is among the ``topk`` highest scores:
    ``y`` holds scores ``(..., classes)``, ``yb`` class indices ``(...)``. Named ``accuracy``
    (``top{k} accuracy`` for ``topk > 1``) unless ``name`` is given: correct samples over
    samples of the epoch, exactly. Targets equal to ``ignoreIndex`` (-100, as ``cross_entropy``'s
    ``ignore_index``: padding) count neither as right nor as wrong; None counts every target."""

    def __init__(self, topk: int = 1, name: str | None = None, ignoreIndex: int | None = -100) -> None:  # noqa: N803
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"Accuracy: topk must be an int of 1 or more, got {topk!r}")
        name = name or ("accuracy" if topk == 1 else f"top{topk} accuracy")
        super().__init__(name, _top_k(topk, ignoreIndex))
        self.ignoreIndex = ignoreIndex
        self.topk = topk
