"""Sharded checkpoints: a directory that every rank of a sharded (FSDP2) model writes its part of.

A model sharded by ``fully_shard`` holds on each rank only its shards (``DTensor``), so no one
process can write the single file of ``_checkpoint``. Here the model's and the optimizer's
tensors are written by ``torch.distributed.checkpoint`` (DCP): each rank writes its own shards,
and a checkpoint saved by N ranks loads on M ranks (DCP reshards) or in one process into the
plain model (no process group). The rest of the checkpoint (the callbacks' state, the css, the
counters, the generators, the data's split, the optimizer's hyperparameters) is one file of
``_checkpoint``'s kind, sealed with its digest and written by rank 0. The directory::

    ck/
      .metadata             DCP's index: every tensor's shape, dtype and chunks
      __0_0.distcp ...      DCP's data, one file per rank that saved
      k1lib-state.pth       the rest (``_checkpoint.write``; read with weights_only=True)
      k1lib-manifest.json   written last: the size and SHA-256 of every other file

Saving is atomic as a whole. Every rank writes into a temporary directory beside the target
(``.ck.k1-{host}-{pid}-{token}.tmp``, named by rank 0); when all are done (DCP's save ends
agreed), the ranks hash the files (each a share) and rank 0 writes the manifest, flushed to
disk, then renames the directory into place (``_files.replace_tree``). A directory cannot be
renamed over another: an existing checkpoint is first renamed aside, in a journalled pair of
renames, so at every instant ``ck`` is the old complete checkpoint, the new complete one, or
absent while the journal says how to put the new one in, which the next save or load in the
folder does before anything else. A kill before the rename leaves ``ck`` as it was and the
temporary directory, which the next save in the folder removes once its writer is gone (as
temporary files are, ``_files.clean``). A directory without the manifest, or whose files do
not match it, is never loaded.

Loading checks everything before it changes anything: the manifest (a missing, truncated or
changed file is a ``CheckpointError`` naming it; with several ranks each hashes a share and
they agree), the rest file, the model's keys, shapes and dtypes against DCP's index, the
optimizer's class and parameters, the callbacks, the split. Then DCP reads the tensors into new
tensors laid out as the model's (shards where the model is sharded), the optimizer's state is
checked (``_opt_state``), and the learner loads as from a file (``_checkpoint.apply``: on a
failure the callbacks, the optimizer and the split are put back, and the model too where it has
its own loading code, as a sharded one has); the ranks agree after the model, so a failure on
one rank puts every rank back. DCP's index is a pickle: it is read with an
unpickler that builds only DCP's own metadata classes, and DCP's data files hold only tensors
(read with ``torch.load(weights_only=True)``), so loading never runs code from the directory.

``save`` and (for a sharded model) ``load`` are collectives: every rank calls them. ``load``
into a model that is not sharded reads on its own, in any process. ``consolidate`` makes of a
directory the single file of the model's full state dict, for inference (no process group).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from . import _checkpoint, _files, _opt_state
from ._checkpoint import CheckpointError
from ._distributed import initialized
from ._fsdp import reshard
from ._unwrap import unwrap

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = [
    "FORMAT",
    "MANIFEST",
    "STATE",
    "VERSION",
    "consolidate",
    "is_checkpoint",
    "load",
    "load_weights",
    "save",
    "save_rotated",
]

FORMAT = "k1lib.sharded-checkpoint"
VERSION = 1
MANIFEST = "k1lib-manifest.json"
STATE = "k1lib-state.pth"
_MANIFEST_MAX_BYTES = 16 << 20
_T = TypeVar("_T")
# the keys of the tensors in DCP's files: the model's under "model.", the optimizer's under "optim."
_MODEL, _OPTIM = "model.", "optim."


# ---- agreement between ranks ---------------------------------------------------------------------


def _agree(step: Callable[[], _T], collective: bool, what: str) -> _T:
    """``step()`` on this rank; with ``collective``, every rank then learns whether any rank
    failed, and all raise: this rank its own error, the others a ``CheckpointError`` naming the
    rank and its error. So no rank goes on into a collective that another left."""
    try:
        value = step()
        error: BaseException | None = None
    except Exception as e:
        error = e
    if collective:
        import torch.distributed as dist

        outcomes: list[Any] = [None] * dist.get_world_size()
        mine = (
            None if error is None else (isinstance(error, CheckpointError), type(error).__name__, str(error))
        )
        dist.all_gather_object(outcomes, mine)
        if error is None:
            failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
            if failed:
                rank, (ours, kind, message) = failed[0]
                if ours:  # the same message on every rank
                    raise CheckpointError(f"{message} (found by rank {rank})")
                raise CheckpointError(f"{what}: rank {rank} failed with {kind}: {message}")
    if error is not None:
        raise error
    return value


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if initialized() else 0


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if initialized() else 1


@contextlib.contextmanager
def _dcp(what: str) -> Iterator[None]:
    """Around a DCP save or load: its failures (agreed: every rank raises them) as a
    ``CheckpointError`` naming the rank that failed and why. DCP's own exception is a
    ``BaseException``, which no ``except Exception`` would see. And DCP warns that it assumes
    one process when no group is initialised: so do we."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
            yield
    except CheckpointException as e:
        rank, (error, _) = next(iter(sorted(e.failures.items())))
        if isinstance(error, CheckpointError):
            raise CheckpointError(str(error)) from e
        raise CheckpointError(
            f"{what}: rank {rank} failed in DCP with {type(error).__name__}: {error}"
        ) from e
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{what}: DCP failed with {type(e).__name__}: {str(e)[:300]}") from e


