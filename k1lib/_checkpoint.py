"""Checkpoints: a Learner's training state as a dict of state_dicts (``Learner.save`` / ``load``).

A checkpoint holds what a run changes: the model's and the optimizer's state_dicts, each
callback's own small state (``cb.state_dict()``; callbacks with none are left out), the css,
the loop counters, and the random number generators a resumed run draws from (torch's global
CPU generator, the CUDA ones when CUDA is in use, and any ``torch.Generator`` the data loaders
hold), and which samples train and validate when the data came from ``Data.fromDataset`` (its
split: ``Data.state_dict``). It never holds the Learner itself, the data, ``lossF`` or any
callback's code: the learner that loads is built the same way as the one that saved, then
``load`` puts the state back. Python's ``random`` and NumPy's generators are not saved.

Files are written by ``torch.save`` to a temporary file in the target's directory, flushed
to disk, then renamed over the target (``_files``): a crash mid-save leaves the previous file
whole. They are read with ``torch.load(weights_only=True)``, so loading never runs code from
the file; ``save`` therefore refuses state that such a load could not read back. Each file is
sealed with a digest of what it holds (from format version 2), checked on what ``torch.load``
returned: the zip's own CRCs miss damage to its directory (a flag, a compression method) that
makes torch read wrong bytes, and cover less (the digest covers every value, the structure
and each tensor's dtype and shape). Files of version 1 have no digest: their CRCs are checked.
Version 3 adds the data's split; older files load with the learner's own split.

``load`` checks the learner (``l.opt`` must optimize ``l.model``'s parameters) and the whole
file against it before it changes anything, the optimizer state included (``_opt_state``); if
loading still fails, the callbacks, the optimizer and the split are put back, and so is the
model, loaded last, where its own loading code could fail halfway.

A model sharded by FSDP2 is saved as a directory instead (``_sharded_checkpoint``): its tensors
written by every rank through ``torch.distributed.checkpoint``, the rest (``state_of``) as one
file of this kind; its loading shares the checks and the loading order here (``check_rest``,
``check_model_fits``, ``apply``, ``finish_load``).

The model's state is that of the original module when ``l.model`` is wrapped by
``torch.compile`` or DDP (keys ``bulk.0.weight``, not ``_orig_mod.bulk.0.weight``), so a
checkpoint of a compiled model loads into an uncompiled one and back; ``load`` also accepts
model states saved with those wrappers' prefixes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

import modsel

from . import _files, _opt_state
from ._rng import loader_generators
from ._unwrap import strip_wrapper_prefixes, unwrap
from ._warn import warn
from .data import Data, check_split

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "checkpoint_of",
    "digest_of",
    "finish_rotations",
    "load",
    "read",
    "write",
    "write_rotated",
]

FORMAT = "k1lib.checkpoint"
VERSION = 3  # 2: sealed with a digest of what it holds; 3: the data's split
_COUNTERS = ("epoch", "epochs", "batch", "batches", "progress")
# what torch.load(weights_only=True) reads back (tuple and None: optimizers' param_groups use them)
_LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read, or does not fit the learner loading it."""

    __module__ = "k1lib"  # the public name, in tracebacks and for pickle


# ---- writing -------------------------------------------------------------------------------------


def checkpoint_of(learner: Learner) -> dict[str, Any]:
    """The checkpoint dict of ``learner`` (references to its tensors, not copies)."""
    if learner.model is None:
        raise CheckpointError("Learner.save needs a model: set l.model = ... first")
    opt = learner.opt
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "model": unwrap(learner.model).state_dict(),
        "opt": None if opt is None else {"class": class_name(opt), "state": opt.state_dict()},
        **state_of(learner),
    }
    check_loadable(checkpoint, "checkpoint")
    return checkpoint


