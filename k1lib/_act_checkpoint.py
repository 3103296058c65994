"""Activation checkpointing chosen by CSS: modules given the prop ``checkpoint`` recompute their
forward in backward instead of keeping its activations.

    l.css = "SkipBlock: checkpoint"            # during l.run
    with k1lib.checkpointed(model, "SkipBlock: checkpoint"):   # a plain training loop
        loss = lossF(model(x), y); loss.backward()

What is selected: modules whose props name ``checkpoint`` explicitly (``all`` from ``*`` does
not count, as for ``frozen``), each once (a module registered at two places is wrapped once,
and every call of it is checkpointed); a selected module inside another selected one is left
alone: the outer one recomputes it anyway. Other props on the same modules (``shard``,
``frozen``, ``HookModule``) are not looked at.

How: for the ``with`` block (or the run) the module's ``forward`` is replaced *on the instance*
by one that calls the original through ``torch.utils.checkpoint.checkpoint(...,
use_reentrant=False)``; afterwards the instance is as before (its own ``forward`` attribute, if
it had one, is put back). The module tree, parameter names, ``state_dict`` keys and css paths
never change, and nothing is patched on a class. Non-reentrant checkpointing keeps the RNG state
(``preserve_rng_state``: dropout draws the same masks when recomputing), works under DDP, and
only runs when gradients are enabled: a forward under ``torch.no_grad()`` (validation) calls the
original ``forward`` directly and pays nothing. A transformers decoder layer
(``GradientCheckpointingLayer``) is not wrapped: its own switch (``gradient_checkpointing``) and
checkpoint function are set on the instance instead, so it drops its KV cache arguments as its
own gradient checkpointing does (a cache updated in the forward would be updated twice).

Buffers the forward changes (BatchNorm's running statistics, a spectral norm's vectors) are
put back as they were before the first forward while it is recomputed, then as it left them
(``_Buffers``): the model's state after a run is the one without checkpointing. Only torch's
global random state is replayed: a forward drawing from a ``torch.Generator`` of its own draws
anew when recomputed. A model copied (``copy.deepcopy``) or pickled during the block keeps the
wrapper, bound to the copy.

Recomputation runs the forward of the modules *inside* a checkpointed one a second time, during
backward, firing their forward hooks again. ``recomputing()`` says whether the current thread is
inside such a recomputation (the wrapper sets it through checkpoint's ``context_fn``), so
``ModuleCapture`` (HookModule, ``k1lib.watch``) ignores those calls. Gradients still flow
through the first forward's outputs: non-reentrant checkpointing only recomputes the tensors
that first forward's graph saved, it does not backpropagate through the recomputed outputs.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import modsel

from . import _warn
from ._unwrap import unwrap

__all__ = [
    "PROP",
    "checkpointed",
    "checkpointed_modules",
    "recomputing",
    "warn_if_none",
    "wrapped",
    "wrapping",
]

PROP = "checkpoint"

_local = threading.local()  # recomputation runs in autograd's thread: a flag per thread
_lock = threading.Lock()
_running = 0  # recomputations running in any thread: what every hook call checks first
_MISSING = object()


def recomputing() -> bool:
    """Whether this thread is recomputing a checkpointed forward (inside backward)."""
    return _running > 0 and getattr(_local, "depth", 0) > 0


class _Buffers:
    """Which buffers of a checkpointed module its forward changes (BatchNorm's running
    statistics and count, spectral norm's vectors): a recomputation must start from their
    values before the first forward and leave the first forward's values behind (a recomputed
    BatchNorm would update its running statistics a second time). Learned at the module's
    first forward, which copies every buffer and sees which ones moved; later forwards copy
    only those (``_Snapshot``)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.mutable: set[str] | None = None

    def named(self) -> list[tuple[str, Tensor]]:
        return [(n, b) for n, b in self.module.named_buffers() if b is not None]


