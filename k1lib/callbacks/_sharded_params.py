"""``ShardedParamCapture``: HookParam's statistics (mean, std, min, max) of parameters that
FSDP2 (``fully_shard``) split across ranks. Each rank holds a ``DTensor`` whose local tensor is a
shard of the parameter (``Shard(0)``: rows, possibly uneven, possibly none), yet the record holds
the statistics of the whole parameter, the same on every rank.

- Every batch (``end_batch``), on the device and with no host sync, each rank reduces its
  shards as ``ParamCapture`` reduces whole parameters (``_stats.Reducer``: mean, std in two
  passes, min, max, and the mean's residual: the mean of ``x - mean``, what the float32 mean
  missed) into a preallocated buffer of its own (``Rows``). With the shard's element count n
  (fixed), such a row is the shard's partial statistics: n, mean (``mean + residual``, in
  float64), ``M2 = std² (n - 1)`` (the squared deviations from the shard's own mean), min, max;
  an empty shard counts for nothing. Without the residual, a shard mean near 500 rounded to
  float32 (off by up to 3e-5) would spoil a std of 0.01 by a few tenths of a percent when the
  shards are put together; with it they come out as exact as the unsharded statistics.
- ``combine`` (once an epoch: HookParam's ``endEpoch`` and ``endRun``, the end of a
  ``k1lib.watch`` block; every rank of the parameters' meshes must call it) exchanges the rows
  of every parameter and batch across the ranks of each mesh in one ``all_gather`` (after a
  one-number ``all_reduce`` of the row counts: an all_gather takes equal sizes) and puts them
  together in float64 with Chan's parallel formulas: ``N = Σ n_r``, ``mean = Σ n_r mean_r / N``,
  ``M2 = Σ (M2_r + n_r (mean_r - mean)²)``, ``std = sqrt(M2 / (N - 1))`` (unbiased, as ``_stats``
  gives a whole tensor's), the least min and the greatest max. Each ``M2_r`` was taken around
  its shard's own mean, so constant weights and large offsets keep an exact std (the one-pass
  sum of squares that ``_stats`` rejects would not). The rows go into the record on the device;
  the caller's ``flush`` brings them to the host.
- Rows are matched across ranks by their key (HookParam: the batch's number). A batch that some
  rank did not record (another callback raised in its ``endBatch`` on that rank alone) has a
  row on every rank, NaN for the sharded parameters (and for the others where not recorded).
- Reading a record (``data``, repr, slices, ``state_dict``) never makes a collective, so one
  rank may read alone; mid-epoch it shows the rows up to the last ``combine``.
- A ``Replicate`` DTensor is its local tensor, a plain parameter is read as ``ParamCapture``
  reads it. A parameter sharded on two mesh dimensions (FSDP with tensor parallelism), or
  ``Partial``, is refused: leave it out of the css's HookParam selection.

Memory: for a moment, ``combine`` holds every rank's rows of the epoch on the device:
``world x batches x params x 20`` bytes per mesh (five float32 a row).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from ._param_capture import ParamCapture
from ._param_record import ParamRecord
from ._rows import Rows
from ._stats import RESIDUALS, STATS, Reducer

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["ShardedParamCapture", "combine_shards", "param_capture", "sharded_names"]


def _dtensor() -> type | None:
    """``DTensor`` when torch's module for it was imported (no DTensor exists before): checking
    costs no import in a process that never shards."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def sharded_names(params: list[tuple[str, nn.Parameter]]) -> list[str]:
    """The names of the parameters that are ``DTensor``s (sharded or replicated across ranks)."""
    kind = _dtensor()
    return [] if kind is None else [name for name, p in params if isinstance(p, kind)]


def param_capture(params: list[tuple[str, nn.Parameter]], record: ParamRecord) -> ParamCapture:
    """The capture of ``params`` into ``record``: a ``ShardedParamCapture`` when one of them is a
    ``DTensor``, else a plain ``ParamCapture``."""
    if sharded_names(params):
        return ShardedParamCapture(params, record)
    return ParamCapture(params, record)


class _Mesh(NamedTuple):
    """The ranks some parameters are sharded across: their process group, the device its
    collectives take, and the parameters' positions in the capture."""

    group: ProcessGroup
    device: torch.device
    indices: list[int]


_WIDTH = len(STATS) + 1  # a shard's row: mean, std, min, max, residual