# ---- saving --------------------------------------------------------------------------------------


def save(learner: Learner, path: str | os.PathLike[str]) -> Path:
    """Write ``learner``'s checkpoint as the directory ``path`` (replacing a checkpoint there).
    With a process group every rank must call it (it is a collective); in one process it
    writes alone. Returns ``path``."""
    target = Path(path)
    return _save(learner, target, lambda temporary: _files.replace_tree(temporary, target))


def save_rotated(learner: Learner, slots: Sequence[Path], stem: str) -> Path:
    """Write ``learner``'s checkpoint as the newest of ``slots`` (``Autosave``'s rotation: oldest
    first, ``{stem}-{i}.pth``), shifting the others and dropping the oldest (``_files.rotate``);
    a collective like ``save``."""
    return _save(learner, slots[-1], lambda temporary: _files.rotate(slots, temporary, stem))


def _save(learner: Learner, target: Path, put: Callable[[Path], Path]) -> Path:
    name = str(target)
    collective = initialized()
    rank = _rank()
    reshard(learner.model)  # after validation FSDP2 keeps the root unit gathered: its shards again
    pieces = _agree(lambda: _pieces(learner, name), collective, f"saving {name!r}")
    made: list[Path] = []  # rank 0's temporary directory, until it is handed to ``put``

    def make() -> str:
        """Rank 0: the temporary directory, with the rest file in it."""
        if rank != 0:
            return ""
        _check_target(target)
        made.append(_files.temporary_directory(target))
        _checkpoint.write(pieces["rest"], made[0] / STATE)
        return made[0].name

    try:
        temporary = target.parent / _broadcast(_agree(make, collective, f"saving {name!r}"), collective)
        _write(name, pieces["tensors"], temporary)  # DCP agrees on its failures itself
        digests = _agree(lambda: _digests(temporary, rank, _world()), collective, f"saving {name!r}")
        whole = _gather(digests, collective)

        def seal() -> Path:
            if rank == 0:
                _write_manifest(temporary, whole)
                made.clear()  # from here on ``put`` renames it in, or removes it, or a journal needs it
                return put(temporary)
            return target

        return _agree(seal, collective, f"saving {name!r}")
    finally:
        for directory in made:  # rank 0, failed before ``put``: removed
            _files.discard(directory)