def state_of(learner: Learner) -> dict[str, Any]:
    """What a checkpoint holds besides the model's and the optimizer's state: each callback's
    state, the css, the loop counters, the random generators and the data's split (shared with
    ``_sharded_checkpoint``, whose model and optimizer states are written by DCP)."""
    callbacks: dict[str, Any] = {}
    for cb in learner.cbs:
        state = cb.state_dict()
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"callback {cb.name!r}: state_dict() must return a dict, got {type(state).__name__}"
            )
        if state:  # a callback without state adds nothing to the file
            callbacks[cb.name] = {"class": type(cb).__name__, "state": dict(state)}
    return {
        "callbacks": callbacks,
        "css": learner.css,
        "counters": {name: getattr(learner, name) for name in _COUNTERS},
        "rng": _rng_state(learner),
        "data": learner.data.state_dict() if isinstance(learner.data, Data) else {},
    }


def check_loadable(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse, naming where it is."""
    if isinstance(value, Mapping) and type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise CheckpointError(f"{where}: keys must be strings or ints, got {type(key).__name__}")
            check_loadable(item, f"{where}.{key}")
    elif type(value) in (list, tuple, torch.Size):
        for i, item in enumerate(value):
            check_loadable(item, f"{where}[{i}]")
    elif not (isinstance(value, torch.Tensor) or type(value) in _LEAVES):
        # exact types: a float subclass such as numpy.float64 passes isinstance but not the load
        raise CheckpointError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds only "
            "tensors, numbers, strings, None and lists, tuples and dicts of them (it is read with "
            "torch.load(weights_only=True)); make the state_dict() that returns it store plain values"
        )


def write(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``checkpoint``, sealed with its digest, to ``path`` atomically: into a
    temporary file beside it, flushed to disk, then renamed over ``path``. On any failure the
    temporary file is removed and ``path`` is as before. Half-done rotations in the folder are
    finished and temporaries that killed writers left there are removed (``_files``)."""
    target = Path(path)
    check_folder(target)
    return _files.replace(_files.write_temporary(target, _serialiser(checkpoint)), target)


def write_rotated(checkpoint: Mapping[str, Any], slots: Sequence[Path], stem: str) -> Path:
    """Write ``checkpoint`` as the newest of ``slots`` (oldest first, ``{stem}-{i}.pth`` in
    one folder), shifting the others (``Autosave``). The new file is complete on disk before
    any file is renamed; a kill at any point is finished by the next save or load in the
    folder (``_files.rotate``)."""
    check_folder(slots[-1])
    return _files.rotate(slots, _files.write_temporary(slots[-1], _serialiser(checkpoint)), stem)


def check_folder(target: Path) -> None:
    """Refuse a save into a folder that does not exist, naming it."""
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"cannot save to {str(target)!r}: directory {str(target.parent)!r} does not exist"
        )


def _serialiser(checkpoint: Mapping[str, Any]) -> Callable[[IO[bytes]], None]:
    sealed = {**checkpoint, "digest": digest_of(checkpoint)}
    return lambda f: torch.save(sealed, f)


def digest_of(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 of everything in ``checkpoint`` but its ``"digest"``: the structure, each value's
    type and value, each tensor's dtype, shape and bytes. Written at save and checked at load
    on what ``torch.load`` returned, so damage that the zip's own checks miss (a flag in a
    directory record) cannot load wrong values (about 0.5 s a GB)."""
    h = hashlib.sha256()
    todo: list[Any] = [{k: v for k, v in checkpoint.items() if k != "digest"}]
    # a container met again is hashed as a reference to its first visit: pickle keeps which
    # containers are shared, and a list that holds itself (a hostile file) must not loop
    seen: dict[int, int] = {}
    while todo:  # iterative: a deeply nested callback state cannot overflow the stack
        value = todo.pop()
        if isinstance(value, dict | list | tuple):
            if id(value) in seen:
                _put(h, b"@", str(seen[id(value)]).encode())
                continue
            seen[id(value)] = len(seen)
        if isinstance(value, torch.Tensor):
            _put_tensor(h, value, todo)
        elif isinstance(value, dict):
            _put(h, b"{", str(len(value)).encode())
            for key, item in reversed(value.items()):
                todo += [item, _Key(key)]
        elif type(value) in (list, tuple, torch.Size):
            tag = b"S" if type(value) is torch.Size else b"(" if type(value) is tuple else b"["
            _put(h, tag, str(len(value)).encode())
            todo += reversed(value)
        else:
            _put(h, b"=", _leaf_bytes(value.key if isinstance(value, _Key) else value))
    return h.hexdigest()


class _Key:
    """A dict key on the digest's stack: hashed as a leaf even when it is a tuple."""

    __slots__ = ("key",)

    def __init__(self, key: object) -> None:
        self.key = key


