"""``Device``: train on one device: the model moves there once a run, each batch as it comes.

``cbs.withDevice("cuda:1")`` (``cbs.withCuda()`` is ``withDevice("cuda")``, named ``Cuda`` as in
2021). At ``startRun`` the device is checked first (a device that does not exist here fails
then, before anything has moved, naming what is available), then the model moves there, and
so does any optimizer state that is elsewhere (an optimizer loaded from a checkpoint while the
model was on the CPU). At ``startBatch`` ``l.xb`` and ``l.yb`` move: tensors, and tuples, lists
and dicts of them, nested; anything else is left as it is. A copy from pinned CPU memory (a
``torch.utils.data.DataLoader(pin_memory=True)``) to an accelerator is ``non_blocking``.

This callback runs before every callback of the default order (10) in ``startBatch``: the
user's ``ModifyBatch`` and ``DType`` see tensors already on the device, so their work runs
there; a ``ModifyBatch`` that makes new tensors should make them on ``xb.device``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._batch import map_tensors
from .callback import Callback

__all__ = ["Device", "available_devices", "move"]


def available_devices() -> list[str]:
    """The devices this process can train on: ``cpu`` and each accelerator by index."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps:0")
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is not None and accelerator.type not in ("cuda", "mps"):
        found += [f"{accelerator.type}:{i}" for i in range(torch.accelerator.device_count())]
    return found


def _parse(device: object) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str | int) or isinstance(device, bool):
        raise TypeError(f"withDevice: expected a device such as 'cuda:0' or 'cpu', got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"withDevice: {device!r} is not a device; devices here: {', '.join(available_devices())}"
        ) from None


def _resolve(device: torch.device) -> torch.device:
    """``device`` with an index (``cuda`` -> ``cuda:0``, the current one), checked to exist in
    this process; otherwise a RuntimeError that lists the devices there are."""
    available = available_devices()
    if device.type == "meta":
        raise RuntimeError(
            "withDevice: 'meta' tensors have no data, a model cannot train there; "
            f"devices here: {', '.join(available)}"
        )
    if device.type == "cpu":
        return torch.device("cpu")
    index = device.index
    if index is None:
        if device.type == "cuda" and torch.cuda.is_available():
            index = torch.cuda.current_device()
        elif torch.accelerator.is_available() and device.type == _accelerator_type():
            index = torch.accelerator.current_device_index()
        else:
            index = 0
    resolved = torch.device(device.type, index)
    if str(resolved) not in available:
        raise RuntimeError(
            f"withDevice: device {str(device)!r} is not available in this process; "
            f"devices here: {', '.join(available)}"
        )
    return resolved


def _accelerator_type() -> str | None:
    accelerator = torch.accelerator.current_accelerator()
    return None if accelerator is None else accelerator.type


def move(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it on ``device``: tensors, tuples (named ones too),
    lists and mappings, nested; other objects as they are. A tensor already there is returned
    itself; a copy from pinned CPU memory to another device is ``non_blocking``."""

    def to(t: torch.Tensor) -> torch.Tensor:
        if t.device == device:
            return t
        quick = device.type != "cpu" and t.device.type == "cpu" and t.is_pinned()
        return t.to(device, non_blocking=quick)

    return map_tensors(value, to)


def _move_optimizer_state(opt: torch.optim.Optimizer) -> bool:
    """Put ``opt``'s state tensors where their parameters are, by the rules torch applies when
    it loads an optimizer state (``step`` counters stay on the CPU unless the optimizer is
    capturable or fused); True when something had to move."""
    for group in opt.param_groups:
        for param in group["params"]:
            for key, value in opt.state.get(param, {}).items():
                if key != "step" and isinstance(value, torch.Tensor) and value.device != param.device:
                    opt.load_state_dict(opt.state_dict())
                    return True
    return False


class Device(Callback):
    """Moves the model (once a run) and each batch to ``device`` (see the module docstring)."""

    order = 5  # before the callbacks of the default order read the batch in startBatch
    shapes_batch = True
    doc = """
- cb.device: the device it trains on (with its index once a run has started)
"""

    def __init__(self, device: str | int | torch.device = "cuda") -> None:
        super().__init__()
        self.device = _parse(device)

    def startRun(self) -> None:
        self.device = _resolve(self.device)  # before anything moves
        learner = self.learner
        model = learner.model
        assert model is not None  # check_ready: set for every run
        model.to(self.device)
        if learner.opt is not None:
            _move_optimizer_state(learner.opt)

    def startBatch(self) -> None:
        learner = self.learner
        xb, yb = learner.xb, learner.yb
        learner.xb = move(xb, self.device)
        learner.yb = learner.xb if yb is xb else move(yb, self.device)  # one mapping: moved once