def _meshes(params: list[tuple[str, nn.Parameter]]) -> list[_Mesh]:
    """The process groups the DTensor parameters are sharded across, in parameter order (the
    same on every rank: the collectives pair up), each with its parameters."""
    kind = _dtensor()
    found: dict[str, _Mesh] = {}
    for i, (name, param) in enumerate(params):
        if kind is None or not isinstance(param, kind):
            continue
        p: Any = param  # a DTensor
        placements = tuple(p.placements)
        dims = [d for d, placement in enumerate(placements) if placement.is_shard()]
        if len(dims) > 1 or any(placement.is_partial() for placement in placements):
            raise NotImplementedError(
                f"HookParam: parameter {name!r} is a DTensor placed {placements} on "
                f"{p.device_mesh}; only parameters sharded on one mesh dimension (fully_shard's "
                "Shard(0), HSDP) or replicated are supported: leave its module out of the css's "
                "HookParam selection"
            )
        if not dims:
            continue  # replicated: its local tensor is the whole parameter
        mesh = p.device_mesh
        group = mesh.get_group(dims[0])
        name = group.group_name
        if name not in found:
            found[name] = _Mesh(group, torch.device(mesh.device_type), [])
        found[name].indices.append(i)
    return list(found.values())


def _local(p: nn.Parameter, kind: type | None) -> Tensor:
    """What this rank holds of ``p``: a DTensor's local tensor, else ``p`` (sharing storage, not
    a Parameter: cheaper to read)."""
    with torch.no_grad():  # to_local then returns the local tensor (a view), no autograd node
        return p.to_local() if kind is not None and isinstance(p, kind) else p.detach()  # type: ignore[attr-defined]


class ShardedParamCapture(ParamCapture):
    """Statistics of ``params`` (``(name, parameter)`` pairs, some of them DTensors) written
    into ``record`` at each ``combine`` (see the module docstring)."""

    def __init__(self, params: list[tuple[str, nn.Parameter]], record: ParamRecord) -> None:
        super().__init__(params, record)
        self._reducer = Reducer((*STATS, RESIDUALS))
        self._meshes = _meshes(params)
        kind = _dtensor()
        self._kind = kind
        self._distributed = [i for i, (_, p) in enumerate(params) if kind is not None and isinstance(p, kind)]
        self._shapes: list[torch.Size] = []
        self._counts: list[int] = []  # elements this rank holds of each parameter
        self._device = _local(self._params[0], kind).device if self._params else torch.device("cpu")
        self._mine = Rows((len(params), _WIDTH))  # this rank's rows since the last combine
        self._keys: list[int] = []  # their keys

    def start(self, expected: int | None = None) -> None:
        """Read the parameters from now on (``ParamCapture.start``), with room for ``expected``
        rows of this rank's own."""
        kind = self._kind
        self._views = [_local(p, kind) for p in self._params]
        self._shapes = [v.shape for v in self._views]
        self._counts = [v.numel() for v in self._views]
        self._key = self._reducer.key(self._views)
        if self._views:
            self._device = self._views[0].device
            if expected:
                self._mine.reserve(expected, self._device)

    def end_batch(self, key: int | None = None) -> None:
        """This rank's row: the statistics of each parameter's shard now, on the device, under
        ``key`` (default: the rows since the last combine). A DTensor's local tensor is taken
        anew (FSDP may replace it, e.g. at its lazy initialisation in the first forward)."""
        views = self._views
        if not views:
            return
        params, kind = self._params, self._kind
        for i in self._distributed:
            views[i] = _local(params[i], kind)
        if [v.shape for v in views] != self._shapes:  # never with fully_shard: shards keep their size
            self.start()
        self._reducer(views, into=self._mine.next(self._device), key=self._key)
        self._keys.append(len(self._keys) if key is None else key)

    def exchanges(self) -> bool:
        return bool(self._meshes)

    def combine(self) -> None:
        """Put the ranks' rows since the last combine together and add them to the record (on the
        device). A collective on each mesh: every rank of it must call this."""
        mine = self._mine.take()
        keys, self._keys = self._keys, []
        width = len(self._params)
        if mine is None:
            mine = torch.empty((0, width, _WIDTH), device=self._device)
        counts = self._counts or [_local(p, self._kind).numel() for p in self._params]
        parts: list[tuple[Tensor, list[int], Tensor]] = []  # (keys, parameters, rows)
        in_meshes = {i for mesh in self._meshes for i in mesh.indices}
        whole = [i for i in range(width) if i not in in_meshes]
        if whole:
            parts.append((torch.tensor(keys, dtype=torch.int64), whole, mine[:, whole, : len(STATS)]))
        for mesh in self._meshes:
            found = _gather(mesh, mine[:, mesh.indices], [counts[i] for i in mesh.indices], keys)
            if found is not None:
                union, rows = found
                parts.append((union, mesh.indices, rows.to(mine.device)))
        every = torch.unique(torch.cat([k for k, _, _ in parts])) if parts else torch.empty(0)
        if not len(every):
            return
        out = torch.full((len(every), width, len(STATS)), math.nan, device=mine.device)
        for part_keys, columns, rows in parts:
            at = torch.searchsorted(every, part_keys).to(mine.device)
            out[at[:, None], torch.tensor(columns, device=mine.device)] = rows
        self._record.extend(out)

    def stop(self) -> None:
        """Let go of the parameters; rows not combined yet are dropped."""
        super().stop()
        self._mine = Rows(self._mine.shape)
        self._keys = []