class _Snapshot:
    """One checkpointed call's buffers (``_Buffers``) as they were before its forward."""

    def __init__(self, buffers: _Buffers) -> None:
        self.buffers = buffers
        self.before: list[tuple[str, Tensor, Tensor]] = []  # (name, buffer, value before)
        self._versions: dict[str, tuple[int, int]] = {}  # learning: name -> (id, version) before

    def start(self) -> None:
        """Before the first forward: copy what it may change."""
        mutable, named = self.buffers.mutable, self.buffers.named()
        with torch.no_grad():
            self.before = [(n, b, b.clone()) for n, b in named if mutable is None or n in mutable]
        if mutable is None:
            self._versions = {n: (id(b), b._version) for n, b in named}

    def end(self) -> None:
        """After the first forward: at a module's first, learn which buffers it changed (by
        identity, version or value: BatchNorm's kernel updates its running statistics without
        bumping their version)."""
        if self.buffers.mutable is None:
            now = dict(self.buffers.named())
            changed = set()
            for n, _, old in self.before:
                ident, version = self._versions[n]
                new = now.get(n)
                if new is not None and (
                    id(new) != ident or new._version != version or not torch.equal(new, old)
                ):
                    changed.add(n)
            self.buffers.mutable = changed
            self.before = [(n, now[n], old) for n, _, old in self.before if n in changed]

    def swap_in(self) -> list[Tensor]:
        """Before a recomputation: the values before the first forward in; returns the
        current ones, for ``swap_back``."""
        with torch.no_grad():
            current = [b.clone() for _, b, _ in self.before]
            for _, b, old in self.before:
                b.copy_(old)
        return current

    def swap_back(self, current: list[Tensor]) -> None:
        with torch.no_grad():
            for (_, b, _), value in zip(self.before, current, strict=True):
                b.copy_(value)


class _Around:
    """A context manager calling ``enter()`` and ``leave()``."""

    def __init__(self, enter: Callable[[], None], leave: Callable[[], None]) -> None:
        self._enter, self._leave = enter, leave

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._leave()


class _Recomputation:
    """Around a recomputation: ``recomputing()`` true in this thread, the buffers as before the
    first forward (``_Snapshot``), and a note on what fails in it (``where``: which module),
    since the error surfaces in backward, far from the module. Entered any number of times
    (torch enters it at each recomputation: a second backward with ``retain_graph=True``)."""

    def __init__(self, where: str, snapshot: _Snapshot) -> None:
        self.where, self.snapshot = where, snapshot
        self._current: list[list[Tensor]] = []

    def __enter__(self) -> None:
        global _running
        counted = False
        try:
            _local.depth = getattr(_local, "depth", 0) + 1
            counted = True
            with _lock:
                _running += 1
            self._current.append(self.snapshot.swap_in())
        except BaseException:
            if counted:
                self._count_out()
            raise

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        try:
            self.snapshot.swap_back(self._current.pop())
        finally:
            self._count_out()
        stopped = kind is not None and kind.__name__ == "_StopRecomputationError"  # torch's early stop
        if isinstance(e, Exception) and not stopped and sys.version_info >= (3, 11):
            e.add_note(
                f"k1lib: raised while recomputing the forward of {self.where} in backward (the prop "
                "'checkpoint'); a forward that changes state, such as a cache it appends to, "
                "cannot be run twice"
            )

    @staticmethod
    def _count_out() -> None:
        global _running
        _local.depth -= 1
        with _lock:
            _running -= 1


def _call(f: Callable[..., Any], kwargs: dict[str, Any], *args: Any) -> Any:
    # kwargs travel as one positional argument: checkpoint then finds their tensors' devices
    # (to keep their RNG state), and a forward's keyword named like one of checkpoint's own
    # (``debug``, ``context_fn``) cannot collide with it
    return f(*args, **kwargs)


class _Checkpointer:
    """``run(f, *args, **kwargs)``: ``f(*args, **kwargs)`` under non-reentrant checkpointing of
    ``module``, with ``recomputing()`` true while it is recomputed and the module's buffers as
    ``_Buffers`` says. A plain class (not a closure): a model copied or pickled during a run
    keeps working (``copy.deepcopy`` binds the copy's to the copied module)."""

    _k1lib_checkpoint = True

    def __init__(self, module: nn.Module, where: str) -> None:
        self.module, self.where = module, where
        self.buffers = _Buffers(module)

    def _contexts(
        self,
    ) -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
        """(around the first forward, around each recomputation) of one call."""
        snapshot = _Snapshot(self.buffers)
        return _Around(snapshot.start, snapshot.end), _Recomputation(self.where, snapshot)

    def __call__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            # traced by torch.compile, which refuses a context_fn other than dispatch modes: the
            # compiled graph recomputes (HookModule may then miss gradients inside: the README)
            return checkpoint(_call, f, kwargs, *args, use_reentrant=False)
        return checkpoint(_call, f, kwargs, *args, use_reentrant=False, context_fn=self._contexts)


class _Forward:
    """The ``forward`` a checkpointed module gets on its instance: its own forward (the one it
    had on its instance, else its class's) under checkpointing when gradients are enabled,
    directly otherwise (no graph, nothing to save: checkpoint would only cost)."""

    _k1lib_checkpoint = True

    def __init__(self, module: nn.Module, where: str, own: Any) -> None:
        self.run = _Checkpointer(module, where)
        self.own = own  # the instance's forward before, or None (its class's)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.run.module
        original = self.own if self.own is not None else type(module).forward.__get__(module)
        if not torch.is_grad_enabled():
            return original(*args, **kwargs)
        return self.run(original, *args, **kwargs)


