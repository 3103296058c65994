"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``): ``l.strategy = "fsdp"``.

Under ``torchrun`` (a process group of more than one process), ``Learner.run`` shards the model
before its first run instead of wrapping it in DDP (``shard``):

- ``fully_shard`` is applied to every module ``l.css`` gives the prop ``shard`` (explicitly:
  ``all`` does not count), innermost first, then to the root; ``l.fsdpKwargs`` go to each call
  (``mesh``, ``reshard_after_forward``, ``mp_policy``, ``offload_policy``, ...).
- Every rank starts from rank 0's parameters and buffers (as under DDP).
- ``fully_shard`` changes the modules in place: each one's class becomes a subclass of the
  user's (``FSDPLlamaDecoderLayer``; modsel still types it ``LlamaDecoderLayer``) and each
  parameter becomes a new ``DTensor`` parameter holding this rank's shard, under the same
  name. So ``l.model`` stays the same object with the same paths (``l.css``, HookModule and
  HookParam names and checkpoint keys are unchanged), and stays sharded after the run: a
  second run, ``l.save`` and ``l.predict`` use the shards (its forward is then a collective:
  every rank must call it).
- ``l.opt`` is moved onto the new parameters in place (the same optimizer object, so a
  scheduler built on it keeps working): each parameter group holds the sharded parameters,
  and state the optimizer already has (a resumed run) is cut into the same shards.
- A model built on the ``meta`` device (``with torch.device("meta"): model = Net()``) is
  materialised after sharding, each rank allocating its shards only, and initialised by
  ``l.fsdpInit(model)`` when set, else by each module's ``reset_parameters()``.

In one process (no process group of more than one) the strategy changes nothing: the same
script trains the plain model.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._unwrap import unwrap

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = ["PROP", "STRATEGIES", "is_sharded", "shard", "shard_units"]

PROP = "shard"
STRATEGIES = ("ddp", "fsdp")


def is_sharded(model: nn.Module | None) -> bool:
    """Whether ``model`` (seen through ``torch.compile``) was sharded by ``fully_shard``: its
    parameters are then ``DTensor`` shards, and its forward and backward make collectives."""
    if model is None:
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def check_strategy(strategy: object) -> str:
    """``strategy`` when it is one we know, else a ``ValueError`` listing them."""
    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(str(strategy), STRATEGIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"l.strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}{hint}"
        )
    return str(strategy)


def _fully_shard_options() -> list[str]:
    from torch.distributed.fsdp import fully_shard

    return [name for name in inspect.signature(fully_shard).parameters if name != "module"]


def check_kwargs(kwargs: object) -> dict[str, Any]:
    """``l.fsdpKwargs`` when each key is an option of ``fully_shard``; else an error naming it."""
    if not isinstance(kwargs, dict):
        raise TypeError(f"l.fsdpKwargs must be a dict of fully_shard options, got {type(kwargs).__name__}")
    options = _fully_shard_options()
    for key in kwargs:
        if key not in options:
            close = difflib.get_close_matches(str(key), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"l.fsdpKwargs: {key!r} is not an option of fully_shard{hint}; its options are "
                f"{', '.join(options)}"
            )
    return kwargs


def shard_units(learner: Learner) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the modules ``l.css`` gives the prop ``shard`` (the root left
    out: it is sharded last anyway), each once, innermost first (a module comes before every
    module that contains it)."""
    if PROP not in learner.css or learner.model is None:
        return []
    root = unwrap(learner.model)
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = {id(root)}
    for path, node in learner.moduleSelector.named_modules():  # pre-order
        if PROP in node.props and id(node.module) not in seen:
            seen.add(id(node.module))
            found.append((path, node.module))
    return found[::-1]  # reversed pre-order: descendants before their ancestors


def shard(learner: Learner) -> bool:
    """Shard ``l.model`` for FSDP2 (see the module docstring) unless it is sharded already;
    True when it did. Everything is checked before the model changes."""
    from torch.distributed.fsdp import fully_shard

    model = learner.model
    if model is None or is_sharded(model):
        return False
    root = unwrap(model)
    if root is not model:
        raise TypeError(
            f"l.strategy = 'fsdp' shards the plain module, but l.model is a {type(model).__name__} "
            "wrapping it: set l.model to the module itself (torch.compile it after the run, or "
            "shard it by hand with fully_shard)"
        )
    kwargs = check_kwargs(learner.fsdpKwargs)
    init = learner.fsdpInit
    if init is not None and not callable(init):
        raise TypeError(f"l.fsdpInit must be a function of the model, got {type(init).__name__}")
    meta = _on_meta(root)
    if meta and init is None:
        _check_resettable(root, meta)
    units = shard_units(learner)
    _warn_if_none(units, learner.css)
    names = {id(p): name for name, p in root.named_parameters()}
    if not meta:
        _from_rank_0(root)
    for _, module in units:
        fully_shard(module, **kwargs)
    fully_shard(root, **kwargs)
    if meta:
        _materialise(root, init, meta)
    new = dict(root.named_parameters())
    if learner.opt is not None:
        move_optimizer(learner.opt, {old: new[name] for old, name in names.items() if name in new})
    return True


def _from_rank_0(root: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers, as DDP does (``fully_shard`` keeps
    each rank's own values: models built with different seeds would mix)."""
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in (*root.parameters(), *root.buffers()):
            sent = tensor.detach().contiguous()  # itself when contiguous
            dist.broadcast(sent, src=0)
            if sent.data_ptr() != tensor.data_ptr():
                tensor.detach().copy_(sent)


