"""``Autocast``: mixed precision: the forward pass and the loss under ``torch.autocast``, and
float16 gradients kept in range by a ``torch.amp.GradScaler``.

The autocast context is entered at ``startPass`` and left at ``endLoss`` (the backward pass
and the step run outside it, as torch recommends), and also at ``cancelBatch``, ``cancelEpoch``,
``cancelRun`` and ``endRun``: after a run, even one that a forward pass ended with an
exception, autocast is as it was before. The device type is that of the model's parameters at
``startRun`` (after ``Device`` has moved them).

With a scaler (the default for ``float16``), gradients are scaled without touching ``l.loss``:
a hook on the loss multiplies the gradient that enters the backward pass by the scale, so
``Loss`` and ``CancelOnExplosion`` see the loss as computed, and a callback that skips the
backward pass skips the scaling with it. At ``startStep`` the scaler unscales the gradients,
steps the optimizer unless a gradient is inf or NaN (a *skipped step*: counted in
``cb.skipped``, the weights unchanged, the scale lowered; not an explosion, since the loss is
finite) and updates its scale. ``GradClipping`` clips after the unscale; under
``GradAccumulation`` the scaler steps only when the accumulated group does.

Host syncs: none from this callback; torch's ``GradScaler.step`` reads one flag per step (is
any gradient inf?) to decide whether to step. ``cb.skipped`` is kept on the device and read
when asked for.
"""

from __future__ import annotations

from typing import Any

import torch

from .callback import Callback
from .grad_accumulation import accumulating

__all__ = ["Autocast"]


class Autocast(Callback):
    """Runs the forward pass and the loss under ``torch.autocast(dtype=dtype)``; with a
    ``scaler`` (``None``: one for float16, none otherwise; ``True``/``False``; or your own
    ``torch.amp.GradScaler``) the gradients are scaled (see the module docstring)."""

    order = 70  # after GradClipping in startStep: it unscales, then clips, then this steps
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
        self._backwards = 0  # backward passes through a scaled loss since the last step
        self._unscaled = False
        self._skipped = 0  # skipped steps before _skippedOnDevice was started (from a checkpoint)
        self._skippedOnDevice: torch.Tensor | None = None
        self._scalerState: dict[str, Any] | None = None  # loaded before the scaler exists

    # ---- the autocast context ---------------------------------------------------------------
    def startRun(self) -> None:  # noqa: N802
        learner = self.learner
        param = next(iter(learner.model.parameters()), None)
        self.deviceType = "cpu" if param is None else param.device.type
        if not torch.amp.is_autocast_available(self.deviceType):
            raise RuntimeError(f"withAutocast: torch has no autocast for device type {self.deviceType!r}")
        if self.wantScaler and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.deviceType)
        if self.scaler is not None and self._scalerState is not None:
            self.scaler.load_state_dict(self._scalerState)
            self._scalerState = None
        self._backwards, self._unscaled = 0, False

    def startPass(self) -> None:  # noqa: N802
        self._leave()
        self._context = torch.autocast(self.deviceType, dtype=self.dtype)
        self._context.__enter__()

    def _leave(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    def endLoss(self) -> None:  # noqa: N802
        self._leave()

    def cancelBatch(self) -> None:  # noqa: N802
        self._leave()

    def cancelEpoch(self) -> None:  # noqa: N802
        self._leave()

    def cancelRun(self) -> None:  # noqa: N802
        self._leave()

    def endRun(self) -> None:  # noqa: N802
        self._leave()

    # ---- the scaler -----------------------------------------------------------------------------
    def startBackward(self) -> bool:  # noqa: N802
        loss = self.learner.loss
        if self.scaler is not None and isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.register_hook(self._scale)  # type: ignore[no-untyped-call]
        return False

    def _scale(self, grad: torch.Tensor) -> torch.Tensor:
        # runs only when the backward pass does: a skipped backward leaves nothing to step
        assert self.scaler is not None
        self._backwards += 1
        scaled: torch.Tensor = self.scaler.scale(grad)
        return scaled

    def unscale(self) -> None:
        """Divide the gradients by the scale (once per step; ``GradClipping`` calls this)."""
        if self.scaler is not None and self._backwards and not self._unscaled:
            self.scaler.unscale_(self.learner.opt)
            self._unscaled = True

    def step(self) -> bool:
        """Step the optimizer through the scaler and update the scale; False (nothing done)
        without a scaler or without a backward pass since the last step."""
        if self.scaler is None or not self._backwards:
            return False
        opt = self.learner.opt
        self.unscale()
        self.scaler.step(opt)
        self._count_skipped(opt)
        self.scaler.update()
        self._backwards, self._unscaled = 0, False
        return True

    def _count_skipped(self, opt: torch.optim.Optimizer) -> None:
        # the flags the scaler found while unscaling (read by its step already: no new sync);
        # the count stays on the device until cb.skipped is read
        assert self.scaler is not None
        found = list(self.scaler._found_inf_per_device(opt).values())
        if not found:
            return
        flag = found[0] if len(found) == 1 else torch.stack([f.to(found[0].device) for f in found]).amax()
        flag = (flag > 0).to(torch.int64)
        self._skippedOnDevice = flag if self._skippedOnDevice is None else self._skippedOnDevice + flag

    def startStep(self) -> bool:  # noqa: N802
        # also in eval mode: when validation batches train (no DontTrainValid), their gradients
        # are scaled too and must go through the scaler
        return False if accumulating(self.learner) else self.step()

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
