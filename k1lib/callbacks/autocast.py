"""``Autocast``: mixed precision: the forward pass and the loss under ``torch.autocast``, and
float16 gradients kept in range by a ``torch.amp.GradScaler``.

The autocast context is entered at ``startPass`` and left at ``endLoss`` (the backward pass
and the step run outside it, as torch recommends), and also at ``cancelBatch``, ``cancelEpoch``,
``cancelRun`` and ``endRun``: after a run, even one that a forward pass ended with an
exception, autocast is as it was before. The device type is that of the model's parameters at
``startRun`` (after ``Device`` has moved them).

With a scaler (the default for ``float16``), the loop's optimizer step (``k1lib/_step.py``)
uses it: the gradient that enters the backward pass is multiplied by the scale (``l.loss`` is
not touched, so ``Loss`` and ``CancelOnExplosion`` see the loss as computed), and at the step
the scaler unscales the gradients, steps the optimizer unless a gradient is inf or NaN (a
*skipped step*: counted in ``cb.skipped``, the weights unchanged, the scale lowered; not an
explosion, since the loss is finite) and updates its scale. ``GradClipping`` clips after the
unscale; under ``GradAccumulation`` the scaler steps only when the accumulated group does.

Host syncs: none from this callback; torch's ``GradScaler.step`` reads one flag per step (is
any gradient inf?) to decide whether to step. ``cb.skipped`` is kept on the device and read
when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .callback import Callback

if TYPE_CHECKING:
    from .._step import OptimizerStep

__all__ = ["Autocast"]


class Autocast(Callback):
    """Runs the forward pass and the loss under ``torch.autocast(dtype=dtype)``; with a
    ``scaler`` (``None``: one for float16, none otherwise; ``True``/``False``; or your own
    ``torch.amp.GradScaler``) the gradients are scaled (see the module docstring)."""

    order = 70
    shapes_batch = True
    doc = """
- cb.dtype: the autocast dtype
- cb.scaler: the torch.amp.GradScaler, or None
- cb.skipped: how many optimizer steps the scaler skipped (inf/NaN gradients)
"""

    def __init__(
        self, dtype: torch.dtype = torch.bfloat16, scaler: bool | torch.amp.GradScaler | None = None
    ) -> None:
        super().__init__()
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(
                f"withAutocast: dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}"
            )
        if not (scaler is None or isinstance(scaler, bool | torch.amp.GradScaler)):
            raise TypeError(
                f"withAutocast: scaler must be None, True, False or a torch.amp.GradScaler, got {scaler!r}"
            )
        self.dtype = dtype
        self.deviceType = "cpu"
        self.wantScaler = dtype == torch.float16 if scaler is None else scaler is not False
        self.scaler: torch.amp.GradScaler | None = (
            scaler if isinstance(scaler, torch.amp.GradScaler) else None
        )
        self._context: Any = None
        self._skipped = 0  # skipped steps before _skippedOnDevice was started (from a checkpoint)
        self._skippedOnDevice: torch.Tensor | None = None
        self._scalerState: dict[str, Any] | None = None  # loaded before the scaler exists

    # ---- the autocast context ---------------------------------------------------------------
    def startRun(self) -> None:
        model = self.learner.model
        assert model is not None  # check_ready: set for every run
        param = next(iter(model.parameters()), None)
        self.deviceType = "cpu" if param is None else param.device.type
        if not torch.amp.is_autocast_available(self.deviceType):
            raise RuntimeError(f"withAutocast: torch has no autocast for device type {self.deviceType!r}")
        if self.wantScaler and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.deviceType)
        if self.scaler is not None and self._scalerState is not None:
            self.scaler.load_state_dict(self._scalerState)
            self._scalerState = None

    def startPass(self) -> None:
        self._leave()
        self._context = torch.autocast(self.deviceType, dtype=self.dtype)
        self._context.__enter__()

    def _leave(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    def endLoss(self) -> None:
        self._leave()

    def cancelBatch(self) -> None:
        self._leave()

    def cancelEpoch(self) -> None:
        self._leave()

    def cancelRun(self) -> None:
        self._leave()

    def endRun(self) -> None:
        self._leave()

    def suspendChanged(self) -> None:  # noqa: N802
        if self.suspended:  # suspended mid-pass: no endLoss will come to leave the context
            self._leave()

    # ---- the scaler -----------------------------------------------------------------------------
    def configure_step(self, step: OptimizerStep) -> None:
        if self.scaler is not None:
            step.scaling = self

    def count_skipped(self, opt: torch.optim.Optimizer) -> None:
        """After the scaler's step: count it if it was skipped. The flags the scaler found while
        unscaling were read by its step already (no new sync); the count stays on the device
        until ``cb.skipped`` is read."""
        assert self.scaler is not None
        found = list(self.scaler._found_inf_per_device(opt).values())
        if not found:
            return
        flag = found[0] if len(found) == 1 else torch.stack([f.to(found[0].device) for f in found]).amax()
        flag = (flag > 0).to(torch.int64)
        self._skippedOnDevice = flag if self._skippedOnDevice is None else self._skippedOnDevice + flag

    @property
    def skipped(self) -> int:
        """Optimizer steps the scaler skipped because a gradient was inf or NaN (reading this
        waits for the device)."""
        on_device = 0 if self._skippedOnDevice is None else int(self._skippedOnDevice.item())
        return self._skipped + on_device

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"skipped": self.skipped}
        scaler = self.scaler.state_dict() if self.scaler is not None else self._scalerState
        if scaler:
            state["scaler"] = dict(scaler)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        skipped = state.get("skipped", 0)
        if isinstance(skipped, bool) or not isinstance(skipped, int):
            raise ValueError(f"Autocast: 'skipped' should be an int, got {skipped!r}")
        scaler = state.get("scaler")
        if scaler is not None and not isinstance(scaler, dict):
            raise ValueError(
                f"Autocast: 'scaler' should be a GradScaler state dict, got {type(scaler).__name__}"
            )
        if scaler is not None and self.scaler is not None:
            self.scaler.load_state_dict(scaler)
        else:
            self._scalerState = None if scaler is None else dict(scaler)
        self._skipped, self._skippedOnDevice = skipped, None