def _put(h: Any, tag: bytes, data: bytes) -> None:
    h.update(tag + len(data).to_bytes(8, "little") + data)


def _leaf_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return b"bytes:" + value
    text = value.hex() if type(value) is float else repr(value)  # hex: exact, nan and -0.0 kept
    return f"{type(value).__qualname__}:{text}".encode("utf-8", "surrogatepass")


def _put_tensor(h: Any, tensor: torch.Tensor, todo: list[Any]) -> None:
    """A tensor's dtype, shape and values. Sparse tensors by their parts (a dense copy of a
    hostile file's one-value sparse tensor could take any memory); strided views whose
    elements overlap (expanded) by their storage and strides, for the same reason: save and
    load keep both, so both sides take the same path."""
    t = tensor.detach()
    _put(h, b"T", f"{t.dtype}{tuple(t.shape)}{t.layout}".encode())
    if t.layout == torch.sparse_coo:
        todo += [t._indices(), t._values()]
    elif t.layout in (torch.sparse_csr, torch.sparse_bsr):
        todo += [t.crow_indices(), t.col_indices(), t.values()]
    elif t.layout in (torch.sparse_csc, torch.sparse_bsc):
        todo += [t.ccol_indices(), t.row_indices(), t.values()]
    elif t.layout == torch.strided and not t.is_meta and not t.is_quantized and _overlapping(t):
        _put(h, b"V", f"{t.stride()}{t.storage_offset()}".encode())
        on_cpu = t.untyped_storage().cpu()  # type: ignore[no-untyped-call]
        storage = torch.empty(0, dtype=torch.uint8).set_(on_cpu)
        h.update(storage.numpy())
    else:
        h.update(_tensor_bytes(t))


def _overlapping(t: torch.Tensor) -> bool:
    return t.numel() * t.element_size() > t.untyped_storage().nbytes()


def _tensor_bytes(tensor: torch.Tensor) -> Any:
    t = tensor.detach()
    if t.device.type == "meta":
        return b""
    if t.is_quantized:
        t = t.dequantize()
    flat = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.numel() and flat.stride(0) != 1:  # one element with any stride counts as contiguous
        flat = flat.new_empty(flat.shape).copy_(flat)
    return flat.view(torch.uint8).numpy()  # hashlib reads its buffer: no copy


# ---- reading -------------------------------------------------------------------------------------


