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
import sys
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
    from torch.distributed.fsdp import CPUOffloadPolicy

    if isinstance(kwargs.get("offload_policy"), CPUOffloadPolicy) and not torch.accelerator.is_available():
        raise ValueError(
            "l.fsdpKwargs: offload_policy=CPUOffloadPolicy() keeps the shards on the CPU and moves each "
            "unit to the accelerator for its compute, and this machine has no accelerator: leave it out"
        )
    return kwargs


def shard_units(learner: Learner) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of the modules ``l.css`` gives the prop ``shard`` (the root left
    out: it is sharded last anyway), each once, innermost first (a module comes before every
    module that contains it, also one reached by two paths)."""
    if PROP not in learner.css or learner.model is None:
        return []
    root = unwrap(learner.model)
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = {id(root)}
    for path, node in learner.moduleSelector.named_modules():  # pre-order
        if PROP in node.props and id(node.module) not in seen:
            seen.add(id(node.module))
            found.append((path, node.module))
    # a module is inside another only if it has fewer modules below it: sorting by that count
    # puts every module before the ones containing it (stable: document order otherwise)
    return sorted(found, key=lambda unit: sum(1 for _ in unit[1].modules()))


def shard(learner: Learner) -> bool:
    """Shard ``l.model`` for FSDP2 (see the module docstring) unless it is sharded already;
    True when it did. What can be checked is checked before the model changes (options,
    units, tied parameters across units, ``fully_shard`` on a copy on ``meta``); an
    interruption while ``fully_shard`` runs leaves the model half sharded."""
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
    if meta:
        _check_meta(root, meta, init is None, learner.opt)
    units = shard_units(learner)
    _warn_if_none(units, learner.css)
    _check_units(root, units)
    _dry_run(root, units, kwargs)
    names = {id(p): name for name, p in root.named_parameters()}
    if not meta:
        _from_rank_0(root)
    for _, module in units:
        fully_shard(module, **kwargs)
    fully_shard(root, **kwargs)
    if meta:
        root.to_empty(device=_device())
    new = dict(root.named_parameters())
    if learner.opt is not None:
        move_optimizer(learner.opt, {old: new[name] for old, name in names.items() if name in new})
    if meta:
        try:
            _initialise(root, init, meta)
        except BaseException as e:
            mark_broken(root)
            raise RuntimeError(
                f"l.strategy = 'fsdp': initialising the model after sharding failed ({type(e).__name__}: "
                f"{e}); l.model is sharded but its values are uninitialised memory: build the model "
                "and l.opt again"
            ) from e
    return True


def mark_broken(model: nn.Module) -> None:
    """Remember that sharding ``model`` failed after it changed (on this rank or another):
    ``check_initialised`` refuses it from then on."""
    unwrap(model)._k1lib_broken = True  # type: ignore[assignment]


def check_initialised(model: nn.Module | None) -> None:
    """Refuse a model whose sharding failed after it changed (``shard``, ``mark_broken``)."""
    if model is not None and getattr(unwrap(model), "_k1lib_broken", False):
        raise RuntimeError(
            "l.model was sharded, but sharding or initialising it failed on some rank: its values "
            "cannot be trusted; build the model and l.opt again"
        )


def reshard(model: nn.Module | None) -> None:
    """Free the gathered parameters of every FSDP unit in ``model`` and register the shards
    again. FSDP2 keeps the root unit gathered after a forward pass (it is needed first in
    backward): after validation or ``predict`` its parameters are plain tensors that ``l.opt``
    does not hold, a change to them (a freeze) would be lost, and a capture selecting them
    would hold copies. Local (no collective); nothing to do in a process that never sharded
    (``torch.distributed.fsdp`` not imported: no import here)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    kind = getattr(fsdp, "FSDPModule", None)
    if model is None or kind is None:
        return
    for module in unwrap(model).modules():
        if isinstance(module, kind):
            module.reshard()


