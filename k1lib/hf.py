"""``k1lib.hf.WatchCallback``: ``k1lib.watch`` for the Hugging Face ``transformers.Trainer``.

    import k1lib.hf
    cb = k1lib.hf.WatchCallback("LlamaDecoderLayer: HookModule; #lm_head: HookParam")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    with cb:                        # hooks removed however train() ends (see below)
        trainer.train()
    cb.HookModule.plot("means", "stds"); cb.HookParam

It is a ``TrainerCallback`` around a ``k1lib.Watch`` on the Trainer's model: same css (props
``HookModule``, ``HookParam``, ``all``; ``*`` selects every module for both), same records
(``cb.HookModule``, ``cb.HookParam``: ``[i]``, ``[a:b]``, ``plot``, ``state_dict``), same
rules of what counts. This file is only the adapter: which Trainer event does what. It imports
``transformers``; ``import k1lib`` does not import this file (``import k1lib.hf``).

The events:
- ``on_train_begin``: the hooks go on the model the Trainer trains (seen through
  ``torch.compile`` / DDP wrappers, paths of the plain model). The modules are selected when
  the records are first needed (there, or ``cb.HookModule`` read before training, once the
  Trainer is known); a later ``train()`` on the same model continues the records, on another
  model (``model_init``) starts new ones.
- ``on_step_end``: after the optimizer step (and the scheduler step and ``zero_grad``), one row
  of each record, on the device: ``w.step()``.
- ``on_log``: statistics of the steps since the previous log are added to the ``logs`` (see
  "Logging").
- ``on_train_end``: the hooks come off; the rows reach the host.

Gradient accumulation (``gradient_accumulation_steps=k``): a row stands for an optimizer step,
as the loss the Trainer logs does. HookModule keeps each module's last call since the previous
step (``k1lib.watch``'s rule), so its row is the *last micro-batch's* outputs and the gradients
of those outputs (the gradient of that micro-batch's loss as the Trainer scales it: outputs do
not accumulate, only parameter gradients do). HookParam's row is the parameters after the step.

What counts: only module calls with gradients enabled. The Trainer's evaluation and prediction
run under ``torch.no_grad()``, so they are not recorded; a subclass's own pass with gradients
on can go in ``with cb.pause():``.

Logging: at each training log that comes after new rows (those with ``loss``, and the final
one with ``train_loss`` for steps not logged yet; not evaluation logs), ``on_log`` adds to
``logs`` what ``cbs.withTensorBoard`` writes once an epoch, over those steps:
``HookModule/{direction}/{stat}/{module}`` and ``HookParam/{stat}/{parameter}`` (the mean of
the values of each step, the least of ``mins``, the greatest of ``maxs``, NaN steps left out;
the root module is ``(root)``), and to the ``state.log_history`` entry the Trainer appended
for those logs just before.
The rows are read once a log (one copy to the host), never a step. The Trainer calls the
reporters of ``report_to`` (TensorBoard, W&B, ...) *before* the callbacks given as
``callbacks=``, with the same dict: to have them report the statistics too, add the callback
with ``cb.add_to(trainer)``, which puts it first. ``log=False`` adds nothing. The statistics are
this process's (under DDP each rank records its own batches; the reporters keep rank 0's).

Exceptions: a ``TrainerCallback`` is told nothing when ``train()`` raises (no event, and the
Trainer has no ``finally`` around its callbacks), so after an error the hooks would stay on the
model, and the capture would hold the last batch's outputs. Hence:
- ``with cb: trainer.train()`` removes them however the block ends (an exception, Ctrl-C);
- ``cb.close()`` does the same at any time (nothing when not recording);
- a later ``on_train_begin`` closes what a run cut short left (``train()`` called again, the
  retry of ``auto_find_batch_size`` after running out of memory) before installing afresh.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from torch import nn

from ._unwrap import unwrap
from ._watch import Watch, check_props
from .callbacks._hook_summary import summaries_since
from .callbacks._module_record import ModuleRecord
from .callbacks._param_record import ParamRecord

try:
    from transformers.trainer_callback import TrainerCallback, TrainerControl, TrainerState
    from transformers.training_args import TrainingArguments
except ImportError as error:
    raise ImportError(
        "k1lib.hf needs transformers (and accelerate for its Trainer): pip install 'k1lib[hf]'"
    ) from error

if TYPE_CHECKING:
    from transformers.trainer import Trainer

__all__ = ["WatchCallback"]

_NAME = "k1lib.hf.WatchCallback"
# the Trainer's training logs have these: each step's (loss) and the final one (train_loss)
_TRAINING_KEYS = {"loss", "train_loss"}


def _check_css(css: object) -> str:
    """``css`` checked before any model is known: a string, valid (a syntax error raises
    ``modsel.SelectorSyntaxError`` with the caret), giving only the props the watch reads."""
    if not isinstance(css, str):
        raise TypeError(f"{_NAME}: css must be a str, got {type(css).__name__}")
    check_props(css, _NAME)
    return css


class WatchCallback(TrainerCallback):
    """HookModule's and HookParam's statistics of ``Trainer.train()``: ``k1lib.watch`` as a
    ``TrainerCallback`` (see the module docstring). ``css`` selects as ``k1lib.watch``'s does;
    ``log``: add summaries of the statistics to the Trainer's logs."""

    def __init__(self, css: str = "*", log: bool = True) -> None:
        self.css = _check_css(css)
        self.log = log
        self._model: nn.Module | None = None  # the Trainer's model, once known
        self._watch: Watch | None = None  # made when the records are first needed
        self._recording = False  # inside the watch's block: between train begin and end
        self._logged = (0, 0)  # host rows of (HookModule, HookParam) already in a log

    # ---- the records --------------------------------------------------------------------------------
    def _bound(self) -> Watch:
        """The watch on the Trainer's model, made now if needed (the modules are selected)."""
        if self._model is None:
            raise RuntimeError(
                f"{_NAME}: no model yet: the records exist once the callback knows the Trainer "
                "(Trainer(..., callbacks=[cb]), cb.add_to(trainer), or trainer.train())"
            )
        if self._watch is None or unwrap(self._watch.model) is not unwrap(self._model):
            self._watch = Watch(self._model, self.css)
            self._logged = (0, 0)
        return self._watch

    @property
    def HookModule(self) -> ModuleRecord:  # noqa: N802 - the callback's name
        """Statistics of the selected modules' outputs and output gradients, one row a step."""
        return self._bound().HookModule

    @property
    def HookParam(self) -> ParamRecord:  # noqa: N802 - the callback's name
        """Mean, std, min and max of the selected parameters, one row a step."""
        return self._bound().HookParam

    def flush(self) -> None:
        """Copy the rows recorded so far to the host, to read them during training (each log
        and the end of training do it anyway)."""
        if self._watch is not None:
            self._watch.flush()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Record no module call inside this ``with`` (a pass with gradients on that is not
        training); nothing to pause outside training."""
        if self._recording and self._watch is not None:
            with self._watch.pause():
                yield
        else:
            yield

    # ---- putting it on a Trainer and taking it off ---------------------------------------------------
    def add_to(self, trainer: Trainer) -> None:
        """Add this callback to ``trainer`` ahead of its others, the reporters of ``report_to``
        included, so that they report the statistics ``on_log`` adds (``trainer.add_callback``
        and ``callbacks=`` put it after them). Moved to the front if already there."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        if trainer.model is not None:
            self._model = trainer.model

    def close(self) -> None:
        """Remove every hook and bring the rows to the host (``on_train_end`` does it; call it,
        or use ``with cb:``, when ``train()`` may raise). Nothing when not recording."""
        watch, recording = self._watch, self._recording
        self._recording = False
        if watch is not None and recording:
            watch.__exit__(None, None, None)

    def __enter__(self) -> WatchCallback:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- the Trainer's events -------------------------------------------------------------------------
    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """The Trainer is made (given ``callbacks=[cb]``): its model is known (None with
        ``model_init``)."""
        if kwargs.get("model") is not None:
            self._model = kwargs["model"]

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """The hooks go on the model to be trained (a run cut short is closed first)."""
        self.close()
        self._model = kwargs["model"]
        watch = self._bound()
        sharded = watch.sharded_params()
        if sharded:  # their rows need a collective where every rank is: not wired to the Trainer
            raise NotImplementedError(
                f"{_NAME}: HookParam of parameters sharded across ranks (FSDP's DTensors, e.g. "
                f"{sharded[0]!r}) is not supported; leave their modules out of the css's HookParam "
                f"selection (css {self.css!r})"
            )
        watch.__enter__()
        self._recording = True

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """After the optimizer step: one row of each record (on the device)."""
        if self._recording and self._watch is not None:
            self._watch.step()

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Summaries of the steps since the previous log into ``logs`` (and its history entry)."""
        logs = kwargs.get("logs")
        if not self.log or logs is None or self._watch is None or not _TRAINING_KEYS & set(logs):
            return
        watch = self._watch
        watch.flush()  # one copy to the host a log
        modules, params = watch.HookModule, watch.HookParam
        scalars = summaries_since(modules, self._logged[0], "HookModule")
        scalars.update(summaries_since(params, self._logged[1], "HookParam"))
        self._logged = (modules.batches(), params.batches())
        if not scalars:
            return
        history = state.log_history
        # the Trainer appended {**logs, "step": ...} just before calling on_log: that entry
        # gets them too (only when it is that one, untouched)
        if (
            history
            and history[-1].get("step") == state.global_step
            and set(history[-1]) - {"step"} == set(logs)
        ):
            history[-1].update(scalars)
        logs.update(scalars)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """The hooks come off; the rows reach the host."""
        self.close()

    def __repr__(self) -> str:
        if self._watch is None:
            return f"{_NAME}, css {self.css!r}: no records yet (made at train(), or when read)"
        state = "recording" if self._recording else "not recording"
        watch = self._watch
        return (
            f"{_NAME} ({state}), css {self.css!r}:\n"
            f"- cb.HookModule: {watch.HookModule.summary()[0].rstrip(':')}\n"
            f"- cb.HookParam: {watch.HookParam.summary()[0].rstrip(':')}"
        )