def read(
    path: str | os.PathLike[str],
    map_location: torch.device | str | None = None,
    expected: tuple[str, int] = (FORMAT, VERSION),
) -> dict[str, Any]:
    """The checkpoint dict in ``path``, checked to be a k1lib checkpoint of a version this
    k1lib reads and, from version 2 on, to hold what was saved (its digest); every failure is
    a ``CheckpointError`` naming the file. A rotation left half done in the file's folder by
    a killed process is finished first. ``expected``: the format and the newest version to accept
    (a sharded checkpoint's own file, ``_sharded_checkpoint``, has its own)."""
    name = str(path)
    finish_rotations(Path(path).parent)
    if Path(path).is_dir():
        raise CheckpointError(
            f"{name!r} is a directory: a sharded checkpoint (Learner.load reads it; "
            "k1lib._sharded_checkpoint.consolidate makes one file of its model)"
        )
    if not Path(path).is_file():
        hint = ""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            hint = (
                f" (rank {torch.distributed.get_rank()}: with several processes only rank 0 writes "
                "checkpoints; call torch.distributed.barrier() after l.save before loading on the others)"
            )
        raise FileNotFoundError(f"no checkpoint file {name!r}{hint}")
    checkpoint = _torch_load(path, name, map_location)
    form, newest = expected
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != form:
        if isinstance(checkpoint, dict):
            what = f"a dict with keys {sorted(map(str, checkpoint))[:8]}"
        else:
            what = f"a {type(checkpoint).__name__}"
        raise CheckpointError(f"{name!r} is not a k1lib checkpoint: it holds {what}")
    version = checkpoint.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= newest:
        newer = isinstance(version, int) and version > newest
        raise CheckpointError(
            f"{name!r} has checkpoint format version {version!r}; this k1lib reads versions 1 to {newest}"
            + (" (the file was written by a newer k1lib)" if newer else "")
        )
    if version == 1 and form == FORMAT:
        _check_crc(path, name)  # no digest: the zip's CRCs are what there is
    elif checkpoint.get("digest") != _digest_or_none(checkpoint):
        raise CheckpointError(
            f"{name!r} is corrupted: what it holds does not match the digest written when it was saved"
        )
    for key, kind in (("model", dict), ("callbacks", dict), ("css", str), ("counters", dict), ("rng", dict)):
        if not isinstance(checkpoint.get(key), kind):
            raise CheckpointError(f"{name!r} is malformed: {key!r} should be a {kind.__name__}")
    if not isinstance(checkpoint.setdefault("data", {}), dict):  # none before version 3
        raise CheckpointError(f"{name!r} is malformed: 'data' should be a dict")
    return checkpoint


def _digest_or_none(checkpoint: Mapping[str, Any]) -> str | None:
    """The digest of what a file held, or None where a damaged file made it unreadable (a
    tensor whose recorded layout is impossible)."""
    try:
        return digest_of(checkpoint)
    except Exception:
        return None


def finish_rotations(directory: Path) -> None:
    """Finish a rotation that a killed process left half done in ``directory`` (logged; a
    read-only folder is read as it is)."""
    _files.finish(directory)


def _torch_load(path: str | os.PathLike[str], name: str, map_location: Any) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it did not write; they fail below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{name!r} holds a {found.group(1)} object; checkpoints are read with "
                "torch.load(weights_only=True), which loads only tensors, numbers, strings, lists and "
                "dicts, so that a file cannot run code. Load it yourself with weights_only=False only if "
                "you trust where it came from"
            ) from None
        raise CheckpointError(f"{name!r} is not a file written by torch.save (corrupted?)") from None
    except (PermissionError, IsADirectoryError, MemoryError):
        raise
    except Exception as e:
        # a damaged file fails in many ways: a seek past the end (OSError), a missing
        # directory record (RuntimeError), half a pickle (EOFError, KeyError), a bad size ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{name!r} cannot be read: it is truncated or corrupted, or not a checkpoint ({first[:200]})"
        ) from None


def _check_crc(path: str | os.PathLike[str], name: str) -> None:
    """torch.load does not check the CRC32 of each member of the file's zip archive; a flipped
    bit in a tensor would load silently. Check them (about 0.7 s a GB)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # not a zip at all: torch.load says what it is
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (PermissionError, IsADirectoryError, MemoryError):
        raise
    except Exception as e:  # a damaged header: BadZipFile, zlib.error, NotImplementedError, ...
        raise CheckpointError(f"{name!r} cannot be read: it is truncated or corrupted ({e})") from None
    if bad is not None:
        raise CheckpointError(f"{name!r} is corrupted: the checksum of its part {bad!r} does not match")


# ---- loading -------------------------------------------------------------------------------------


def load(learner: Learner, path: str | os.PathLike[str]) -> None:
    """Put the state in ``path`` back into ``learner``, which must be built the same way as
    the learner that saved it (same model architecture, optimizer class, callbacks).

    Everything is checked first; on a mismatch ``CheckpointError`` says what does not fit and
    nothing has changed. Callbacks the checkpoint has state for but the learner lacks are
    skipped with a warning; callbacks of the learner the checkpoint has no state for keep
    theirs. The model's tensors are loaded onto the model's device.

    Afterwards the learner is as the saved one was after its ``run``: ``run(M)`` trains M more
    epochs exactly as the saved learner's next ``run(M)`` would have (``l.epoch`` counts from 0
    in every run; ``l.epoch`` / ``l.epochs`` are the saved run's until then)."""
    name = str(path)
    model = model_to_load(name, learner)
    # on the CPU: load_state_dict copies onto the parameters' device, and callbacks' records
    # (HookModule, HookParam) stay host-side
    checkpoint = read(path, map_location="cpu")
    if not all(isinstance(k, str) for k in checkpoint["model"]):
        raise CheckpointError(f"{name!r} is malformed: its model state has keys that are not strings")
    model_state = _without_wrapper_prefixes(model, checkpoint["model"])
    _check_model(name, model, model_state)
    opt_state = _check_opt(name, learner.opt, model, checkpoint.get("opt"))
    rest = check_rest(name, learner, checkpoint)
    apply(name, learner, model, model_state, opt_state, rest)
    finish_load(name, learner, checkpoint, rest)