def sharded_paths(model: nn.Module) -> list[str]:
    """Paths of the FSDP units below the root of a sharded ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return [path for path, m in unwrap(model).named_modules() if path and isinstance(m, FSDPModule)]


def _check_units(root: nn.Module, units: list[tuple[str, nn.Module]]) -> None:
    """Each parameter belongs to one unit (the nearest unit containing it, by any path), and
    the trainable parameters of a unit share one dtype: FSDP2 fails at the first forward
    otherwise, with the model sharded. Tied weights across units are refused here."""
    unit_of = {id(m): path for path, m in units}
    unit_of[id(root)] = "(the root)"
    owner: dict[int, tuple[str, str]] = {}  # id(param) -> (its unit, its name)
    dtypes: dict[str, dict[torch.dtype, str]] = {}
    stack: list[tuple[str, nn.Module, str]] = [("", root, "(the root)")]
    visited: set[tuple[int, str]] = set()
    while stack:
        path, module, unit = stack.pop()
        unit = unit_of.get(id(module), unit)
        if (id(module), unit) in visited:
            continue
        visited.add((id(module), unit))
        for name, param in module.named_parameters(recurse=False):
            full = f"{path}.{name}" if path else name
            first = owner.setdefault(id(param), (unit, full))
            if first[0] != unit:
                raise ValueError(
                    f"l.strategy = 'fsdp': the parameter {first[1]!r} is also {full!r} (tied), in two "
                    f"shard units ({_unit(first[0])} and {_unit(unit)}); FSDP2 needs tied parameters in "
                    "one unit: leave both modules out of the 'shard' selection (the root then holds "
                    "them), or shard a module containing both"
                )
            if param.requires_grad:
                dtypes.setdefault(unit, {}).setdefault(param.dtype, full)
        for name, child in module.named_children():
            stack.append((f"{path}.{name}" if path else name, child, unit))
    for unit, found in dtypes.items():
        if len(found) > 1:
            shown = ", ".join(f"{name} ({dtype})" for dtype, name in found.items())
            raise ValueError(
                f"l.strategy = 'fsdp': the shard unit {_unit(unit)} holds trainable parameters of "
                f"several dtypes ({shown}); FSDP2 needs one dtype a unit: shard the odd modules as "
                "units of their own, or convert them"
            )


def _unit(path: str) -> str:
    return path if path == "(the root)" else repr(path)


def _dry_run(root: nn.Module, units: list[tuple[str, nn.Module]], kwargs: dict[str, Any]) -> None:
    """``fully_shard`` the same units of a copy of the model on ``meta`` (no memory, no
    collective), so that what it refuses (an option's value, a unit it cannot shard) is
    refused before the model changes. A model that cannot be copied is not tried."""
    import copy

    from torch.distributed.fsdp import fully_shard

    memo: dict[int, Any] = {}
    for module in root.modules():
        for param in module.parameters(recurse=False):
            if id(param) not in memo:
                memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
        for buffer in module.buffers(recurse=False):
            if id(buffer) not in memo:
                memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    try:
        twin = copy.deepcopy(root, memo)
    except Exception:
        return
    where = "the root"
    try:
        for path, module in units:
            where = repr(path)
            fully_shard(memo[id(module)], **kwargs)
        where = "the root"
        fully_shard(twin, **kwargs)
    except Exception as e:
        raise ValueError(
            f"l.strategy = 'fsdp': fully_shard refuses to shard {where} with l.fsdpKwargs = "
            f"{kwargs!r}: {type(e).__name__}: {e}. Nothing was changed"
        ) from None


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


def _check_meta(root: nn.Module, meta: list[str], default_init: bool, opt: Any) -> None:
    """A model on ``meta`` is materialised whole: refuse one partly there (its real values
    would be lost), one that ``reset_parameters`` cannot initialise (without ``l.fsdpInit``),
    and an optimizer that made state on ``meta`` (Adagrad does when built)."""
    modules = dict(root.named_modules())
    real = [
        path or "(the root)"
        for path, module in modules.items()
        if path not in meta
        and any(True for _ in (*module.parameters(recurse=False), *module.buffers(recurse=False)))
    ]
    if real:
        raise ValueError(
            "l.strategy = 'fsdp': the model is partly on the meta device; these modules are not, and "
            f"their values would be lost when it is materialised: {', '.join(real[:5])}"
            f"{' ...' if len(real) > 5 else ''}. Build the whole model on meta"
        )
    if default_init:
        lacking = [p for p in meta if not callable(getattr(modules[p], "reset_parameters", None))]
        if lacking:
            shown = ", ".join(f"{p or '(the root)'} ({type(modules[p]).__name__})" for p in lacking[:5])
            more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
            raise ValueError(
                f"l.strategy = 'fsdp': the model is on the meta device, and these modules hold tensors "
                f"there but have no reset_parameters() to initialise them after sharding: {shown}{more}. "
                "Set l.fsdpInit = lambda model: ... to initialise the materialised model (it gets the "
                "sharded model; parameters are DTensors: set them in place, under torch.no_grad()), or "
                "build the model on the CPU"
            )
    if opt is not None and any(
        isinstance(v, torch.Tensor) and v.is_meta for state in opt.state.values() for v in state.values()
    ):
        raise ValueError(
            f"l.strategy = 'fsdp': l.opt ({type(opt).__name__}) made its state on the meta device when "
            "it was built: shard first with l.shard() (on every rank), then build l.opt over "
            "l.model.parameters()"
        )


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _initialise(root: nn.Module, init: Callable[[nn.Module], Any] | None, meta: list[str]) -> None:
    """Initialise the materialised shards: ``init(root)``, or each module's
    ``reset_parameters()``. On a CPU mesh DTensor's random operators draw each shard from the
    rank's own generator: those draw from a seed of the global generator plus the rank, so
    that ranks seeded alike do not get equal shards."""
    import torch.distributed as dist

    modules = dict(root.named_modules())
    with torch.no_grad():
        if init is not None:
            init(root)
            return
        if _device().type != "cpu":  # DTensor's own generator tracker draws each shard apart
            for path in meta:
                modules[path].reset_parameters()
            return
        seed = int(torch.randint(0, 2**62, (1,)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + dist.get_rank())
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