def _check_target(target: Path) -> None:
    """Refuse a save that would replace what is not a checkpoint (a folder of other files)."""
    _checkpoint.check_folder(target)
    if target.is_dir() and not target.is_symlink():
        if (target / MANIFEST).exists() or not any(target.iterdir()):
            return
        raise CheckpointError(
            f"cannot save to {str(target)!r}: it is a directory that is not a k1lib sharded checkpoint "
            f"(no {MANIFEST}); it is left as it is: remove it or save elsewhere"
        )


def _pieces(learner: Learner, name: str) -> dict[str, Any]:
    """The tensors for DCP (flat: ``model.{fqn}``, ``optim.{fqn}.{key}``) and the rest file's
    dict. The model's and the optimizer's state come from DCP's ``get_state_dict`` (the
    original parameter names; ``fully_shard`` keeps them); an optimizer without state (no step
    yet) is not passed to it, as it would take a step with zero gradients to make one."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if learner.model is None:
        raise CheckpointError("Learner.save needs a model: set l.model = ... first")
    learner.check_optimizer(f"saving {name!r}")
    model, opt = unwrap(learner.model), learner.opt
    opt_state: Any = None
    if opt is not None and opt.state:
        model_state, opt_state = get_state_dict(model, opt)
    else:
        model_state = get_model_state_dict(model)
    if opt is not None and opt_state is None:
        opt_state = {"state": {}, "param_groups": _named_groups(model, opt)}
    tensors: dict[str, torch.Tensor] = {}
    plain_model: dict[str, Any] = {}
    for key, value in model_state.items():
        if isinstance(value, torch.Tensor):
            tensors[_MODEL + key] = value
        else:
            plain_model[key] = value  # a module's extra state
    opt_entry = None
    opt_tensors: dict[str, list[str]] = {}
    if opt is not None and opt_state is not None:
        per_param: dict[str, dict[str, Any]] = {}
        for fqn, entry in opt_state["state"].items():
            per_param[fqn] = {}
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{_OPTIM}{fqn}.{key}"] = value
                    opt_tensors.setdefault(fqn, []).append(key)
                else:
                    per_param[fqn][key] = value
        groups = [dict(group) for group in opt_state["param_groups"]]
        opt_entry = {
            "class": _checkpoint.class_name(opt),
            "state": {"state": per_param, "param_groups": groups},
        }
    rest = {
        "format": FORMAT,
        "version": VERSION,
        "model": plain_model,
        "model_tensors": [k for k, v in model_state.items() if isinstance(v, torch.Tensor)],
        "opt": opt_entry,
        "opt_tensors": opt_tensors,
        **_checkpoint.state_of(learner),
    }
    _checkpoint.check_loadable(rest, "checkpoint")
    return {"tensors": tensors, "rest": rest}


def _named_groups(model: nn.Module, opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """``opt``'s param_groups with each parameter named as ``get_optimizer_state_dict`` names it."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
        for g in opt.param_groups
    ]


def _write(name: str, tensors: dict[str, torch.Tensor], temporary: Path) -> None:
    """Every rank: its shards (and rank 0 DCP's index), each file flushed to disk."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    with _dcp(f"saving {name!r}"):
        dcp_save(tensors, storage_writer=FileSystemWriter(temporary, sync_files=True))


def _broadcast(value: str, collective: bool) -> str:
    if not collective:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _gather(mine: dict[str, Any], collective: bool) -> dict[str, Any]:
    if not collective:
        return mine
    import torch.distributed as dist

    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {k: v for part in everyone for k, v in part.items()}


def _digests(directory: Path, rank: int, world: int) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of this rank's share of the files in ``directory`` (but the manifest)."""
    files = sorted(p.name for p in directory.iterdir() if p.name != MANIFEST)
    return {f: _hash(directory / f) for f in files[rank::world]}