def model_to_load(name: str, learner: Learner) -> torch.nn.Module:
    """``learner``'s model (unwrapped), checked to be there with an optimizer of its own."""
    if learner.model is None:
        raise CheckpointError(f"loading {name!r} needs l.model, built as when it was saved: set it first")
    learner.check_optimizer(f"loading {name!r}")  # a stale l.opt: refused before anything changes
    return unwrap(learner.model)


@dataclass
class Rest:
    """What ``check_rest`` found to load besides the model and the optimizer."""

    loads: list[tuple[Any, dict[str, Any]]]  # (callback, its state)
    unknown: list[str]  # callbacks the learner lacks
    counters: dict[str, Any]
    rng: list[tuple[Callable[[Any], Any], Any]]  # (set_state, state)
    split: dict[str, Any] | None
    kept: str  # a warning: the learner keeps its own split


def check_rest(name: str, learner: Learner, checkpoint: Mapping[str, Any]) -> Rest:
    """The callbacks' states, the css, the counters, the generators and the split of
    ``checkpoint`` (as ``read`` returns it), checked to fit ``learner``; nothing is changed."""
    loads, unknown = _check_callbacks(name, learner, checkpoint["callbacks"])
    try:
        modsel.parse(checkpoint["css"])
    except ValueError as e:
        raise CheckpointError(f"{name!r}: its css does not parse: {e}") from None
    counters = _check_counters(name, checkpoint["counters"])
    rng = _check_rng(name, learner, checkpoint["rng"])
    split, kept = _check_split(name, learner.data, checkpoint["data"])
    return Rest(loads, unknown, counters, rng, split, kept)


def finish_load(name: str, learner: Learner, checkpoint: Mapping[str, Any], rest: Rest) -> None:
    """After ``apply``: the css, the counters and the generators (these cannot fail), and the
    warnings."""
    learner.css = checkpoint["css"]
    for key, value in rest.counters.items():
        setattr(learner, key, value)
    for set_state, state in rest.rng:
        set_state(state)
    if rest.unknown:
        warn(
            f"{name!r} has state for callbacks this learner lacks: {', '.join(rest.unknown)} (skipped); "
            "append them to l.cbs before l.load to restore it"
        )
    if rest.kept:
        warn(rest.kept)