def _gather(mesh: _Mesh, stats: Tensor, counts: list[int], keys: list[int]) -> tuple[Tensor, Tensor] | None:
    """Every rank's rows of ``mesh``'s parameters (``stats``: ``(rows, params, 5)``, their shards'
    counts, the rows' keys) in one all_gather, put together (``combine_shards``): the keys (a
    sorted CPU tensor) and their rows. None when no rank has a row."""
    import torch.distributed as dist

    group, device = mesh.group, mesh.device
    most = torch.tensor([len(keys)], dtype=torch.int64, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX, group=group)
    size = int(most.item())
    if size == 0:
        return None
    world = dist.get_world_size(group)
    rows, width = len(keys), len(counts)
    padded = torch.full((size, width, _WIDTH), math.nan, device=device)
    padded[:rows] = stats
    # counts and keys travel in the same float32 tensor, bit for bit (an int64 is two float32s)
    tail = torch.tensor(counts + keys + [-1] * (size - rows), dtype=torch.int64)
    packed = torch.cat([padded.reshape(-1), tail.view(torch.float32).to(device)])
    received = torch.empty(world * len(packed), device=device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in 2.11
    gather(received, packed, group=group)
    received = received.view(world, -1)
    body = size * width * _WIDTH
    every = received[:, :body].reshape(world, size, width, _WIDTH)
    tail = received[:, body:].cpu().contiguous().view(torch.int64)
    return combine_shards(every, tail[:, :width], tail[:, width:])


def combine_shards(stats: Tensor, counts: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """The whole parameters' rows from their shards' (what each rank's ``Reducer`` gave):
    ``stats`` ``(ranks, rows, params, 5)`` (mean, std, min, max, residual of each shard), ``counts``
    ``(ranks, params)`` (the shards' sizes), ``keys`` ``(ranks, rows)`` (each row's key, -1 for
    padding; a CPU tensor). Returns the keys some rank has, sorted, and ``(keys, params, 4)``
    float32 rows: NaN where a rank lacks the key."""
    valid = keys >= 0
    aligned = bool(valid.all()) and bool((keys == keys[0]).all())
    if aligned and bool((keys[0][1:] > keys[0][:-1]).all()):
        union, present = keys[0], None
    else:
        union = torch.unique(keys[valid])
        ranks = torch.arange(len(keys))[:, None].expand_as(keys)[valid]
        at = torch.searchsorted(union, keys[valid])
        index = torch.zeros((len(keys), len(union)), dtype=torch.int64)
        index[ranks, at] = torch.arange(keys.shape[1]).expand_as(keys)[valid]
        found = torch.zeros((len(keys), len(union)), dtype=torch.bool)
        found[ranks, at] = True
        device = stats.device
        stats = stats[torch.arange(len(keys), device=device)[:, None], index.to(device)]
        present = found.all(0).to(device)
    rows = _chan(stats, counts.to(stats.device))
    if present is not None:
        rows[~present] = math.nan
    return union, rows


def _chan(stats: Tensor, counts: Tensor) -> Tensor:
    """Chan's parallel combination of ``(ranks, rows, params, 5)`` shard statistics of
    ``(ranks, params)`` elements each, in float64: ``(rows, params, 4)`` float32."""
    n = counts.to(torch.float64)[:, None, :]  # (ranks, 1, params)
    mean, std, low, high, residual = stats.to(torch.float64).unbind(-1)
    has = n > 0
    mean = torch.where(has, mean + residual, 0.0)  # an empty shard's row is NaN: it counts for nothing
    # one value: no spread (its std is NaN). A std taken around the float32 mean (the norm path)
    # holds n * residual² more than around the exact mean: ~1e-7 of it, left in
    m2 = torch.where(n > 1, std.square() * (n - 1), 0.0)
    low = torch.where(has, low, math.inf).amin(0)
    high = torch.where(has, high, -math.inf).amax(0)
    total = n.sum(0)  # (1, params)
    whole = (n * mean).sum(0) / total
    m2 = (m2 + n * (mean - whole).square()).sum(0)
    std = torch.where(total > 1, (m2 / (total - 1).clamp(min=1)).sqrt(), math.nan)
    empty = total == 0  # no element at all: NaN, as _stats gives an empty tensor
    low, high = torch.where(empty, math.nan, low), torch.where(empty, math.nan, high)
    return torch.stack([whole, std, low, high], -1).float()