def _hash(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def _write_manifest(directory: Path, files: dict[str, Any]) -> None:
    body = {"format": FORMAT, "version": VERSION, "files": dict(sorted(files.items()))}
    content = json.dumps({**body, "digest": _manifest_digest(body)}, indent=1).encode()
    # flushes the directory after: every file's name in it is on disk too
    _files.write_bytes(directory / MANIFEST, content)


def _manifest_digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---- reading -------------------------------------------------------------------------------------


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory: a sharded checkpoint (or what should be one; ``load``
    says what is wrong with it), so ``Learner.load`` reads it here. A replacement of ``path``
    that a killed save left half done is finished first, so a checkpoint absent for that
    reason is found."""
    _files.finish(Path(path).parent)
    return Path(path).is_dir()


def _verify(path: Path, collective: bool) -> dict[str, Any]:
    """The manifest of ``path``, with every file it lists checked against it (with several
    ranks, each checks a share and they agree); a ``CheckpointError`` naming what is wrong."""
    name = str(path)
    # a replacement or rotation a killed save left half done is finished first (by one rank)
    first = _rank() == 0 or not collective
    _agree(lambda: _files.finish(path.parent) if first else None, collective, f"loading {name!r}")
    manifest = _agree(lambda: _read_manifest(path), collective, f"loading {name!r}")
    files = sorted(manifest["files"])
    share = files[_rank() :: _world()] if collective else files

    def check() -> None:
        for f in share:
            _check_file(path, f, manifest["files"][f])

    _agree(check, collective, f"loading {name!r}")
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    name = str(path)
    if not path.exists():
        raise FileNotFoundError(f"no sharded checkpoint {name!r}")
    if not path.is_dir():
        raise CheckpointError(f"{name!r} is not a directory: not a sharded checkpoint")
    where = path / MANIFEST
    try:
        with open(where, "rb") as f:
            raw = f.read(_MANIFEST_MAX_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointError(
            f"{name!r} has no {MANIFEST}: it is not a complete k1lib sharded checkpoint (a save that "
            "did not finish, or a directory written by something else); it is not loaded"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{str(where)!r} cannot be read ({type(e).__name__}: {e.strerror})") from None
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError):
        manifest = None
    body = {k: v for k, v in manifest.items() if k != "digest"} if isinstance(manifest, dict) else {}
    if not isinstance(manifest, dict) or manifest.get("digest") != _manifest_digest(body):
        raise CheckpointError(f"{str(where)!r} is corrupted: it does not match its own digest")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(where)!r} is not a k1lib sharded checkpoint's manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(
            f"{name!r} has sharded checkpoint format version {version!r}; this k1lib reads versions 1 "
            f"to {VERSION}"
        )
    files = manifest.get("files")
    if not (
        isinstance(files, dict)
        and STATE in files
        and ".metadata" in files
        and all(
            isinstance(f, str) and f and "/" not in f and "\\" not in f and f not in (".", "..")
            for f in files
        )
    ):
        raise CheckpointError(
            f"{str(where)!r} is malformed: it should list {STATE}, .metadata and the data files"
        )
    return manifest


def _check_file(path: Path, f: str, expected: Any) -> None:
    where = str(path / f)
    if not (isinstance(expected, dict) and isinstance(expected.get("sha256"), str)):
        raise CheckpointError(f"{str(path / MANIFEST)!r} is malformed: its entry for {f!r}")
    try:
        found = _hash(path / f)
    except FileNotFoundError:
        raise CheckpointError(
            f"{where!r} is missing: the sharded checkpoint {str(path)!r} is incomplete"
        ) from None
    except OSError as e:  # a directory where a file should be, no permission, ...
        raise CheckpointError(f"{where!r} cannot be read ({type(e).__name__}: {e.strerror})") from None
    if found["bytes"] != expected.get("bytes"):
        raise CheckpointError(
            f"{where!r} is truncated or corrupted: {found['bytes']} bytes, {expected.get('bytes')} when saved"
        )
    if found["sha256"] != expected["sha256"]:
        raise CheckpointError(
            f"{where!r} is corrupted: its SHA-256 does not match the one written when it was saved"
        )


# DCP's index is a pickle of these classes only
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "pathlib._local": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_CLASSES.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _reader(path: Path) -> Any:
    """DCP's reader of ``path`` whose index is unpickled with only DCP's metadata classes."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            where = path / (".metadata" if rank is None else f"__{rank}.metadata")
            metadata = _read_metadata(where)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(path)


def _read_metadata(where: Path) -> Any:
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(where, "rb") as f:
            metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{str(where)!r} holds a pickled {e}, which DCP's index never holds; it is not unpickled"
        ) from None
    except (OSError, MemoryError):
        raise
    except Exception as e:
        raise CheckpointError(f"{str(where)!r} cannot be read: it is truncated or corrupted ({e})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{str(where)!r} is not DCP's index of a checkpoint")
    return metadata