def apply(
    name: str,
    learner: Learner,
    model: torch.nn.Module,
    model_state: Mapping[str, Any],
    opt_state: dict[str, Any] | None,
    rest: Rest,
    load_model: Callable[[], Any] | None = None,
) -> None:
    """Load the checked states: callbacks first (theirs is the only load the checks cannot
    vouch for), then the optimizer, the data's split, the model last; on any failure the
    callbacks, the optimizer and the split get their state back (the model: ``_load_model``).
    ``load_model``: how the model loads ``model_state`` (default: ``model.load_state_dict``)."""
    loads, split = rest.loads, rest.split
    before = {cb.name: copy.deepcopy(dict(cb.state_dict())) for cb, _ in loads}
    opt = learner.opt
    # load_state_dict replaces these two objects and leaves the old ones whole
    opt_before = None if opt is None else (opt.state, opt.param_groups)
    data = learner.data
    split_before = data.state_dict() if split is not None else None
    done: list[Any] = []
    try:
        for cb, state in loads:
            try:
                cb.load_state_dict(state)
            except Exception as e:
                with contextlib.suppress(Exception):  # it may have changed part of itself
                    cb.load_state_dict(before[cb.name])
                raise CheckpointError(
                    f"{name!r}: callback {cb.name!r} could not load its state ({type(e).__name__}: {e}); "
                    "nothing was changed"
                ) from e
            done.append(cb)
        if opt is not None and opt_state is not None:
            try:
                opt.load_state_dict(opt_state)
            except Exception as e:  # its __setstate__ converts values (ASGD: float(step))
                raise CheckpointError(
                    f"{name!r}: l.opt could not load its state ({type(e).__name__}: {str(e)[:300]}); "
                    "nothing was changed"
                ) from e
        if split is not None:
            data.load_state_dict({"split": split})  # checked: it fits (only memory can fail)
        _load_model(name, model, model_state, load_model)
    except BaseException:
        for cb in done:
            cb.load_state_dict(before[cb.name])
        if opt is not None and opt_before is not None:
            opt.state, opt.param_groups = opt_before
        if split_before is not None:
            data.load_state_dict(split_before)
        raise


def _load_model(
    name: str, model: torch.nn.Module, state: Mapping[str, Any], load: Callable[[], Any] | None = None
) -> None:
    """``model.load_state_dict(state)`` (or ``load()``), whose keys and shapes were checked.
    Plain torch modules then only copy values, which cannot fail; a module with its own
    loading code (extra state, load hooks) can fail halfway, so for such a model the old
    values are kept on the CPU first and put back if it does."""
    backup = None
    if _custom_loading(model):
        backup = {
            k: v.detach().to("cpu", copy=True)
            for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor)
        }
    try:
        if load is None:
            model.load_state_dict(state)
        else:
            load()
    except Exception as e:
        if backup is not None:
            with torch.no_grad():
                for key, value in model.state_dict().items():
                    if key in backup:
                        value.copy_(backup[key])
        what = "its tensors are as they were" if backup is not None else "it may be partly loaded"
        raise CheckpointError(
            f"{name!r}: l.model could not load its state ({type(e).__name__}: {str(e)[:300]}); {what}"
        ) from e


def _custom_loading(model: torch.nn.Module) -> bool:
    base = torch.nn.Module
    for module in model.modules():
        kind = type(module)
        if module._load_state_dict_pre_hooks or module._load_state_dict_post_hooks:
            return True
        if kind.set_extra_state is not base.set_extra_state:
            return True
        own_load = kind._load_from_state_dict is not base._load_from_state_dict
        if own_load and not kind.__module__.startswith("torch."):
            return True
    return False


