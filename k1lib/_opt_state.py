"""Checks an optimizer's saved ``state_dict`` against the optimizer about to load it.

``torch.optim.Optimizer.load_state_dict`` checks only the number of parameters per group;
a state saved for other parameters, in another order, with an ``exp_avg`` of another shape
or a string where a number goes loads silently and fails at the next step (or, with a fused
kernel, corrupts memory). ``check`` refuses such a state before anything is loaded:

- the structure: ``state`` and ``param_groups``, distinct int ids, state only for those ids;
- for torch's own optimizers, what their code implies: the moment buffers (``exp_avg``,
  ``momentum_buffer``, ...) have their parameter's shape, ``step`` is a number, and each
  hyperparameter is of the kind the optimizer holds now (a number where a number goes);
- for other optimizers, whose state we cannot know, a trial: a copy of the optimizer whose
  parameters are on the meta device (shapes, no data) loads the state and takes a step.
  The trial is judged against the same trial with a state the optimizer made itself, so an
  optimizer that cannot step on the meta device at all is not judged (structure only).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch

__all__ = ["OptStateError", "check"]

# torch.optim's per-parameter buffers that have their parameter's shape
_PARAMETER_SHAPED = frozenset(
    {
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "momentum_buffer",
        "sum",
        "square_avg",
        "acc_delta",
        "grad_avg",
        "exp_inf",
        "prev",
        "step_size",
        "ax",
    }
)


# torch.optim's per-parameter scalars (ASGD's eta and mu, NAdam's mu_product)
_SCALARS = frozenset({"step", "eta", "mu", "mu_product"})


class OptStateError(ValueError):
    """A saved optimizer state does not fit the optimizer (the message names what)."""


def check(opt: torch.optim.Optimizer, model: torch.nn.Module, state: Any) -> dict[str, Any]:
    """``state`` (an optimizer ``state_dict``), checked to fit ``opt``, whose parameters are
    ``model``'s (for names in messages)."""
    per_param, groups = _structure(opt, state)
    names = _names(model)
    ids = [i for group in groups for i in group["params"]]
    params = [p for group in opt.param_groups for p in group["params"]]
    per_param = _dense(per_param, ids, params, names)
    if _from_torch(opt):
        _check_buffers(per_param, ids, params, names)
        _check_hyperparameters(opt, groups)
    else:
        try:
            _trial(opt, {**state, "state": per_param}, ids, params, names)
        except OptStateError:
            raise
        except Exception:  # a wrapper or subclass we cannot copy (Accelerate's): no verdict
            pass
    return {**state, "state": per_param}