def _hf_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers ``GradientCheckpointingLayer`` (a decoder layer):
    told to, it checkpoints its own forward through a function we give it, and first drops its
    KV cache arguments, which the recomputation would otherwise update a second time."""
    return any(
        c.__name__ == "GradientCheckpointingLayer" and c.__module__.startswith("transformers.")
        for c in type(module).__mro__
    )


def wrapped(module: nn.Module) -> bool:
    """Whether ``module`` is checkpointed by k1lib now."""
    own = module.__dict__
    return any(
        getattr(own.get(name), "_k1lib_checkpoint", False)
        for name in ("forward", "_gradient_checkpointing_func")
    )


def checkpointed_modules(tree: modsel.ModuleSelector) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the modules of ``tree`` to checkpoint: those whose props name
    ``checkpoint`` (``all`` does not count) and that sit inside no other such module, each
    module once, at its first such place, in document order."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    covered: set[int] = set()  # nodes at or below a selected one
    for path, node in tree.named_modules():  # pre-order: a node's parent comes first
        if id(node.parent) in covered:
            covered.add(id(node))
        elif PROP in node.props:
            covered.add(id(node))
            if id(node.module) not in seen:
                seen.add(id(node.module))
                found.append((path, node.module))
    return found


@contextlib.contextmanager
def wrapping(modules: list[tuple[str, nn.Module]]) -> Iterator[None]:
    """Checkpoint each module's forward for the ``with`` block, then put each instance back as
    it was, also after an exception. A module already wrapped (a run inside a ``with
    checkpointed(...)`` block) is left to its outer wrapping."""
    saved: list[tuple[nn.Module, dict[str, Any]]] = []
    try:
        for path, module in modules:
            if wrapped(module):
                continue
            if isinstance(module, torch.jit.ScriptModule):
                raise TypeError(
                    f"checkpoint: the module at {path!r} ({type(module).__name__}) is TorchScript, "
                    "whose forward cannot be wrapped; select the eager module instead"
                )
            where = f"the module at {path!r} ({type(module).__name__})"
            # instance attributes only (plain values: nn.Module keeps them in __dict__)
            if _hf_layer(module):
                new = {
                    "gradient_checkpointing": True,
                    "_gradient_checkpointing_func": _Checkpointer(module, where),
                }
            else:
                new = {"forward": _Forward(module, where, module.__dict__.get("forward"))}
            saved.append((module, {name: module.__dict__.get(name, _MISSING) for name in new}))
            module.__dict__.update(new)
        yield
    finally:
        for module, before in reversed(saved):
            for name, value in before.items():
                if value is _MISSING:
                    del module.__dict__[name]
                else:
                    module.__dict__[name] = value


def _asks(css: str) -> bool:
    return any(PROP in rule.props for rule in modsel.parse(css).rules)


def warn_if_none(found: list[tuple[str, nn.Module]], css: str, where: str) -> None:
    """Warn that nothing is checkpointed when ``css`` gives ``checkpoint`` but selects no
    module (``where``: the css's name in the message)."""
    if not found and PROP in css and _asks(css):
        _warn.warn(
            f"checkpoint: {where} selects no module with the prop 'checkpoint', so nothing is "
            f"checkpointed; {where} is {css!r}"
        )


@contextlib.contextmanager
def checkpointed(model: nn.Module, css: str) -> Iterator[list[tuple[str, nn.Module]]]:
    """Activation checkpointing of the modules ``css`` gives the prop ``checkpoint`` (``with
    k1lib.checkpointed(model, "SkipBlock: checkpoint"):``) in a plain training loop; yields
    the ``(path, module)`` pairs checkpointed. ``Learner.run`` does the same with ``l.css``. A
    model wrapped by ``torch.compile`` or DDP is seen through. Warns when ``css`` selects
    nothing to checkpoint."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"k1lib.checkpointed: model must be an nn.Module, got {type(model).__name__}")
    tree = modsel.select(unwrap(model), css)
    found = checkpointed_modules(tree)
    if not found:
        hint = "" if _asks(css) else " (give it with the prop, e.g. 'SkipBlock: checkpoint')"
        _warn.warn(
            f"k1lib.checkpointed: the css selects no module with the prop 'checkpoint'{hint}, so "
            f"nothing is checkpointed; the css is {css!r}"
        )
    with wrapping(found):
        yield found