def _without_wrapper_prefixes(model: torch.nn.Module, saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """``saved`` with the ``_orig_mod.`` / ``module.`` prefixes of a compiled or DDP model
    removed where that makes it fit ``model`` (the unwrapped module); else as it is."""
    expected = set(model.state_dict())
    if set(saved) == expected:
        return saved
    stripped = strip_wrapper_prefixes(saved, expected)
    return saved if stripped is None else stripped


def _device_of(model: torch.nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _check_model(name: str, model: torch.nn.Module, saved: Mapping[str, Any]) -> None:
    # a damaged or hand-made file: anything else would fail halfway through the load
    odd = [k for k, v in saved.items() if not isinstance(k, str) or (isinstance(v, torch.Tensor) and _odd(v))]
    if odd:
        raise CheckpointError(
            f"{name!r} is malformed: its model state holds {', '.join(map(repr, odd[:8]))}, which "
            "are not names of dense tensors with values (a non-string key, a meta or sparse tensor)"
        )
    specs = {
        k: (v.shape, v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in saved.items()
    }
    check_model_fits(name, model.state_dict(), specs)


def check_model_fits(
    name: str, current: Mapping[str, Any], saved: Mapping[str, tuple[torch.Size, torch.dtype] | str]
) -> None:
    """Refuse a saved model state that does not fit the model's state ``current``: ``saved``
    maps each saved key to its tensor's (shape, dtype), or to the type name of a value that is
    not a tensor (a module's extra state)."""
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    # a module's extra state (get_extra_state) is any value: only tensors have shapes
    tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
    specs = {k: spec for k, spec in saved.items() if isinstance(spec, tuple)}
    mismatched = [
        f"{k}: checkpoint {tuple(specs[k][0]) if k in specs else saved[k]}, model {tuple(v.shape)}"
        for k, v in tensors.items()
        if k in saved and (k not in specs or tuple(specs[k][0]) != tuple(v.shape))
    ]
    # load_state_dict would cast floats into integers (or back) silently: another file, not
    # another precision (float16 into float32 is cast, as torch does)
    kinds = [
        f"{k}: checkpoint {specs[k][1]}, model {v.dtype}"
        for k, v in tensors.items()
        if k in specs and _kind(specs[k][1]) != _kind(v.dtype)
    ]
    if missing or unexpected or mismatched or kinds:
        lines = [f"{name!r} does not fit l.model (nothing was changed):"]
        if missing:
            lines.append(f"  missing in the checkpoint: {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected in the checkpoint: {', '.join(unexpected)}")
        if mismatched:
            lines.append("  shape mismatch:\n" + "\n".join(f"    {m}" for m in mismatched))
        if kinds:
            lines.append("  type mismatch:\n" + "\n".join(f"    {m}" for m in kinds))
        raise CheckpointError("\n".join(lines))


def _odd(tensor: torch.Tensor) -> bool:
    return bool(tensor.is_meta or tensor.layout != torch.strided)


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "integer"


def _check_opt(
    name: str, opt: torch.optim.Optimizer | None, model: torch.nn.Module, saved: Any
) -> dict[str, Any] | None:
    """The optimizer state to load, checked to fit ``opt`` (``_opt_state``)."""
    state = check_opt_entry(name, opt, saved)
    if state is None or opt is None:
        return None
    try:
        return _opt_state.check(opt, model, state)
    except _opt_state.OptStateError as e:
        raise CheckpointError(f"{name!r}: {e} (nothing was changed)") from None


def check_opt_entry(name: str, opt: torch.optim.Optimizer | None, saved: Any) -> dict[str, Any] | None:
    """The saved optimizer's ``state`` (its state_dict), after checking that the checkpoint's
    ``opt`` entry is well formed and of ``opt``'s class (None: the checkpoint has none)."""
    if saved is None:
        return None
    if not (
        isinstance(saved, dict)
        and isinstance(saved.get("class"), str)
        and isinstance(saved.get("state"), dict)
    ):
        raise CheckpointError(f"{name!r} is malformed: 'opt' should be a dict with 'class' and 'state'")
    if opt is None:
        raise CheckpointError(
            f"{name!r} has the state of a {saved['class']} optimizer and l.opt is not set: set l.opt first"
        )
    if saved["class"] != class_name(opt):
        raise CheckpointError(
            f"{name!r} has the state of a {saved['class']} optimizer; l.opt is a {class_name(opt)}: "
            "build l.opt with the class the checkpoint was saved with"
        )
    state: dict[str, Any] = saved["state"]
    return state


def _check_callbacks(
    name: str, learner: Learner, saved: Mapping[str, Any]
) -> tuple[list[tuple[Any, dict[str, Any]]], list[str]]:
    """The (callback, state) pairs to load, and the names the learner lacks."""
    loads: list[tuple[Any, dict[str, Any]]] = []
    unknown: list[str] = []
    for cb_name, entry in saved.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("state"), dict)):
            raise CheckpointError(f"{name!r} is malformed: callback {cb_name!r} has no 'state' dict")
        if cb_name not in learner.cbs:
            unknown.append(str(cb_name))
            continue
        cb = learner.cbs[cb_name]
        if entry.get("class") != type(cb).__name__:
            raise CheckpointError(
                f"{name!r}: callback {cb_name!r} was a {entry.get('class')} when saved; this learner's "
                f"is a {type(cb).__name__}"
            )
        loads.append((cb, entry["state"]))
    return loads, unknown


def _check_split(name: str, data: Any, saved: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The split to put into ``data`` (None: none), and a warning when the file has a split that
    ``data`` cannot take: it was not made by ``Data.fromDataset`` or is of another size (another
    dataset). Loading still goes on then, with the learner's own split: a checkpoint resumed
    on more or other data (fine-tuning) is a thing to do on purpose, and the model and
    optimizer states fit; but its validation samples may be ones the saved run trained on."""
    if saved.get("split") is None:
        return None, ""  # an older file, or data not from fromDataset: the learner's split
    try:
        split = check_split(saved["split"])
    except ValueError as e:
        raise CheckpointError(f"{name!r} is malformed: {e}") from None
    ours = data.state_dict().get("split") if isinstance(data, Data) else None
    theirs = f"{name!r} holds the train/valid split of a Data.fromDataset of {split['samples']} samples"
    if ours is None:
        why = "l.data was not made by Data.fromDataset (or its loaders were replaced)"
    elif ours["samples"] != split["samples"]:
        why = f"l.data's dataset has {ours['samples']} samples: another dataset"
    else:
        return split, ""
    return None, (
        f"{theirs}, but {why}, so l.data keeps its own split: the resumed run may validate on "
        "samples the saved run trained on. Build l.data from the same dataset to resume on the "
        "saved split"
    )


def _check_counters(name: str, saved: Mapping[str, Any]) -> dict[str, Any]:
    counters = {}
    for key in _COUNTERS:
        value = saved.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CheckpointError(f"{name!r} is malformed: counter {key!r} is {value!r}, not a number")
        counters[key] = value
    return counters


def _rng_state(learner: Learner) -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    # CUDA's generators only where CUDA is already in use: saving must not initialise it
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        rng["cuda"] = torch.cuda.get_rng_state_all()
    loaders = {}
    for split in ("train", "valid"):
        states = {place: g.get_state() for place, g in loader_generators(getattr(learner.data, split, None))}
        if states:
            loaders[split] = states
    rng["loaders"] = loaders
    return rng


def _byte_state(name: str, where: str, state: Any, like: torch.Tensor, cpu: bool = True) -> torch.Tensor:
    """``state`` as a CPU byte tensor, checked to fit a generator like the one that gave ``like``
    (a CPU generator's state is tried on a scratch generator: it must be a valid mt19937 state)."""
    problem = CheckpointError(
        f"{name!r} is malformed: the generator state {where} does not fit this generator"
    )
    if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.shape == like.shape):
        raise problem
    on_cpu: torch.Tensor = state.cpu()
    if cpu:
        try:
            torch.Generator().set_state(on_cpu)
        except RuntimeError:
            raise problem from None
    return on_cpu


def _check_rng(
    name: str, learner: Learner, saved: Mapping[str, Any]
) -> list[tuple[Callable[[Any], Any], Any]]:
    """The generator states to set, checked; CUDA states only where CUDA has as many devices,
    loader states only where the learner's loaders have a generator in the same place."""
    todo: list[tuple[Callable[[Any], Any], Any]] = []
    if "torch" in saved:
        todo.append((torch.set_rng_state, _byte_state(name, "torch", saved["torch"], torch.get_rng_state())))
    cuda = saved.get("cuda")
    if isinstance(cuda, list) and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        states = [
            _byte_state(name, f"cuda[{i}]", s, torch.cuda.get_rng_state(i), cpu=False)
            for i, s in enumerate(cuda)
        ]
        todo.append((torch.cuda.set_rng_state_all, states))
    loaders = saved.get("loaders", {})
    for split, places in loaders.items() if isinstance(loaders, dict) else ():
        ours = dict(loader_generators(getattr(learner.data, split, None)))
        for place, state in places.items() if isinstance(places, dict) else ():
            if place in ours:
                generator = ours[place]
                cpu = generator.device.type == "cpu"
                state = _byte_state(name, f"{split}.{place}", state, generator.get_state(), cpu)
                todo.append((generator.set_state, state))
    return todo
