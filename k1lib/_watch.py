"""``k1lib.watch``: HookModule's and HookParam's statistics from any training loop, no Learner.

    with k1lib.watch(model, "Linear: HookModule; #2: HookParam") as w:
        for xb, yb in loader:
            loss = lossF(model(xb), yb)
            loss.backward(); opt.step(); opt.zero_grad()
            w.step()                       # closes the batch: statistics stay on the device
    w.HookModule.plot("means", "stds"); w.HookParam

The css selects as ``l.css`` does for the Learner's callbacks (props ``HookModule``,
``HookParam`` or ``all``; ``*``, the default, selects every module for both), on the model
seen through ``torch.compile`` / DDP wrappers. ``w.HookModule`` and ``w.HookParam`` are the
records the Learner's callbacks are (``[i]``, ``[a:b]``, ``plot``, ``state_dict``), filled by
the same captures (``ModuleCapture``, ``ParamCapture``).

When things are recorded, mirroring a Learner training batch (whose ``endBatch`` comes after
the optimizer step):
- ``w.step()`` closes a training batch: one HookModule row (each module's last call since the
  previous step, and the gradient of that output: call it after ``backward``) and one
  HookParam row (the parameters as they are then: call it after ``opt.step()`` to see them
  after the step, as the Learner does);
- only module calls made with gradients enabled count: a validation pass under
  ``torch.no_grad()`` or ``torch.inference_mode()`` is not recorded, and ``with w.pause():``
  leaves out any other (a validation pass with gradients on);
- ``w.step()`` with no forward pass of the model (gradients on, not paused) since the previous
  step raises ``RuntimeError``: a row would stand for no batch;
- rows stay on the device until the block ends (one copy to the host) or ``w.flush()``.

Parameters sharded by FSDP2 (``fully_shard``: ``DTensor`` shards) are recorded whole
(``ShardedParamCapture``): each rank reduces its shards at ``w.step()`` and the ranks put their
rows together when the block ends without an exception (a collective: every rank leaves the
block, as each calls ``w.step()`` as often). Until then ``w.HookParam`` shows the rows of the
blocks before, and ``w.flush()`` brings none of this block's (no collective: one rank may read
alone). A block left by an exception drops its HookParam rows: the other ranks may not be
there to put them together (and while one rank leaves by an exception, the others wait for it
where their blocks end, until the process group's timeout: end every rank's block alike).
``k1lib.hf.WatchCallback`` and ``k1lib.lightning.Watch`` refuse sharded parameters.

Hooks exist only inside the ``with`` block: they are removed when it ends, however it ends (an
exception, Ctrl-C), with the tensor hooks and retained gradients of a batch cut short. A
``Watch`` may be entered again later: its records go on (a new selection is not possible).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

import modsel

from ._fsdp import reshard
from ._unwrap import unwrap
from .callbacks._module_capture import ModuleCapture
from .callbacks._module_record import ModuleRecord
from .callbacks._param_capture import ParamCapture
from .callbacks._param_record import ParamRecord
from .callbacks._selection import modules_with, parameters_of, warn_if_empty
from .callbacks._sharded_params import param_capture, sharded_names

__all__ = ["PROPS", "Watch", "check_props", "selected", "start_captures", "watch"]

_WHERE = "k1lib.watch's css"


PROPS = ("HookModule", "HookParam", "all")  # what a watch's css may give


def check_props(css: str, who: str = "k1lib.watch") -> None:
    """A watch's css (``who``: the watch, Lightning's or the Trainer's) gives only its own
    props: any other is a typo that would record nothing (``l.css`` is different: it also
    carries other callbacks' props). A syntax error raises here, with the caret."""
    for rule in modsel.parse(css).rules:
        for prop in rule.props:
            if prop not in PROPS:
                close = difflib.get_close_matches(prop, PROPS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"{who}: css rule {str(rule)!r} gives the prop {prop!r}; the props it reads "
                    f"are {', '.join(PROPS)}{hint}"
                )


def selected(
    root: nn.Module, css: str, where: str
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Parameter]]]:
    """The modules ``css`` gives ``HookModule`` and the parameters of those it gives
    ``HookParam``, with a warning for a side that is empty (``where``: whose css it is)."""
    reshard(root)  # FSDP2: select the shards, not a gathered copy
    tree = modsel.select(root, css)  # a bad css raises here, with the caret
    modules = modules_with(tree, "HookModule")
    params = parameters_of(root, modules_with(tree, "HookParam"))
    warn_if_empty(modules, css, "HookModule", "module with", where)
    warn_if_empty(params, css, "HookParam", "module with parameters and", where)
    return modules, params


def start_captures(
    root: nn.Module,
    modules: list[tuple[str, nn.Module]],
    params: list[tuple[str, nn.Parameter]],
    hook_module: ModuleRecord,
    hook_param: ParamRecord,
) -> tuple[ModuleCapture | None, ParamCapture | None]:
    """Begin both records for this selection and put their captures on (module calls with
    gradients on only); a failure half way takes off what was put on."""
    hook_module.begin([p for p, _ in modules], [modsel.type_name(m) for _, m in modules])
    hook_param.begin([n for n, _ in params])
    capture: ModuleCapture | None = None
    try:
        if modules:
            device = next(root.parameters(), torch.empty(0)).device
            capture = ModuleCapture(modules, hook_module, device, grad_only=True)
            capture.install()
        params_capture = param_capture(params, hook_param) if params else None
        if params_capture is not None:
            params_capture.start()
    except BaseException:
        if capture is not None:
            capture.remove()
        raise
    return capture, params_capture


