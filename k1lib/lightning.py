"""``k1lib.lightning.Watch``: what ``k1lib.watch`` records (HookModule's and HookParam's
statistics), as a ``lightning.pytorch`` Callback on a LightningModule's training.

    import lightning as L
    import k1lib.lightning

    cb = k1lib.lightning.Watch("Linear: HookModule; #head: HookParam")
    L.Trainer(callbacks=[cb], max_epochs=3).fit(module, loader)
    cb.HookModule.plot("means", "stds"); cb.HookParam

``import k1lib`` does not import this module (nor lightning): import it by name. It is one more
adapter over the pieces ``k1lib.watch`` and the Learner's callbacks drive: the css selects in
the LightningModule as ``k1lib.watch``'s does (props ``HookModule``, ``HookParam``, ``all``;
paths from the LightningModule, ``net.0``), a ``ModuleCapture`` and a ``ParamCapture`` write
into the records ``cb.HookModule`` and ``cb.HookParam`` (``[i]``, ``[a:b]``, ``plot``,
``state_dict``). It does not drive a ``k1lib.watch`` block: that one counts a batch only after
a call of the model itself, and ``training_step`` seldom calls ``self(x)``.

What one row is: one optimizer step. A training batch whose optimizer stepped (Lightning's
``on_before_optimizer_step`` fired during it; with ``accumulate_grad_batches=n``, every n-th
batch and the epoch's last) closes a row at its ``on_train_batch_end``:
- HookModule: each selected module's last call with gradients enabled since the previous row
  (with accumulation, the step's last micro-batch) and the gradient of that output, as
  autograd gave it (Lightning's automatic optimization divides the loss by n, so gradients
  are 1/n of the micro-batch's own; a float16 GradScaler's gradients are scaled);
- HookParam: the parameters after the step (the batch end comes after it).
A batch with several optimizer steps (manual optimization) gives one row; a step a GradScaler
skips (inf gradients) gives one too, the parameters unchanged.

Only training batches are recorded. Lightning runs validation, the sanity check, test and
predict under ``torch.inference_mode`` (or ``no_grad``), and calls made with gradients
disabled are ignored; the capture is also paused from ``on_validation_start`` to
``on_validation_end``, so a ``validation_step`` using ``torch.enable_grad()`` is not recorded
either. The hooks exist only while the fit loop trains: added at ``on_train_start`` (after a
checkpoint is restored and the model moved to its device) and removed at ``on_train_end``,
at ``on_exception`` (Lightning calls it when the fit raises, Ctrl-C included, and then skips
``on_train_end`` and ``teardown``) and at ``teardown``, with the tensor hooks and retained
gradients of a batch cut short. Precision plugins need nothing: autocast ("bf16-mixed",
"16-mixed") and "bf16-true" give lower-precision outputs and gradients, whose statistics are
taken in float32 as usual.

Rows stay on the device; they reach the host in one transfer per statistic when something
reads them: a log, a checkpoint (``state_dict``), ``cb.flush()``, the end of the fit. No
device sync per step: with ``log_every="step"`` (the default), every ``trainer.log_every_n_steps``
optimizer steps (``trainer.global_step`` a multiple of it) the rows since the previous log are
summed up and logged through ``pl_module.log_dict`` (so they reach every logger of the
trainer and ``trainer.callback_metrics``); ``log_every="epoch"`` does it at each training epoch's
end; ``log_every=None`` never. The summary of a statistic over those rows is that of the
TensorBoard callback (``_hook_summary.summarise``: the mean of ``means``, ``stds`` and
one-number recorders, the least ``mins``, the greatest ``maxs``, NaN rows left out), under
``HookModule/{direction}/{stat}/{module}`` and ``HookParam/{stat}/{parameter}`` (the
LightningModule itself is ``(root)``).

Checkpoints: ``state_dict`` holds both records (host tensors, plain lists: loadable with
``weights_only=True``) under a ``state_key`` naming the css, so a fit resumed from a
checkpoint (``trainer.fit(..., ckpt_path=...)``) with a ``Watch`` of the same css continues
its rows. The batches of a step not yet taken when the checkpoint was written are not in it.
Under DDP each process records its own batches; checkpoints hold rank 0's. HookParam of
parameters sharded across ranks (FSDP's DTensors) is refused at ``on_train_start``: its rows
must be put together where every rank is (``k1lib.watch`` and the Learner's HookParam do).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch

from ._unwrap import unwrap
from ._watch import check_props, selected, start_captures
from .callbacks._hook_summary import summaries_since
from .callbacks._module_capture import ModuleCapture
from .callbacks._module_record import ModuleRecord
from .callbacks._param_capture import ParamCapture
from .callbacks._param_record import ParamRecord
from .callbacks._sharded_params import sharded_names

__all__ = ["Watch"]

_LOG = ("step", "epoch", None)
_WHERE = "k1lib.lightning.Watch's css"


def _logs_now(trainer: pl.Trainer) -> bool:
    """Whether the trainer's loggers write this batch's values: its logger connector's own
    test (it counts batches that stepped, once per batch however many optimizers stepped:
    ``global_step`` counts each optimizer's steps), or ``global_step`` where that is missing."""
    connector = getattr(trainer, "_logger_connector", None)
    due = getattr(connector, "should_update_logs", None)
    if isinstance(due, bool):
        return due
    every: int = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by its logger connector
    return every > 0 and trainer.global_step % every == 0


class Watch(pl.Callback):
    """A Lightning callback recording HookModule's and HookParam's statistics of the
    LightningModule's training, one row per optimizer step (see the module docstring).
    ``css`` selects modules as ``k1lib.watch``'s does; ``log_every``: ``"step"`` (every
    ``trainer.log_every_n_steps`` steps), ``"epoch"`` or ``None``."""

    def __init__(self, css: str = "*", log_every: Literal["step", "epoch"] | None = "step") -> None:
        super().__init__()
        if log_every not in _LOG:
            raise ValueError(
                f"k1lib.lightning.Watch: log_every is 'step', 'epoch' or None, got {log_every!r}"
            )
        check_props(css, "k1lib.lightning.Watch")
        self.css = css
        self.log_every = log_every
        self._hookModule = ModuleRecord()
        self._hookParam = ParamRecord()
        self._capture: ModuleCapture | None = None  # while the fit loop trains
        self._paramCapture: ParamCapture | None = None
        self._training = False
        self._stepped = False  # an optimizer step in this training batch
        self._logged = (0, 0)  # HookModule's and HookParam's rows at the previous log

    @property
    def HookModule(self) -> ModuleRecord:  # noqa: N802 - the callback's name
        """Statistics of the selected modules' outputs and output gradients, one row a step."""
        return self._hookModule

    @property
    def HookParam(self) -> ParamRecord:  # noqa: N802 - the callback's name
        """Mean, std, min and max of the selected parameters, one row a step."""
        return self._hookParam

    @property
    def state_key(self) -> str:
        """One state per css in a checkpoint: two watches of different css keep their own."""
        return self._generate_state_key(css=self.css)

    # ---- the fit loop ---------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Select the modules and parameters, put the hooks on; rows continue a loaded record
        of the same selection."""
        self._close()  # a previous fit that ended without any of our end hooks
        root = unwrap(pl_module)
        modules, params = selected(root, self.css, _WHERE)
        sharded = sharded_names(params)
        if sharded:  # their rows would need a collective where every rank is: not wired here
            raise NotImplementedError(
                f"k1lib.lightning.Watch: HookParam of parameters sharded across ranks (DTensors, "
                f"e.g. {sharded[0]!r}) is not supported; leave their modules out of the css's "
                f"HookParam selection (css {self.css!r})"
            )
        self._training, self._stepped = True, False
        try:
            self._capture, self._paramCapture = start_captures(
                root, modules, params, self._hookModule, self._hookParam
            )
        except BaseException:
            self._close()
            raise
        self._logged = (self._hookModule.batches(), self._hookParam.batches())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._paramCapture is not None:
            self._paramCapture.start()  # in case a parameter's .data was replaced

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._stepped = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Close a row when the optimizer stepped in this batch (not while accumulating)."""
        if not (self._training and self._stepped):
            return
        self._stepped = False
        if self._capture is not None:
            self._capture.end_batch()
        if self._paramCapture is not None:
            self._paramCapture.end_batch()
        if self.log_every == "step" and _logs_now(trainer):
            self._log(pl_module, on_step=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.log_every == "epoch" and self._training:
            self._log(pl_module, on_step=False)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._capture is not None:
            self._capture.paused = True  # a validation_step with torch.enable_grad() too

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._capture is not None:
            self._capture.paused = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        """Remove every hook, bring the rows to the host, let go of the model's tensors."""
        capture, self._capture = self._capture, None
        params, self._paramCapture = self._paramCapture, None
        if capture is not None:
            capture.remove()
        if params is not None:
            params.stop()
        if self._training:
            self._hookModule.end()
            self._hookParam.flush()
        self._training = False

    # ---- logging ------------------------------------------------------------------------------------
    def _log(self, pl_module: pl.LightningModule, on_step: bool) -> None:
        """Log the summaries of the rows since the previous log (one transfer per statistic)."""
        self.flush()
        hm, hp = self._hookModule, self._hookParam
        metrics = summaries_since(hm, self._logged[0], "HookModule")
        metrics.update(summaries_since(hp, self._logged[1], "HookParam"))
        self._logged = (hm.batches(), hp.batches())
        if metrics:
            pl_module.log_dict(metrics, on_step=on_step, on_epoch=not on_step, batch_size=1)

    # ---- records ------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Copy the rows recorded so far to the host, to read them during the fit (one transfer
        per statistic; the fit's end does it anyway)."""
        self._hookModule.flush()
        self._hookParam.flush()

    def state_dict(self) -> dict[str, Any]:
        """Both records (on the host), saved in Lightning checkpoints."""
        return {
            "css": self.css,
            "HookModule": self._hookModule.state_dict(),
            "HookParam": self._hookParam.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the records: the next fit's rows follow them (same selection)."""
        self._hookModule.load_state_dict(state_dict["HookModule"])
        self._hookParam.load_state_dict(state_dict["HookParam"])

    def __repr__(self) -> str:
        state = "recording" if self._training else "not recording"
        return (
            f"k1lib.lightning.Watch ({state}), css {self.css!r}, log_every {self.log_every!r}:\n"
            f"- cb.HookModule: {self._hookModule.summary()[0].rstrip(':')}\n"
            f"- cb.HookParam: {self._hookParam.summary()[0].rstrip(':')}"
        )