def _from_torch(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt`` is one of torch's optimizers, or a subclass of one (same state)."""
    return any(
        kind is not torch.optim.Optimizer
        and (kind.__module__ == "torch.optim" or kind.__module__.startswith("torch.optim."))
        for kind in type(opt).__mro__
    )


def _dense(
    per_param: dict[Any, Any], ids: list[int], params: list[torch.Tensor], names: dict[int, str]
) -> dict[Any, Any]:
    """``per_param`` with every tensor dense and in order: a saved tensor may have any strides,
    which torch's fused kernels trust and walk past the end of. Views whose elements overlap
    (expanded) and tensors on the meta device (no values) are refused."""
    where = {i: names.get(id(p), f"parameter {i}") for i, p in zip(ids, params, strict=True)}
    out = {}
    for i, entry in per_param.items():
        fixed = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                if value.is_meta:
                    raise OptStateError(f"{where[i]}: its {key!r} is on the meta device (it holds no values)")
                if value.layout == torch.strided and not value.is_contiguous():
                    if value.numel() * value.element_size() > value.untyped_storage().nbytes():
                        raise OptStateError(  # densifying a hostile one could take any memory
                            f"{where[i]}: its {key!r} is a view whose elements overlap (shape "
                            f"{tuple(value.shape)}, strides {value.stride()})"
                        )
                    value = value.contiguous()
            fixed[key] = value
        out[i] = fixed
    return out


def _structure(opt: torch.optim.Optimizer, state: Any) -> tuple[dict[Any, Any], list[dict[str, Any]]]:
    per_param = state.get("state") if isinstance(state, dict) else None
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not (
        isinstance(per_param, dict)
        and isinstance(groups, list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    ):
        raise OptStateError(
            "the optimizer's state should be a dict of 'state' (a dict) and 'param_groups' (a list "
            "of dicts, each with its 'params')"
        )
    ours = [len(group["params"]) for group in opt.param_groups]
    theirs = [len(g["params"]) for g in groups]
    if ours != theirs:
        raise OptStateError(f"the optimizer's parameter groups hold {theirs} parameters; l.opt's hold {ours}")
    ids = [i for g in groups for i in g["params"]]
    if any(type(i) is not int for i in ids) or len(set(ids)) != len(ids):
        raise OptStateError(f"the optimizer's parameter ids should be distinct ints, got {ids[:12]}")
    known = set(ids)
    stray = [k for k in per_param if k not in known]
    if stray:
        raise OptStateError(
            f"the optimizer has state for parameter ids {stray[:8]} that none of its parameter groups holds"
        )
    for i, entry in per_param.items():
        if not (isinstance(entry, dict) and all(isinstance(k, str) for k in entry)):
            raise OptStateError(
                f"the optimizer's state of parameter id {i} should be a dict with string keys, "
                f"got {type(entry).__name__}"
            )
    return per_param, groups


def _names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}


def _check_buffers(
    per_param: dict[Any, Any], ids: list[int], params: list[torch.Tensor], names: dict[int, str]
) -> None:
    problems = []
    for i, p in zip(ids, params, strict=True):
        where = names.get(id(p), f"parameter {i}")
        for key, value in per_param.get(i, {}).items():
            if key in _PARAMETER_SHAPED and isinstance(value, torch.Tensor) and value.shape != p.shape:
                problems.append(
                    f"{where}: its {key!r} is {tuple(value.shape)}, the parameter {tuple(p.shape)}"
                )
            elif key in _PARAMETER_SHAPED and not isinstance(value, torch.Tensor | type(None)):
                problems.append(f"{where}: its {key!r} is a {type(value).__name__}, not a tensor")
            elif key in _SCALARS and not _is_number(value):
                problems.append(f"{where}: its {key!r} is {_brief(value)}, not a number")
            elif not _is_state_value(value):
                problems.append(f"{where}: its {key!r} is {_brief(value)}")
    if problems:
        more = ["..."] if len(problems) > 8 else []
        raise OptStateError(
            "the optimizer's state does not fit l.opt's parameters (saved for another model, or for "
            "its parameters in another order?):" + "".join(f"\n  {line}" for line in problems[:8] + more)
        )


def _is_state_value(value: object) -> bool:
    """What torch's optimizers keep per parameter: tensors, numbers, None, lists of them (LBFGS)."""
    if isinstance(value, list | tuple):
        return all(isinstance(v, torch.Tensor) or _is_number(v) for v in value)
    return value is None or isinstance(value, torch.Tensor) or _is_number(value)


def _is_number(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, int | float) and not isinstance(value, bool)


def _brief(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and {value.dtype}"
    return f"{value!r:.40}"


def _check_hyperparameters(opt: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    for n, (ours, theirs) in enumerate(zip(opt.param_groups, groups, strict=True)):
        for key, value in theirs.items():
            if key not in ("params", "param_names") and key in ours and not _same_kind(value, ours[key]):
                raise OptStateError(
                    f"the optimizer's parameter group {n} has {key}={_brief(value)}; l.opt's is "
                    f"{_brief(ours[key])}"
                )


def _same_kind(saved: object, current: object) -> bool:
    """Whether ``saved`` can stand where ``current`` is (an lr may be a float or a tensor;
    None stands for a default)."""
    if saved is None or current is None:
        return True
    if isinstance(current, bool) or isinstance(saved, bool):
        return isinstance(current, bool) and isinstance(saved, bool)
    if isinstance(current, int | float | torch.Tensor):
        return _is_number(saved)
    if isinstance(current, tuple | list):
        return (
            isinstance(saved, tuple | list)
            and len(saved) == len(current)
            and all(_same_kind(s, c) for s, c in zip(saved, current, strict=True))
        )
    return type(saved) is type(current) if isinstance(current, str) else True


# ---- the trial, for optimizers we do not know ----------------------------------------------------


def _shape_line(where: str, key: str, value: torch.Tensor, param: torch.Tensor) -> str:
    return f"{where}: its {key!r} is {tuple(value.shape)}, the parameter {tuple(param.shape)}"


def _trial(
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    ids: list[int],
    params: list[Any],
    names: dict[int, str],
) -> None:
    reference = _scratch(opt)
    if _step(reference) is not None:
        return  # it cannot step on the meta device at all: the structure is all we can check
    # where the optimizer keeps state off the meta device (a step count it reads on the CPU)
    real = {
        (n, key): (value.dtype, value.device)
        for n, p in enumerate(_scratch_params(reference))
        for key, value in reference.state[p].items()
        if isinstance(value, torch.Tensor) and not value.is_meta
    }
    failure = _load_and_step(opt, state, ids, real)
    if failure is None:
        return
    own = reference.state_dict()
    own_ids = [i for group in own["param_groups"] for i in group["params"]]
    if _load_and_step(opt, own, own_ids, real) is not None:
        return  # the trial fails on a state the optimizer made itself: no verdict
    shapes = [
        "\n  " + _shape_line(names.get(id(p), f"parameter {i}"), key, v, p)
        for i, p in zip(ids, params, strict=True)
        for key, v in state["state"].get(i, {}).items()
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape
    ]
    raise OptStateError(
        f"the optimizer's state does not fit l.opt's parameters: a step with it fails ({failure})"
        + "".join(shapes[:8])
    )


def _scratch(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A copy of ``opt`` with no state, whose parameters are on the meta device, with grads."""
    groups = []
    for group in opt.param_groups:
        metas = []
        for p in group["params"]:
            meta = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"))
            meta.grad = torch.empty_like(meta)
            metas.append(meta)
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": metas})
    # built as unpickling builds one: a constructor's arguments need not match its defaults
    scratch = type(opt).__new__(type(opt))
    scratch.__setstate__({"defaults": dict(opt.defaults), "state": {}, "param_groups": groups})
    scratch.state = defaultdict(dict)
    return scratch


def _scratch_params(scratch: torch.optim.Optimizer) -> list[Any]:
    return [p for group in scratch.param_groups for p in group["params"]]


def _step(scratch: torch.optim.Optimizer) -> str | None:
    """What one step of ``scratch`` raises, or None. The step's own code only: global step
    hooks (a user's step counter) must not see this step."""
    step = type(scratch).step
    raw = getattr(step, "__wrapped__", step) if getattr(step, "hooked", False) else step
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw(scratch)
    except Exception as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        return f"{type(e).__name__}: {first[:200]}"
    return None


def _load_and_step(
    opt: torch.optim.Optimizer, state: dict[str, Any], ids: list[int], real: dict[tuple[int, str], Any]
) -> str | None:
    scratch = _scratch(opt)
    index = {i: n for n, i in enumerate(ids)}

    def on_meta(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return torch.empty(value.shape, dtype=value.dtype, device="meta")
        if isinstance(value, dict):
            return {k: on_meta(v) for k, v in value.items()}
        if type(value) in (list, tuple):
            return type(value)(on_meta(v) for v in value)
        return value

    try:
        scratch.load_state_dict({"state": on_meta(state["state"]), "param_groups": state["param_groups"]})
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:200]}"
    params = _scratch_params(scratch)
    for i, entry in state["state"].items():
        for key, value in entry.items():
            place = real.get((index[i], key))
            if place is not None and isinstance(value, torch.Tensor):
                dtype, device = place
                scratch.state[params[index[i]]][key] = value.detach().to(device, dtype, copy=True)
    return _step(scratch)