def _warn_if_none(units: list[tuple[str, nn.Module]], css: str) -> None:
    if not units:
        from ._warn import warn

        warn(
            "l.strategy = 'fsdp': l.css gives no module the prop 'shard', so the whole model is one "
            "shard unit (every forward gathers all of it at once); shard the repeated blocks, e.g. "
            f"l.css = 'LlamaDecoderLayer: shard'. l.css is {css!r}"
        )


def _on_meta(root: nn.Module) -> list[str]:
    """Paths of the modules holding parameters or buffers on the ``meta`` device."""
    return [
        path
        for path, module in root.named_modules()
        if any(t.is_meta for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)))
    ]


def _check_resettable(root: nn.Module, meta: list[str]) -> None:
    modules = dict(root.named_modules())
    lacking = [
        path or "(the root)"
        for path in meta
        if not callable(getattr(modules[path], "reset_parameters", None))
    ]
    if lacking:
        shown = ", ".join(
            f"{p} ({type(modules[p if p != '(the root)' else '']).__name__})" for p in lacking[:5]
        )
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        raise ValueError(
            f"l.strategy = 'fsdp': the model is on the meta device, and these modules hold tensors there "
            f"but have no reset_parameters() to initialise them after sharding: {shown}{more}. Set "
            "l.fsdpInit = lambda model: ... to initialise the materialised model (it gets the "
            "sharded model; parameters are DTensors: set them in place, under torch.no_grad()), or "
            "build the model on the CPU"
        )


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _materialise(root: nn.Module, init: Callable[[nn.Module], Any] | None, meta: list[str]) -> None:
    """Allocate this rank's shards (and buffers) of a model built on ``meta``, then initialise
    them: ``init(root)``, or each module's ``reset_parameters()``."""
    root.to_empty(device=_device())
    with torch.no_grad():
        if init is not None:
            init(root)
            return
        modules = dict(root.named_modules())
        for path in meta:
            modules[path].reset_parameters()


def move_optimizer(opt: torch.optim.Optimizer, new: dict[int, nn.Parameter]) -> None:
    """Point ``opt`` at the sharded parameters: ``new`` maps ``id(old parameter)`` to its
    sharded replacement. Its state (a resumed run's) is cut into the same shards: a tensor of
    the parameter's full shape becomes a DTensor laid out as the parameter; others (a step
    count) are kept."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    olds: dict[int, torch.Tensor] = {}
    for group in opt.param_groups:
        params = []
        for p in group["params"]:
            olds[id(p)] = p
            params.append(new.get(id(p), p))
        group["params"] = params
    state = opt.state
    for key in list(state):
        replacement = new.get(id(key))
        if replacement is None:
            continue
        values = state.pop(key)
        assert isinstance(replacement, DTensor)
        moved = {}
        for name, value in values.items():
            if (
                isinstance(value, torch.Tensor)
                and not isinstance(value, DTensor)
                and value.shape == key.shape
                and value.dim()
            ):
                value = distribute_tensor(
                    value.to(replacement.device),
                    replacement.device_mesh,
                    replacement.placements,
                    src_data_rank=None,  # every rank has the same full tensor: no broadcast
                )
            moved[name] = value
        state[replacement] = moved
