"""``ModuleCapture``: the hooks that see selected modules' outputs and output gradients, and the
per-batch policy that turns them into one row of statistics, on a bare ``nn.Module`` (no
Learner needed). ``HookModule`` and ``k1lib.watch`` drive one; a ``ModuleRecord`` keeps what
it writes.

    modules = [("0", model[0]), ("2", model[2])]
    record = ModuleRecord()
    record.begin([p for p, _ in modules], [type(m).__name__ for _, m in modules])
    capture = ModuleCapture(modules, record)
    capture.install()          # forward hooks on the modules
    capture.start_batch()      # forget what an unfinished batch left
    loss = lossF(model(x), y); loss.backward()
    capture.end_batch()        # one row of statistics, on the device (no host sync)
    capture.remove()           # always, in a ``finally``
    record.end()               # rows to the host: record[0].forward.means

The policy, per module call while installed:
- the output is the module's tensor, or the first tensor of a tuple, list, dict or dataclass
  (``modsel._grad.first_tensor``); a module giving none records NaN;
- a small output (at most ``_stats.SMALL`` elements) is kept until ``end_batch`` and reduced
  there with the others of its size, its gradient retained by autograd (``retain_grad``, a C++
  hook: cheaper than a Python tensor hook); a large one is reduced in the hook and its
  gradient in a tensor hook, so nothing large is held;
- the first batch after construction ("probing") copies every small output and takes every
  gradient with a tensor hook; modules whose output was then changed in place (a following
  ``ReLU(inplace=True)``) keep doing so (``_eager``), the others use the cheap path;
- a module called several times in a batch keeps its last call, forward and backward;
- a forward run again in backward by activation checkpointing (``k1lib._act_checkpoint``)
  is not a call: the records are those without checkpointing;
- custom recorders (``Recorders.custom``) see every output and gradient in the hooks (with
  any, every output takes the tensor-hook path).

``remove`` takes everything off: the forward hooks, the tensor hooks of the current batch,
and the gradients autograd retained for it. Torch cannot undo ``retain_grad``: outputs of a
batch cut short keep ``retains_grad`` (their ``.grad`` is cleared and the capture lets go of
them).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from modsel._grad import Key, first_tensor, hook_grads

from .._act_checkpoint import recomputing
from ._module_record import ModuleRecord
from ._recorders import DIRECTIONS
from ._stats import SMALL, Reducer, _Early

__all__ = ["ModuleCapture"]

_Custom = list[tuple[str, Callable[[Tensor], Tensor], list[Tensor | None]]]


class ModuleCapture:
    """Hooks on ``modules`` (``(path, module)`` pairs) writing one row a batch into ``record``
    (see the module docstring). ``home``: the device of rows of batches in which no module gave
    a tensor. ``grad_only``: ignore module calls made while gradients are disabled (under
    ``torch.no_grad()``: a validation pass). ``paused``: ignore every call while True."""

    def __init__(
        self,
        modules: list[tuple[str, nn.Module]],
        record: ModuleRecord,
        home: torch.device | None = None,
        grad_only: bool = False,
    ) -> None:
        self._modules = [m for _, m in modules]
        self._record = record
        self._home = home or torch.device("cpu")
        self._gradOnly = grad_only
        self.paused = False
        recorders = record.recorders
        self._reducer = Reducer(recorders.builtin)
        self._custom = list(recorders.custom)
        self._handles: list[RemovableHandle] = []
        self._eager: set[int] = set()  # modules whose output is changed in place afterwards
        self._probing = True  # the first batch copies every small output, to find those
        self._retaining: dict[int, Tensor] = {}  # id -> tensors we called retain_grad() on
        self._gradHandles: list[RemovableHandle] = []  # tensor hooks of this batch
        self._clear_batch()

    @property
    def installed(self) -> bool:
        """Whether the forward hooks are on the modules."""
        return bool(self._handles)

    # ---- lifecycle ----------------------------------------------------------------------------------
    def install(self) -> None:
        """Put a forward hook on each module (nothing when already installed), ahead of the
        module's other forward hooks: what is recorded is the module's own output, whatever
        hooks were added before or after, and also once ``detach`` and ``install`` moved it."""
        if not self._handles:
            self._handles = [
                m.register_forward_hook(self._forward_hook(i), prepend=True)
                for i, m in enumerate(self._modules)
            ]

    def detach(self) -> None:
        """Take the forward hooks off but keep the batch: a pass that would record nothing (no
        gradients: a validation pass) then runs at full speed; ``install`` puts them back."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def remove(self) -> None:
        """Take every hook off (forward hooks, tensor hooks of this batch) and forget the batch."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._clear_batch()

    def start_batch(self) -> None:
        """Forget what a batch left unfinished (a new batch starts)."""
        self._clear_batch()

    def end_batch(self) -> None:
        """Reduce this batch's outputs and gradients into one row of ``record`` (on the device:
        no host sync), then start afresh. Nothing when not installed."""
        if not self._handles:
            return
        device = self._device or self._home
        kept = self._kept
        for i, (t, version, copied) in self._versions.items():
            if t._version != version:
                # changed in place after the module (ReLU(inplace=True) next): from now on its
                # output is copied and its gradient taken by a tensor hook (the first batch
                # does that for every module, to find these)
                self._eager.add(i)
                if not copied:
                    kept[0][i] = None
                    self._retained.pop(i, None)
        self._probing = False
        for i, t in self._retained.items():
            kept[0][i] = t  # the reducer runs under no_grad: no detach needed
            kept[1][i] = None if self._forgotten else t.grad
        for t in self._retaining.values():  # after reading all: one tensor may serve several modules
            t.grad = None
        self._retaining = {}
        # both sides in one call: outputs and gradients of one size are stacked together
        n = len(self._modules)
        done = {**self._done[0], **{n + i: v for i, v in self._done[1].items()}}
        both = self._reducer(kept[0] + kept[1], done)
        forward, backward = self._record.next_rows(device)
        forward.copy_(both[:n])
        backward.copy_(both[n:])
        for side, direction in enumerate(DIRECTIONS):
            for name, _, values in self._customNow[side]:
                self._record.write_custom(direction, name, values, device)
        self._gradHandles = []  # their tensors go with this batch's graph
        self._clear_batch()

    def forget_backward(self) -> None:
        """This batch's backward pass was undone (its gradients put back: under DDP, the ranks
        agreed after it that the batch does not train): its row gets no backward statistics,
        as when no backward pass ran."""
        n = len(self._modules)
        self._done[1] = {}
        self._kept[1] = [None] * n
        self._forgotten = True  # the gradients autograd retained are not read either
        for _, _, values in self._customNow[1]:
            values[:] = [None] * n

    # ---- the hooks ----------------------------------------------------------------------------------
    def _clear_batch(self) -> None:
        n = len(self._modules)
        for t in self._retaining.values():  # a batch cut short: drop what it left on tensors
            t.grad = None
        for handle in self._gradHandles:
            handle.remove()
        self._kept: list[list[Tensor | None]] = [[None] * n, [None] * n]
        # forward outputs: (tensor, its version then, whether a copy was kept instead)
        self._versions: dict[int, tuple[Tensor, int, bool]] = {}
        self._done: list[dict[int, _Early]] = [{}, {}]
        self._customNow: list[_Custom] = [
            [(r.name, r.f, [None] * n) for r in self._custom if d in r.directions] for d in DIRECTIONS
        ]
        self._retained: dict[int, Tensor] = {}  # module -> output whose .grad autograd keeps
        self._retaining = {}
        self._gradHandles = []
        self._calls = [0] * n
        self._device: torch.device | None = None
        self._forgotten = False

    def _take(self, side: int, i: int, t: Tensor, copy: bool = False) -> None:
        """Record tensor ``t`` for module ``i`` on ``side`` (0 forward, 1 backward): large ones
        are reduced now, small ones kept for the end of the batch (``copy``: a copy, for an
        output that is later changed in place)."""
        t = t.detach()
        if t.numel() > SMALL:
            self._done[side][i] = self._reducer.one(t)
            self._kept[side][i] = None  # an earlier call's small tensor, if any
            if side == 0:
                self._versions.pop(i, None)
                self._retained.pop(i, None)
        else:
            self._done[side].pop(i, None)  # an earlier call's large tensor, if any
            self._kept[side][i] = t.clone() if copy else t
            if side == 0:
                self._versions[i] = (t, t._version, copy)
        for _, f, values in self._customNow[side]:
            values[i] = f(t)

    def _forward_hook(self, i: int) -> Callable[[nn.Module, Any, Any], None]:
        """The hook of module ``i``. A module called several times in a batch keeps its last
        call, forward and backward (gradients arrive in reverse order: earlier calls' are
        ignored)."""

        def backward(call: int, key: Key, grad: Tensor) -> None:
            if call == self._calls[i]:
                self._take(1, i, grad)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.paused or (self._gradOnly and not torch.is_grad_enabled()) or recomputing():
                # recomputing: a checkpointed forward run again in backward (the prop
                # ``checkpoint``); its first run was recorded, and its gradients flow through
                # that first run's outputs
                return
            t = output if type(output) is Tensor else first_tensor(output)
            if t is None:
                return
            self._device = t.device
            self._calls[i] += 1
            if t.grad_fn is None:  # no gradient will come
                self._take(0, i, t)
            elif (
                not self._probing
                and i not in self._eager
                and t.numel() <= SMALL
                and not self._custom
                and (not t.retains_grad or id(t) in self._retaining)
            ):
                # small: kept, and its gradient retained by autograd in C++ (cheaper than a
                # Python tensor hook); both are read at the end of the batch. An output that
                # something else retains already (another capture, which clears its .grad at
                # its own batch end) takes the tensor-hook way below instead
                self._done[0].pop(i, None)  # an earlier call's large output, if any
                self._kept[0][i] = t
                self._versions[i] = (t, t._version, False)
                self._retained[i] = t
                if not t.retains_grad:
                    t.retain_grad()
                    self._retaining[id(t)] = t
            else:
                self._take(0, i, t, copy=self._probing or i in self._eager)
                self._gradHandles += hook_grads(t, partial(backward, self._calls[i]))

        return hook