class Watch:
    """What ``k1lib.watch`` returns: a context manager holding the records ``HookModule`` and
    ``HookParam`` (see the module docstring)."""

    def __init__(self, model: nn.Module, css: str = "*") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"k1lib.watch takes an nn.Module, got {type(model).__name__}")
        self.model = model
        self.css = css
        check_props(css)
        self._root = unwrap(model)
        self._modules, self._params = selected(self._root, css, _WHERE)
        self._hookModule = ModuleRecord()
        self._hookParam = ParamRecord()
        self._capture: ModuleCapture | None = None  # inside the block
        self._paramCapture: ParamCapture | None = None
        self._rootHook: RemovableHandle | None = None  # before each forward of the model
        self._rootAfter: RemovableHandle | None = None  # after it
        self._forwarded = False  # a forward pass of the model since the last step
        self._paused = False

    @property
    def HookModule(self) -> ModuleRecord:  # noqa: N802 - the callback's name
        """Statistics of the selected modules' outputs and output gradients, one row a step."""
        return self._hookModule

    @property
    def HookParam(self) -> ParamRecord:  # noqa: N802 - the callback's name
        """Mean, std, min and max of the selected parameters, one row a step."""
        return self._hookParam

    def sharded_params(self) -> list[str]:
        """Names of the selected parameters that are FSDP shards (DTensors): their HookParam
        rows are combined across ranks where the block ends, a collective."""
        return sharded_names(self._params)

    # ---- the block ----------------------------------------------------------------------------------
    def __enter__(self) -> Watch:
        if self._rootHook is not None:
            raise RuntimeError("k1lib.watch: this watch is already inside a with block")
        try:
            self._capture, self._paramCapture = start_captures(
                self._root, self._modules, self._params, self._hookModule, self._hookParam
            )
            self._rootHook = self._root.register_forward_pre_hook(self._before_forward)
            self._rootAfter = self._root.register_forward_hook(self._saw_forward)
        except BaseException:
            self._close()
            raise
        self._forwarded = self._paused = False
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close(combine=kind is None)

    def _close(self, combine: bool = False) -> None:
        """Remove every hook, bring the rows to the host (``combine``: sharded parameters'
        rows put together first, a collective), let go of the model's tensors."""
        hook, self._rootHook = self._rootHook, None
        after, self._rootAfter = self._rootAfter, None
        capture, self._capture = self._capture, None
        params, self._paramCapture = self._paramCapture, None
        for handle in (hook, after):
            if handle is not None:
                handle.remove()
        if capture is not None:
            capture.remove()
        try:
            if params is not None and combine:
                params.combine()
        finally:
            if params is not None:
                params.stop()
            self._hookModule.end()
            self._hookParam.flush()

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        """A forward pass of the model starts. One without gradients (a validation pass)
        between batches (after ``w.step()``, before the next training forward) runs with the
        modules' hooks off, as the Learner's validation does: they would only return at once.
        They come back at the next pass with gradients. In the middle of a batch (a training
        forward since the last step) they stay: the batch is still being recorded."""
        capture = self._capture
        if capture is None:
            return
        if torch.is_grad_enabled():
            if not capture.installed:
                capture.install()
        elif capture.installed and not self._forwarded:
            capture.detach()

    def _saw_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        """A forward pass of the model ended (one that raised does not count)."""
        if not self._paused and torch.is_grad_enabled():
            self._forwarded = True

    # ---- inside it ----------------------------------------------------------------------------------
    def step(self) -> None:
        """Close a training batch: one row of each record, on the device (see the module
        docstring for when to call it)."""
        if self._rootHook is None:
            raise RuntimeError("k1lib.watch: w.step() outside its with block")
        if not self._forwarded:
            raise RuntimeError(
                "k1lib.watch: w.step() with no forward pass of the model since the last step "
                "(calls under torch.no_grad() or w.pause() are not recorded, nor model.forward(x) "
                "called directly: call model(x); a torch.compile'd model that already ran before "
                "the watch keeps its compiled graph without hooks: torch._dynamo.reset() first); "
                "call w.step() once per training batch, after opt.step()"
            )
        self._forwarded = False
        if self._capture is not None:
            self._capture.end_batch()
        if self._paramCapture is not None:
            self._paramCapture.end_batch()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Record no module call inside this ``with`` (a validation pass with gradients on)."""
        was = self._paused
        self._paused = True
        if self._capture is not None:
            self._capture.paused = True
        try:
            yield
        finally:
            self._paused = was
            if self._capture is not None:
                self._capture.paused = was

    def flush(self) -> None:
        """Copy the rows recorded so far to the host, to read them inside the block (one
        transfer; the block's end does it anyway). Sharded parameters' rows come at the
        block's end only (see the module docstring)."""
        self._hookModule.flush()
        self._hookParam.flush()

    def __repr__(self) -> str:
        state = "recording" if self._rootHook is not None else "not recording"
        return (
            f"k1lib.watch of {type(self._root).__name__} ({state}), css {self.css!r}:\n"
            f"- w.HookModule: {self._hookModule.summary()[0].rstrip(':')}\n"
            f"- w.HookParam: {self._hookParam.summary()[0].rstrip(':')}\n"
            "- w.step(): close a training batch; w.pause(): a with block not recorded"
        )


def watch(model: nn.Module, css: str = "*") -> Watch:
    """HookModule's and HookParam's statistics of ``model`` in a plain training loop: use the
    result in a ``with`` block and call ``w.step()`` after each optimizer step (see
    ``k1lib/_watch.py``). ``css`` selects modules as ``l.css`` does (props ``HookModule``,
    ``HookParam``, ``all``)."""
    return Watch(model, css)