def _saved_tensors(name: str, metadata: Any, keys: list[str]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """(shape, dtype) of each of ``keys`` in DCP's index: all tensors (a hand-made directory
    with a key missing or stored as pickled bytes is refused)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    found = {}
    for key in keys:
        entry = metadata.state_dict_metadata.get(key)
        if not isinstance(entry, TensorStorageMetadata):
            what = "missing" if entry is None else "not a tensor"
            raise CheckpointError(f"{name!r} is malformed: {key!r} is {what} in its DCP index (.metadata)")
        found[key] = (torch.Size(entry.size), entry.properties.dtype)
    return found


def _read_rest(path: Path, collective: bool) -> dict[str, Any]:
    name = str(path)

    def read() -> dict[str, Any]:
        rest = _checkpoint.read(path / STATE, map_location="cpu", expected=(FORMAT, VERSION))
        ok = (
            isinstance(rest.get("model_tensors"), list)
            and all(isinstance(k, str) for k in rest["model_tensors"])
            and isinstance(rest.get("opt_tensors"), dict)
            and all(
                isinstance(f, str) and isinstance(ks, list) and all(isinstance(k, str) for k in ks)
                for f, ks in rest["opt_tensors"].items()
            )
            and all(isinstance(k, str) for k in rest["model"])
        )
        if not ok:
            raise CheckpointError(f"{str(path / STATE)!r} is malformed: its lists of DCP's tensors")
        return rest

    return _agree(read, collective, f"loading {name!r}")


# ---- loading -------------------------------------------------------------------------------------


def load(learner: Learner, path: str | os.PathLike[str]) -> None:
    """Put the checkpoint in the directory ``path`` back into ``learner``, built as the one
    that saved it; with a sharded model, on any number of ranks (every rank calls it), else in
    this process alone (a plain model: a resume in one process). Everything is checked first:
    on a mismatch or a damaged file, ``CheckpointError`` and nothing has changed."""
    from ._fsdp import is_sharded

    directory = Path(path)
    name = str(directory)
    collective = is_sharded(learner.model) and initialized()
    model = _agree(lambda: _checkpoint.model_to_load(name, learner), collective, f"loading {name!r}")
    _verify(directory, collective)
    rest = _read_rest(directory, collective)
    metadata = _agree(lambda: _read_metadata(directory / ".metadata"), collective, f"loading {name!r}")

    def check() -> tuple[dict[str, Any], list[str], _checkpoint.Rest]:
        targets = _model_targets(name, model, rest, metadata)
        fqns = _check_opt_names(name, learner.opt, model, rest.get("opt"))
        targets.update(_opt_targets(name, model, fqns, rest, metadata))
        return targets, fqns, _checkpoint.check_rest(name, learner, rest)

    targets, fqns, others = _agree(check, collective, f"loading {name!r}")
    _dcp_load(name, directory, targets, collective)

    def states() -> tuple[dict[str, Any], dict[str, Any] | None]:
        model_state = {**rest["model"], **{k: targets[_MODEL + k] for k in rest["model_tensors"]}}
        return model_state, _opt_state_of(name, learner.opt, model, rest, fqns, targets)

    model_state, opt_state = _agree(states, collective, f"loading {name!r}")

    reached: list[bool] = []

    def load_model() -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, model_state)
        reached.append(True)
        # the last step of ``apply`` on every rank: where another rank failed to load, this
        # raises, and ``apply`` puts back what this rank loaded (the model too: it keeps a copy
        # where the model has its own loading code, as a sharded one has)
        _agree(lambda: None, collective, f"loading {name!r}")

    try:
        _checkpoint.apply(name, learner, model, model_state, opt_state, others, load_model)
    except Exception as e:
        if collective and not reached:  # the other ranks wait in load_model's agreement
            failure = e
            _agree(lambda: _raise(failure), collective, f"loading {name!r}")
        raise
    _checkpoint.finish_load(name, learner, rest, others)


def _raise(error: Exception) -> None:
    raise error


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load only the model's weights from the sharded checkpoint ``path`` into ``model``
    (``BestCheckpoint``'s ``restoreBest``); checked as ``load`` checks them, and a collective
    when ``model`` is sharded."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    from ._fsdp import is_sharded

    directory = Path(path)
    name = str(directory)
    collective = is_sharded(model) and initialized()
    model = unwrap(model)
    _verify(directory, collective)
    rest = _read_rest(directory, collective)
    metadata = _agree(lambda: _read_metadata(directory / ".metadata"), collective, f"loading {name!r}")
    targets = _agree(lambda: _model_targets(name, model, rest, metadata), collective, f"loading {name!r}")
    _dcp_load(name, directory, targets, collective)
    set_model_state_dict(model, {**rest["model"], **{k: targets[_MODEL + k] for k in rest["model_tensors"]}})


def _model_targets(name: str, model: nn.Module, rest: Mapping[str, Any], metadata: Any) -> dict[str, Any]:
    """New tensors laid out as the model's (shards where it is sharded) for DCP to read the
    model's tensors into, after checking the saved keys, shapes and dtypes against the model."""
    saved = _saved_tensors(name, metadata, [_MODEL + k for k in rest["model_tensors"]])
    specs: dict[str, tuple[torch.Size, torch.dtype] | str] = {k[len(_MODEL) :]: v for k, v in saved.items()}
    specs.update({k: type(v).__name__ for k, v in rest["model"].items()})
    current = model.state_dict()
    _checkpoint.check_model_fits(name, current, specs)
    return {_MODEL + k: torch.empty_like(current[k]) for k in rest["model_tensors"]}


def _check_opt_names(name: str, opt: torch.optim.Optimizer | None, model: nn.Module, saved: Any) -> list[str]:
    """The names of ``opt``'s parameters in order, checked to be those the checkpoint's
    optimizer had, group by group."""
    state = _checkpoint.check_opt_entry(name, opt, saved)
    if state is None or opt is None:
        return []
    groups = state.get("param_groups")
    if not (
        isinstance(groups, list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    ):
        raise CheckpointError(f"{name!r} is malformed: the optimizer's param_groups")
    ours = _named_groups(model, opt)
    theirs = [g["params"] for g in groups]
    if [g["params"] for g in ours] != theirs:
        raise CheckpointError(
            f"{name!r}: the optimizer was saved for the parameters {theirs}; l.opt's groups hold "
            f"{[g['params'] for g in ours]} (nothing was changed)"
        )
    per_param = state.get("state")
    if not (isinstance(per_param, dict) and all(isinstance(v, dict) for v in per_param.values())):
        raise CheckpointError(f"{name!r} is malformed: the optimizer's state")
    return [n for g in ours for n in g["params"]]


def _opt_targets(
    name: str, model: nn.Module, fqns: list[str], rest: Mapping[str, Any], metadata: Any
) -> dict[str, Any]:
    """New tensors for the optimizer's saved tensors: laid out as their parameter (its shards)
    where they have its shape, plain (a step count) where not."""
    params = dict(model.named_parameters())
    targets: dict[str, Any] = {}
    for fqn, keys in rest["opt_tensors"].items():
        if fqn not in fqns:
            raise CheckpointError(
                f"{name!r} is malformed: optimizer state for {fqn!r}, which it does not optimize"
            )
        saved = _saved_tensors(name, metadata, [f"{_OPTIM}{fqn}.{k}" for k in keys])
        for key, (shape, dtype) in saved.items():
            targets[key] = _like(params[fqn], shape, dtype)
    return targets


def _like(param: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor) and param.shape == shape:
        import torch.distributed.tensor as dt

        return dt.empty(shape, dtype=dtype, device_mesh=param.device_mesh, placements=param.placements)
    return torch.empty(shape, dtype=dtype, device=param.device)


def _dcp_load(name: str, directory: Path, targets: dict[str, Any], collective: bool) -> None:
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    with _dcp(f"loading {name!r} (nothing was changed)"):
        dcp_load(targets, storage_reader=_reader(directory), no_dist=not collective)


def _opt_state_of(
    name: str,
    opt: torch.optim.Optimizer | None,
    model: nn.Module,
    rest: Mapping[str, Any],
    fqns: list[str],
    targets: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The optimizer's state_dict (parameters by index, as ``opt.state_dict`` has them), with
    the tensors DCP read, checked to fit ``opt`` (``_opt_state``)."""
    if opt is None or rest.get("opt") is None:
        return None
    saved = rest["opt"]["state"]
    index = {fqn: i for i, fqn in enumerate(fqns)}
    per_param: dict[int, dict[str, Any]] = {}
    for fqn in [*saved["state"], *rest["opt_tensors"]]:
        if fqn not in index:
            raise CheckpointError(
                f"{name!r} is malformed: optimizer state for {fqn!r}, which it does not optimize"
            )
        entry = per_param.setdefault(index[fqn], {})
        entry.update(saved["state"].get(fqn, {}))
        entry.update({k: targets[f"{_OPTIM}{fqn}.{k}"] for k in rest["opt_tensors"].get(fqn, [])})
    groups, start = [], 0
    for group in saved["param_groups"]:
        count = len(group["params"])
        groups.append({**group, "params": list(range(start, start + count))})
        start += count
    try:
        return _opt_state.check(opt, model, {"state": per_param, "param_groups": groups})
    except _opt_state.OptStateError as e:
        raise CheckpointError(f"{name!r}: {e} (nothing was changed)") from None


# ---- one file of the model -----------------------------------------------------------------------


def consolidate(path: str | os.PathLike[str], out_file: str | os.PathLike[str]) -> Path:
    """Write the model's full state dict in the sharded checkpoint ``path`` as one file
    ``out_file`` (``torch.save`` of ``{name: tensor}``, atomically), for a plain model:
    ``model.load_state_dict(torch.load(out_file))``. Needs no process group; the whole model
    is in memory once. The checkpoint is checked against its manifest first."""
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    directory, target = Path(path), Path(out_file)
    name = str(directory)
    _verify(directory, False)
    rest = _read_rest(directory, False)
    metadata = _read_metadata(directory / ".metadata")
    saved = _saved_tensors(name, metadata, [_MODEL + k for k in rest["model_tensors"]])
    targets: dict[str, Any] = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in saved.items()}
    with _dcp(f"consolidating {name!r}"):
        dcp_load(targets, storage_reader=_reader(directory), no_dist=True)
    state = {k: targets[_MODEL + k] for k in rest["model_tensors"]}
    state.update(rest["model"])
    _checkpoint.check_folder(target)
    return _files.replace(_files.write_temporary(target, lambda f: torch.save(state, f)), target)
