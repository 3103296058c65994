"""``LossLandscape``: the loss around the current weights, drawn as 3D surfaces.

``l.LossLandscape.plot()`` takes one validation batch (as the model sees it: after the
``ModifyBatch`` and ``DType`` callbacks), draws random direction pairs ``(d1, d2)`` in weight
space and evaluates ``l.lossF(model(xb), yb)`` at ``weights + a·d1 + b·d2`` on a grid of
``(a, b)`` for each range, in eval mode without gradients. The centre ``(0, 0)`` is the model as
it is. The grid points are evaluated in batches: the parameter sets of many points are stacked
and ``torch.func.vmap`` runs ``functional_call`` over them, as many points per call as the
``memory`` option allows (a whole surface for the README's network). A model
that vmap cannot run (``.item()`` or data-dependent Python control flow in ``forward``, in-place
ops on buffers) is evaluated one point at a time instead, with a warning; so is a model whose
forward pass is heavy enough that batching gains nothing (there, stacking weights only costs
memory traffic).

Only the parameters that training moves are moved (``params="trainable"``: ``requires_grad``
and not frozen by ``l.css``'s ``frozen`` prop), so a LoRA model's landscape is that of its
adapters, not of its frozen base weights; ``params="all"`` moves every parameter, and
``params="css"`` those of the modules ``l.css`` gives the prop ``LossLandscape`` (or ``all``),
frozen or not. The others stay the very tensors they are. The figure's title says which.

This callback handles no events: it costs nothing during ``l.run``. Afterwards the model is
exactly as before: parameters (their storage is never written), buffers, train/eval modes,
``requires_grad`` flags, grads, and torch's global random state (directions come from a private
``torch.Generator`` seeded by ``seed``).

``loss_landscape(model, batch, lossF)`` (``k1lib.loss_landscape``) computes the same surfaces
without a Learner, on the batch it is given, with ``params`` "trainable", "all" or a modsel
selector; both go through ``_landscape``, which knows neither a Learner nor where the batch
came from.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .. import _distributed
from .._batch import forward, loss_of, split
from .._fsdp import is_sharded
from .._live import Live, duration
from .._rng import RngSnapshot
from .._unwrap import unwrap
from .._warn import warn
from .callback import Callback

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .._learner import Learner
    from ..viz import SliceablePlot

__all__ = ["Landscape", "LossLandscape", "Surface", "directions", "loss_landscape"]

Direction = dict[str, Tensor]
_RANGES = (0.1, 0.32, 1.0, 3.2)
# resolution=None fits the grid to the time budget: the largest odd side (the centre is a grid
# point) within these bounds
_MOST, _FEWEST = 51, 5
_ENGINES = ("auto", "vmap", "loop")
_PARAMS = ("trainable", "all", "css")


@dataclass(frozen=True, eq=False)
class Surface:
    """One landscape: ``losses[i, j]`` is the loss at ``weights + xs[i]·d1 + ys[j]·d2``, with
    ``(d1, d2)`` the direction pair number ``pair`` and both coordinates in
    ``[-radius, radius]``. ``engine`` says how the points were evaluated ("vmap" or "loop")."""

    pair: int
    radius: float
    xs: npt.NDArray[np.float64]
    ys: npt.NDArray[np.float64]
    losses: npt.NDArray[np.float64]
    engine: str


# ---- directions ----------------------------------------------------------------------------------


def directions(
    model: nn.Module,
    pairs: int = 2,
    seed: int = 0,
    filterNorm: bool = False,  # noqa: N803 - plot()'s name
    params: str | Collection[str] = "trainable",
) -> list[tuple[Direction, Direction]]:
    """The ``pairs`` random direction pairs ``plot`` uses: ``{name: tensor}`` for each moved
    parameter, in ``model.named_parameters()`` order, standard normal, drawn on the CPU from a
    generator seeded with ``seed`` and moved to each parameter's device and dtype. ``params``
    says which: "trainable" (``requires_grad``), "all", or the names to move
    (``cb.perturbed``, which gives exactly ``plot``'s directions, also where ``l.css``
    freezes or selects).

    With ``filterNorm`` (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets") each
    filter of a direction (a slice along dim 0 of a parameter with 2 or more dims) is scaled to
    the norm of the same filter of the weights, and 1-d parameters (biases, norm layers) get a
    zero direction, as in the paper's code: moving by 1 then changes every filter by its own size.
    """
    everything = _named_params(model)
    if isinstance(params, str):
        if params not in ("trainable", "all"):
            raise ValueError(
                f"directions: params must be 'trainable', 'all' or parameter names, got {params!r}"
            )
        chosen = [(n, p) for n, p in everything if params == "all" or p.requires_grad]
    else:
        names = set(params)
        unknown = sorted(names - {n for n, _ in everything})
        if unknown:
            raise ValueError(f"directions: the model has no parameters {', '.join(unknown[:5])}")
        chosen = [(n, p) for n, p in everything if n in names]
    if not chosen:
        raise ValueError(f"directions: params={params!r} chooses no parameter of {type(model).__name__}")
    return list(_iter_directions(chosen, pairs, seed, filterNorm))


def _named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    params = list(model.named_parameters())
    if not params:
        raise ValueError(f"LossLandscape: the model ({type(model).__name__}) has no parameters to move")
    return params


def _chosen_params(
    learner: Learner, model: nn.Module, params: str
) -> tuple[list[tuple[str, nn.Parameter]], str]:
    """The parameters ``plot`` moves for ``params`` and the title's words for them
    ("16 of 44 parameter tensors (trainable)"); ``ValueError`` when that is none."""
    from ._selection import selected_parameters

    everything = _named_params(model)
    total = len(everything)
    if params == "all":
        chosen = everything
    elif params == "trainable":
        frozen = {id(p) for p in learner.css_frozen()}
        chosen = [(n, p) for n, p in everything if p.requires_grad and id(p) not in frozen]
        if not chosen:
            raise ValueError(
                f"LossLandscape: all {total} parameter tensors of {type(model).__name__} are frozen "
                "(requires_grad=False, or the prop 'frozen' in l.css), so none would move; pass "
                "params='all' to move every parameter, or params='css' with l.css giving modules "
                "the prop 'LossLandscape'"
            )
    else:
        chosen = selected_parameters(learner, "LossLandscape", warn=False)
        if not chosen:
            raise ValueError(
                f"LossLandscape: params='css', and l.css gives no module with parameters the prop "
                f"'LossLandscape' (or 'all'); l.css is {learner.css!r}. Add a rule, e.g. "
                "l.css += '\\nLinear: LossLandscape', or pass params='trainable' or 'all'"
            )
    why = {"all": "all", "trainable": "trainable", "css": "l.css: LossLandscape"}[params]
    return chosen, f"{len(chosen)} of {total} parameter tensors ({why})"


def _iter_directions(
    params: Sequence[tuple[str, Tensor]],
    pairs: int,
    seed: int,
    filterNorm: bool,  # noqa: N803
) -> Iterator[tuple[Direction, Direction]]:
    # one pair at a time, so only one pair is in memory while plot() works on it
    generator = torch.Generator().manual_seed(seed)
    for _ in range(pairs):
        pair = tuple({name: _direction(p, generator, filterNorm) for name, p in params} for _ in range(2))
        yield pair[0], pair[1]


def _direction(p: Tensor, generator: torch.Generator, filterNorm: bool) -> Tensor:  # noqa: N803
    d = torch.randn(p.shape, generator=generator, dtype=torch.float32)
    if filterNorm:
        if p.dim() <= 1 or p.numel() == 0:
            d.zero_()
        else:
            w = p.detach().float().cpu().reshape(len(p), -1)
            flat = d.reshape(len(d), -1)
            flat.mul_(w.norm(dim=1, keepdim=True) / (flat.norm(dim=1, keepdim=True) + 1e-10))
    return d.to(device=p.device, dtype=p.dtype)


# ---- the validation batch ------------------------------------------------------------------------


def _validation_batch(learner: Learner, samples: int | None) -> tuple[Any, Any]:
    """The first ``samples`` validation samples (the first batch when None), each batch after
    the learner's batch-shaping callbacks (Device, ModifyBatch, DType: ``shapes_batch``), which
    alone see this ``startBatch``."""
    cbs = learner.cbs
    quiet = [cb.name for cb in cbs if not cb.shapes_batch]
    saved = learner.xb, learner.yb
    xbs: list[Any] = []
    ybs: list[Any] = []
    count = 0
    try:
        with cbs.suspend(quiet):
            for batch in learner.data.valid:
                learner.xb, learner.yb = split(batch)
                cbs("startBatch")
                xbs.append(learner.xb)
                ybs.append(learner.yb)
                count += _length(learner.xb)
                if samples is None or count >= samples:
                    break
    finally:
        learner.xb, learner.yb = saved
    if not xbs:
        raise ValueError("LossLandscape: l.data.valid gave no batch; it needs at least one validation batch")
    if len(xbs) == 1 and (samples is None or count <= samples):
        return xbs[0], ybs[0]
    xb = _take(_concat(xbs), samples)
    if all(x is y for x, y in zip(xbs, ybs, strict=True)):  # one mapping a batch: both are it
        return xb, xb
    return xb, _take(_concat(ybs), samples)


def _length(x: Any) -> int:
    if isinstance(x, Tensor):
        return len(x) if x.dim() else 1
    if isinstance(x, tuple | list) and x:
        return _length(x[0])
    if isinstance(x, Mapping) and x:
        return _length(next(iter(x.values())))
    raise TypeError(f"LossLandscape: cannot count the samples of a batch of type {type(x).__name__}")


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, tuple | list):
        return type(first)(_concat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    raise TypeError(f"LossLandscape: cannot join batches of type {type(first).__name__}; use batchSize=None")


def _take(x: Any, n: int | None) -> Any:
    if n is None:
        return x
    if isinstance(x, Tensor):
        return x[:n]
    if isinstance(x, tuple | list):
        return type(x)(_take(v, n) for v in x)
    if isinstance(x, Mapping):
        return {k: _take(v, n) for k, v in x.items()}
    return x


# ---- keeping the model as it was -----------------------------------------------------------------


class _Snapshot:
    """Everything plot() may touch, put back on exit, also after an exception: the parameters'
    tensors (swapped through ``.data``, never written), buffers (copied back when a forward pass
    wrote to one, as its version counter tells, or put back when one was replaced), each
    module's train/eval flag and torch's random states."""

    def __init__(self, model: nn.Module, params: Sequence[tuple[str, nn.Parameter]]) -> None:
        self.params = [(p, p.data) for _, p in params]
        self.buffers = [
            (m, name, b, b.detach().clone(), b._version)
            for m in model.modules()
            for name, b in m.named_buffers(recurse=False)
        ]
        self.modes = [(m, m.training) for m in model.modules()]
        self.rng = RngSnapshot()

    def restore_buffers(self) -> None:
        for i, (m, name, b, saved, version) in enumerate(self.buffers):
            if getattr(m, name, None) is not b:
                setattr(m, name, b)
            if b._version != version:
                with torch.no_grad():
                    b.copy_(saved)
                self.buffers[i] = (m, name, b, saved, b._version)

    def restore_params(self) -> None:
        for p, data in self.params:
            p.data = data

    def restore(self) -> None:
        self.restore_params()
        self.restore_buffers()
        for m, training in self.modes:
            m.training = training
        self.rng.restore()


# ---- evaluating grid points ----------------------------------------------------------------------


class _Group:
    """The parameters of one device and dtype, flattened: ``basis`` rows are the weights, d1, d2;
    the parameters of a point ``(a, b)`` are ``[1, a, b] @ basis``."""

    def __init__(self, entries: list[tuple[str, nn.Parameter]]) -> None:
        self.entries = entries
        self.sizes = [p.numel() for _, p in entries]
        first = entries[0][1]
        self.device, self.dtype = first.device, first.dtype
        self.numel = sum(self.sizes)
        self.basis = torch.empty(3, self.numel, device=self.device, dtype=self.dtype)
        torch.cat([p.detach().reshape(-1) for _, p in entries], out=self.basis[0])
        self.row = torch.empty(self.numel, device=self.device, dtype=self.dtype)  # weights + a·d1
        self.row_a: float | None = None
        self.point = torch.empty(self.numel, device=self.device, dtype=self.dtype)
        self.point_views = self.views(self.point[None])
        self.stack: Tensor | None = None

    def set_directions(self, d1: Direction, d2: Direction) -> None:
        for row, d in ((1, d1), (2, d2)):
            torch.cat([d[name].reshape(-1) for name, _ in self.entries], out=self.basis[row])
        self.row_a = None

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views ``[K, *shape]`` of the rows of ``flat`` ``[K, numel]``."""
        out, offset = [], 0
        for (_, p), n in zip(self.entries, self.sizes, strict=True):
            out.append(flat[:, offset : offset + n].view(len(flat), *p.shape))
            offset += n
        return out

    def stacked(self, coeffs: Tensor) -> dict[str, Tensor]:
        """The parameters of every point, ``{name: [K, *shape]}``, each contiguous, in a buffer
        reused across calls."""
        k = len(coeffs)
        if self.stack is None or len(self.stack) < k * self.numel:
            self.stack = torch.empty(k * self.numel, device=self.device, dtype=self.dtype)
        coeffs = coeffs.to(device=self.device, dtype=self.dtype)
        out, offset = {}, 0
        for (name, p), n in zip(self.entries, self.sizes, strict=True):
            block = self.stack[k * offset : k * (offset + n)].view(k, n)
            torch.mm(coeffs, self.basis[:, offset : offset + n], out=block)
            out[name] = block.view(k, *p.shape)
            offset += n
        return out

    def install(self, a: float, b: float) -> None:
        """Point the parameters at ``weights + a·d1 + b·d2`` (swapping ``.data``)."""
        if self.row_a != a:
            torch.add(self.basis[0], self.basis[1], alpha=a, out=self.row)
            self.row_a = a
        torch.add(self.row, self.basis[2], alpha=b, out=self.point)
        for (_, p), view in zip(self.entries, self.point_views, strict=True):
            p.data = view[0]


class _Evaluator:
    """Losses at grid points of one validation batch: ``vectorised`` (vmap over stacked
    parameters) or ``loop`` (one forward pass a point). Made under ``no_grad`` in eval mode, it
    first evaluates the model as it is: ``centre``, how long that took (``seconds``) and the
    bytes of every module's output (``activation_bytes``, to size the vectorised calls)."""

    def __init__(
        self,
        model: nn.Module,
        params: list[tuple[str, nn.Parameter]],
        batch: tuple[Any, Any],
        lossF: Callable[[Any, Any], Any] | None,  # noqa: N803
        outputFs: list[Callable[[Any], Any]],  # noqa: N803
        snapshot: _Snapshot,
        who: str,
    ) -> None:
        self.model, self.lossF, self.snapshot = model, lossF, snapshot
        self.outputFs, self.who = outputFs, who
        self.xb, self.yb = batch
        groups: dict[tuple[torch.device, torch.dtype], list[tuple[str, nn.Parameter]]] = {}
        for name, p in params:
            groups.setdefault((p.device, p.dtype), []).append((name, p))
        self.groups = [_Group(entries) for entries in groups.values()]
        self.dtype = min((g.dtype for g in self.groups), key=lambda d: torch.finfo(d).bits)
        self.param_bytes = sum(p.numel() * p.element_size() for _, p in params)
        sizes: list[int] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            sizes.append(_bytes(output))

        handles = [m.register_forward_hook(hook) for m in model.modules()]
        began = time.perf_counter()
        try:
            self.centre = float(self._loss(forward(model, self.xb)))
        finally:
            for handle in handles:
                handle.remove()
            snapshot.restore_buffers()
        self.seconds = time.perf_counter() - began
        self.activation_bytes = sum(sizes) + _bytes(self.xb)

    def _loss(self, y: Any) -> Tensor:
        for f in self.outputFs:
            y = f(y)
        loss = loss_of(self.lossF, y, self.yb)
        loss = loss if isinstance(loss, Tensor) else torch.as_tensor(loss)
        if loss.numel() != 1:
            raise ValueError(
                f"{self.who}: lossF must return one number, got a tensor of shape {tuple(loss.shape)}"
            )
        return loss.reshape(())

    def set_directions(self, d1: Direction, d2: Direction) -> None:
        for group in self.groups:
            group.set_directions(d1, d2)

    def vectorised(self, coeffs: Tensor) -> Tensor:
        from torch.func import functional_call, vmap

        params: dict[str, Tensor] = {}
        for group in self.groups:
            params.update(group.stacked(coeffs))

        def point(ps: dict[str, Tensor]) -> Tensor:
            xb = self.xb  # a mapping of inputs goes in as keyword arguments
            if isinstance(xb, Mapping):
                return self._loss(functional_call(self.model, ps, (), dict(xb)))
            return self._loss(functional_call(self.model, ps, (xb,)))

        try:
            losses: Tensor = vmap(point, randomness="error")(params)
        finally:
            self.snapshot.restore_buffers()  # the next call sees them as they were
        return losses

    def loop(self, coeffs: Tensor) -> Tensor:
        losses = []
        try:
            for a, b in coeffs[:, 1:].tolist():
                for group in self.groups:
                    group.install(a, b)
                losses.append(self._loss(forward(self.model, self.xb)))
                self.snapshot.restore_buffers()  # each point sees the buffers as they were
        finally:
            self.snapshot.restore_params()
        return torch.stack(losses)


def _bytes(x: Any) -> int:
    if isinstance(x, Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, tuple | list):
        return sum(_bytes(v) for v in x)
    if isinstance(x, Mapping):
        return sum(_bytes(v) for v in x.values())
    return 0


def _close(vectorised: float, loop: float, dtype: torch.dtype) -> bool:
    if math.isnan(vectorised) or math.isnan(loop):
        return math.isnan(vectorised) and math.isnan(loop)
    rtol = 1e-3 if torch.finfo(dtype).bits >= 32 else 5e-2
    return math.isclose(vectorised, loop, rel_tol=rtol, abs_tol=1e-6)


def _grid(radius: float, resolution: int) -> npt.NDArray[np.float64]:
    # symmetric, and exactly 0 in the middle for an odd resolution
    steps = np.arange(resolution, dtype=np.float64) * 2 - (resolution - 1)
    grid: npt.NDArray[np.float64] = steps * (radius / (resolution - 1))
    return grid


# ---- progress ------------------------------------------------------------------------------------


class _Progress:
    """``Progress:  50%          4/8 Finished [-3.2, 3.2] range, 1.20s left``: a live line
    (``k1lib._live``: one display updated in place in Jupyter, redrawn with "\\r" on a terminal,
    the final line only in logs), below ``note`` (what ``resolution=None`` chose) when given;
    rank 0 shows them. The time left is the time so far scaled to the points left."""

    def __init__(self, surfaces: int, points: int, note: str | None = None) -> None:
        self.total, self.points = surfaces, points
        self.done = self.done_points = 0
        self.radius = 0.0
        self.began = time.perf_counter()
        self.live = Live() if _distributed.rank() == 0 else None
        if self.live is not None and note is not None:
            self.live.line(note)

    def start(self, radius: float) -> None:
        self.radius = radius

    def tick(self, points: int) -> None:
        self.done_points += points
        live, surface_done = self.live, self.done_points >= (self.done + 1) * self.points
        if live is not None and live.mode != "log" and live.due() and not surface_done:
            live.show(self._line("Computing"), self._fraction())

    def finished(self) -> None:
        self.done += 1
        self.done_points = self.done * self.points
        if self.live is not None:
            self.live.show(self._line("Finished"), self._fraction(), force=self.live.mode != "log")
            if self.done == self.total:
                self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.close()

    def _fraction(self) -> float:
        return self.done_points / (self.total * self.points)

    def _line(self, word: str) -> str:
        line = (
            f"Progress: {round(100 * self._fraction()):3}%          {self.done}/{self.total} "
            f"{word} [{-self.radius:g}, {self.radius:g}] range"
        )
        fraction = self._fraction()
        if 0 < fraction < 1:
            left = (time.perf_counter() - self.began) * (1 - fraction) / fraction
            line += f", {duration(left)} left"
        return line


# ---- the callback --------------------------------------------------------------------------------


class LossLandscape(Callback):
    """Plots the loss around the current weights in random directions (see the module doc).
    ``cb.surfaces`` holds what the last ``plot()`` or ``compute()`` computed."""

    doc = """
- cb.plot(): to compute and plot the loss around the current weights on one validation batch:
    rows are random direction pairs, columns ranges; (0, 0) is the model as it is. Options:
    resolution=None (points per side; None: the largest odd number up to 51, at least 5, that
    fits the time budget, chosen by timing grid points first and said in a line above the
    progress), budget=10 (seconds the whole call aims at when resolution=None; about 10 s on a
    CPU), batchSize=None (validation samples; None: one batch),
    ranges=(0.1, 0.32, 1, 3.2), pairs=2, seed=0 (the directions' generator),
    filterNorm=False (Li et al. 2018 filter-normalised directions), engine="auto"
    ("vmap": batched points, "loop": one point at a time), memory=256 MiB (per batched call),
    params="trainable" (what is moved: "trainable": requires_grad and not frozen by l.css,
    "all", "css": modules l.css gives the prop LossLandscape)
- cb.compute(...): the same surfaces without the figure
- cb.surfaces: the last surfaces: .xs, .ys, .losses (numpy), .pair, .radius; cb.centre: the
    loss at the current weights; cb.perturbed: the names of the parameters moved, cb.moved:
    how many of how many ("16 of 44 parameter tensors (trainable)", in the figure's title)
"""

    def __init__(self) -> None:
        super().__init__()
        self.surfaces: list[Surface] = []
        self.centre: float | None = None
        self.engine: str | None = None
        self.perturbed: list[str] = []
        self.moved = ""

    def plot(
        self,
        resolution: int | None = None,
        batchSize: int | None = None,  # noqa: N803
        ranges: Sequence[float] = _RANGES,
        pairs: int = 2,
        seed: int = 0,
        filterNorm: bool = False,  # noqa: N803
        engine: str = "auto",
        memory: int = 256 * 2**20,
        params: str = "trainable",
        budget: float = 10.0,
    ) -> SliceablePlot:
        """Compute ``pairs x len(ranges)`` surfaces (``compute``) and return their plot, a
        ``SliceablePlot`` as the other callbacks': ``p[1:]`` leaves out the first range (slices
        pick columns), ``p.save(path)`` writes it, ``p.plot()`` returns the figure; in a script
        ``plt.savefig(path)`` right after saves it too. Jupyter shows the image alone, as the
        README does."""
        surfaces = self.compute(
            resolution, batchSize, ranges, pairs, seed, filterNorm, engine, memory, params, budget
        )
        return _plot(surfaces, pairs, self.centre, self.moved)

    def compute(
        self,
        resolution: int | None = None,
        batchSize: int | None = None,  # noqa: N803
        ranges: Sequence[float] = _RANGES,
        pairs: int = 2,
        seed: int = 0,
        filterNorm: bool = False,  # noqa: N803
        engine: str = "auto",
        memory: int = 256 * 2**20,
        params: str = "trainable",
        budget: float = 10.0,
    ) -> list[Surface]:
        """The surfaces, pair by pair and range by range, also kept in ``cb.surfaces``; the
        options are ``plot``'s (see the repr). With ``resolution=None`` the grid fits
        ``budget`` seconds (the whole call, the batch and the timing included): grid points of
        the first surface are timed with the engine that will evaluate them, and the side is the
        largest odd number from 5 to 51 whose surfaces fit what is left; a line says what it
        chose. An explicit ``resolution`` is used as it is, and ``budget`` is not looked at."""
        from .modify_output import ModifyOutput

        who = "LossLandscape.plot"
        radii = _check_options(resolution, budget, batchSize, ranges, pairs, seed, engine, memory, who)
        _check_choice(who, "params", params, _PARAMS)
        learner = self.learner
        for name in ("model", "data"):  # no lossF: the model's output may carry its loss
            if getattr(learner, name) is None:
                raise RuntimeError(f"LossLandscape needs l.{name}; set it first")
        if is_sharded(learner.model):
            raise RuntimeError(
                "LossLandscape needs the whole model in one process, and l.model is sharded by FSDP "
                "(l.strategy = 'fsdp'): save it (l.save(folder), on every rank), write its full weights "
                "to one file (k1lib.consolidate(folder, 'model.pt')), and plot in one process with a "
                "plain model that loaded them (model.load_state_dict(torch.load('model.pt')))"
            )
        # a compiled (or DDP) model is evaluated through its original module: vmap and
        # functional_call need plain modules, and the names are the original's
        assert learner.model is not None  # checked just above
        model: nn.Module = unwrap(learner.model)
        chosen, moved = _chosen_params(learner, model, params)
        output_fs = [cb.f for cb in learner.cbs if isinstance(cb, ModifyOutput) and not cb.suspended]
        self.surfaces, self.centre = _landscape(
            model,
            chosen,
            lambda: _validation_batch(learner, batchSize),
            learner.lossF,
            output_fs,
            _Options(radii, resolution, budget, pairs, seed, filterNorm, engine, memory),
            "LossLandscape",
        )
        self.perturbed, self.moved = [name for name, _ in chosen], moved
        self.engine = self.surfaces[-1].engine
        return self.surfaces


@dataclass(frozen=True)
class _Options:
    """``plot``'s options that shape the computation, checked."""

    radii: tuple[float, ...]
    resolution: int | None  # None: fit the budget
    budget: float
    pairs: int
    seed: int
    filterNorm: bool  # noqa: N815
    engine: str
    memory: int


def _landscape(
    model: nn.Module,
    chosen: list[tuple[str, nn.Parameter]],
    batch: Callable[[], tuple[Any, Any]],
    lossF: Callable[[Any, Any], Any] | None,  # noqa: N803
    outputFs: list[Callable[[Any], Any]],  # noqa: N803
    options: _Options,
    who: str,
) -> tuple[list[Surface], float]:
    """The surfaces around ``model``'s current weights moving ``chosen``, on the ``(xb, yb)``
    that ``batch()`` gives (called in eval mode without gradients), and the loss at the centre;
    the model is as before afterwards, also after an exception. What ``LossLandscape.compute``
    and ``loss_landscape`` share: neither knows the other's way of finding the batch or the
    parameters."""
    began = time.perf_counter()  # the budget counts from here: the batch and the centre too
    snapshot = _Snapshot(model, chosen)
    try:
        model.eval()
        with torch.no_grad():
            ev = _Evaluator(model, chosen, batch(), lossF, outputFs, snapshot, who)
            weights = [(name, p.detach()) for name, p in chosen]  # as they are now
            directions = _iter_directions(weights, options.pairs, options.seed, options.filterNorm)
            choice = _EngineChoice(options.engine, ev, options.memory)
            surfaces = _surfaces(ev, directions, options, choice, began)
    finally:
        snapshot.restore()
    return surfaces, float(ev.centre)


def _plot(surfaces: list[Surface], pairs: int, centre: float | None, moved: str) -> SliceablePlot:
    """The figure of ``surfaces`` (``pairs`` rows of ranges) as a ``SliceablePlot`` whose slices
    pick columns (ranges)."""
    from ..viz import SliceablePlot, indices

    cols = len(surfaces) // pairs

    def draw(sl: slice) -> None:
        picked = range(*indices(sl, cols))
        chosen = [surfaces[p * cols + c] for p in range(pairs) for c in picked]
        _draw(chosen, len(picked), pairs, centre, moved)

    return SliceablePlot(draw, text=False)


# ---- without a Learner ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Landscape:
    """What ``loss_landscape`` returns: the ``surfaces`` (pair by pair, range by range, as
    ``l.LossLandscape.surfaces``), the loss at the current weights (``centre``), the engine
    used, the names of the parameters moved (``perturbed``) and the figure title's words for
    them (``moved``); ``plot()`` is ``l.LossLandscape.plot()``'s figure."""

    surfaces: list[Surface]
    centre: float
    engine: str
    perturbed: list[str]
    moved: str
    pairs: int

    def plot(self) -> SliceablePlot:
        return _plot(self.surfaces, self.pairs, self.centre, self.moved)

    def __repr__(self) -> str:
        radii = ", ".join(f"{r:g}" for r in dict.fromkeys(s.radius for s in self.surfaces))
        return (
            f"Landscape: {len(self.surfaces)} surfaces ({self.pairs} direction pairs x ranges {radii}) "
            f"moving {self.moved}; loss at the centre {self.centre:.4g}. Use .plot(), .surfaces"
        )


def loss_landscape(
    model: nn.Module,
    batch: Any,
    lossF: Callable[[Any, Any], Any] | None = None,  # noqa: N803 - the Learner's name
    *,
    resolution: int | None = None,
    budget: float = 10.0,
    ranges: Sequence[float] = _RANGES,
    pairs: int = 2,
    seed: int = 0,
    filterNorm: bool = False,  # noqa: N803 - plot()'s name
    engine: str = "auto",
    memory: int = 256 * 2**20,
    params: str = "trainable",
) -> Landscape:
    """``l.LossLandscape.compute()`` without a Learner: the loss of ``batch`` around ``model``'s
    current weights, on a ``resolution``-square grid per range and random direction pair (by
    default the finest that fits ``budget`` seconds, as ``plot``'s), in eval mode without
    gradients; the model is bitwise as before afterwards (parameters,
    buffers, train/eval flags, grads) and so are torch's random generators. ``batch`` is an
    ``(xb, yb)`` pair or a mapping of the model's keyword arguments, as the model takes it (on
    its device); the loss is ``lossF(model(xb), yb)``, or with ``lossF=None`` the output's own
    ``.loss``. The options are ``LossLandscape.plot``'s, with ``params`` one of "trainable"
    (``requires_grad``), "all", or a modsel selector: the parameters of the modules it matches
    (``params="Linear"``, ``"#lora_B"``), frozen or not.

    Raises ``TypeError`` for a model that is not an ``nn.Module``, a batch that is neither a
    pair nor a mapping or a ``lossF`` that is not callable, and ``ValueError`` for a bad option
    or a ``params`` that moves nothing, before anything runs."""
    who = "loss_landscape"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")
    if lossF is not None and not callable(lossF):
        raise TypeError(
            f"{who}: lossF must be callable as lossF(y, yb), or None to use the output's .loss; "
            f"got {type(lossF).__name__}"
        )
    try:
        xb, yb = split(batch)
    except TypeError:
        got = f"a tensor of shape {tuple(batch.shape)}" if isinstance(batch, Tensor) else type(batch).__name__
        raise TypeError(
            f"{who}: batch must be a pair (xb, yb) or a mapping of the model's keyword arguments, got {got}"
        ) from None
    radii = _check_options(resolution, budget, None, ranges, pairs, seed, engine, memory, who)
    if not isinstance(params, str):
        raise TypeError(
            f"{who}: params must be 'trainable', 'all' or a modsel selector string, got "
            f"{type(params).__name__}"
        )
    plain: nn.Module = unwrap(model)  # torch.compile / DDP: the original module and its names
    chosen, moved = _params_of(plain, params, who)
    options = _Options(radii, resolution, budget, pairs, seed, filterNorm, engine, memory)
    surfaces, centre = _landscape(plain, chosen, lambda: (xb, yb), lossF, [], options, who)
    return Landscape(surfaces, centre, surfaces[-1].engine, [n for n, _ in chosen], moved, pairs)


def _params_of(model: nn.Module, params: str, who: str) -> tuple[list[tuple[str, nn.Parameter]], str]:
    """``loss_landscape``'s parameters for ``params`` and the title's words for them."""
    import modsel

    from ._selection import parameters_of

    everything = _named_params(model)
    total = len(everything)
    if params == "all":
        chosen, why = everything, "all"
    elif params == "trainable":
        chosen, why = [(n, p) for n, p in everything if p.requires_grad], "trainable"
        if not chosen:
            raise ValueError(
                f"{who}: all {total} parameter tensors of {type(model).__name__} have "
                "requires_grad=False, so none would move; pass params='all' to move every "
                "parameter, or a selector (params='Linear') to move those of the modules it matches"
            )
    else:
        chosen, why = parameters_of(model, modsel.match(model, params)), f"css {params!r}"
        if not chosen:
            hint = (
                " (there is no l.css here: give the selector itself, e.g. params='Linear')"
                if params == "css"
                else ""
            )
            raise ValueError(
                f"{who}: params={params!r} matches no module with parameters in "
                f"{type(model).__name__}{hint}; pass 'trainable', 'all' or another selector"
            )
    return chosen, f"{len(chosen)} of {total} parameter tensors ({why})"


def _surfaces(
    ev: _Evaluator,
    pairs: Iterator[tuple[Direction, Direction]],
    options: _Options,
    engine: _EngineChoice,
    began: float,
) -> list[Surface]:
    surfaces: list[Surface] = []
    count = options.pairs * len(options.radii)
    progress: _Progress | None = None
    resolution = options.resolution or 0
    try:
        for pair, (d1, d2) in enumerate(pairs):
            ev.set_directions(d1, d2)
            if progress is None:  # the first pair: with resolution=None, time points of it first
                note = None
                if options.resolution is None:
                    per_point = _seconds_per_point(ev, engine, options.radii[0], options.budget)
                    left = options.budget - (time.perf_counter() - began)
                    resolution = _fit_resolution(count, per_point, left)
                    note = _fit_note(ev.who, resolution, count, per_point, options.budget)
                progress = _Progress(count, resolution**2, note)
            for radius in options.radii:
                progress.start(radius)
                grid = _grid(radius, resolution)
                a, b = np.meshgrid(grid, grid, indexing="ij")
                coeffs = torch.from_numpy(np.stack([np.ones(a.size), a.ravel(), b.ravel()], axis=1))
                losses = engine.evaluate(ev, coeffs, progress.tick)
                surface = losses.reshape(resolution, resolution)
                surfaces.append(Surface(pair, radius, grid, grid.copy(), surface, engine.used))
                progress.finished()
    finally:
        if progress is not None:
            progress.close()  # also on an error or Ctrl-C: the next output starts on its own line
    return surfaces


def _seconds_per_point(ev: _Evaluator, engine: _EngineChoice, radius: float, budget: float) -> float:
    """Seconds a grid point costs with the engine that will evaluate the surfaces: a first call
    on points of the finest grid checks the engine (and in "auto" picks it), a second, timed
    call of the same points measures it. Both together cost about 2% of ``budget`` (at least
    two points each)."""
    n = max(2, min(engine.probe, int(0.01 * budget / max(ev.seconds, 1e-6))))
    grid = _grid(radius, _MOST)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    coeffs = torch.from_numpy(np.stack([np.ones(a.size), a.ravel(), b.ravel()], axis=1)[:n])
    engine.evaluate(ev, coeffs, lambda _: None)
    began = time.perf_counter()
    engine.evaluate(ev, coeffs, lambda _: None)
    return (time.perf_counter() - began) / n


def _fit_resolution(surfaces: int, per_point: float, seconds: float) -> int:
    """The largest odd side from 5 to 51 whose ``surfaces`` grids take at most ``seconds`` at
    ``per_point`` seconds a point; 5 when even that does not fit.

    >>> _fit_resolution(8, 1e-4, 10.0), _fit_resolution(8, 2.9e-3, 10.0), _fit_resolution(8, 1.0, 10.0)
    (51, 19, 5)
    """
    fits = [r for r in range(_FEWEST, _MOST + 1, 2) if surfaces * r * r * per_point <= seconds]
    return fits[-1] if fits else _FEWEST


def _fit_note(who: str, resolution: int, surfaces: int, per_point: float, budget: float) -> str:
    """The line that says what ``resolution=None`` chose, and why."""
    point = f"{per_point * 1e3:.2g} ms" if per_point < 1 else duration(per_point)
    total = surfaces * resolution**2 * per_point
    if total <= budget:
        why = f"to fit about {budget:g} s"
    else:
        why = f"the fewest: about {duration(total)}, over the budget of {budget:g} s"
    return (
        f"{who}: {resolution} x {resolution} points a surface {why} (one point: {point}; "
        "resolution= sets the grid, budget= the seconds)"
    )


class _EngineChoice:
    """Which way grid points are evaluated. Vectorised calls hold at most ``memory`` bytes of
    stacked parameters and module outputs. "auto" times the first vectorised call (about 0.1 s
    of plain forward passes' worth of points) against one-at-a-time evaluation and keeps the
    faster. The first vectorised result is checked against one-at-a-time values at two points;
    a model vmap cannot run, or runs wrongly, is evaluated one point at a time, with a warning."""

    def __init__(self, engine: str, ev: _Evaluator, memory: int) -> None:
        self.mode = engine
        self.chunk = max(1, memory // max(1, ev.param_bytes + ev.activation_bytes))
        self.probe = min(self.chunk, max(8, int(0.1 / max(ev.seconds, 1e-6))))
        self.dtype, self.who = ev.dtype, ev.who
        self.checked = engine == "loop"

    @property
    def used(self) -> str:
        return "loop" if self.mode == "loop" else "vmap"

    def evaluate(
        self, ev: _Evaluator, coeffs: Tensor, tick: Callable[[int], None]
    ) -> npt.NDArray[np.float64]:
        parts: list[Tensor] = []
        start = 0
        while start < len(coeffs):
            if self.mode == "loop":
                part = coeffs[start : start + 64]
                parts.append(ev.loop(part).cpu())
            else:
                part = coeffs[start : start + (self.chunk if self.checked else self.probe)]
                began = time.perf_counter()
                try:
                    values = ev.vectorised(part).cpu()
                except Exception as e:
                    self._fall_back(f"torch.func.vmap cannot run it ({type(e).__name__}: {str(e)[:300]})")
                    continue
                seconds = time.perf_counter() - began
                if not self.checked and not self._check(ev, part, values, seconds / len(part)):
                    continue
                parts.append(values)
            start += len(part)
            tick(len(part))
        return torch.cat(parts).double().cpu().numpy()

    def _check(self, ev: _Evaluator, part: Tensor, values: Tensor, vectorised_s: float) -> bool:
        """Compare a few points with one-at-a-time values; in "auto", keep the faster engine."""
        self.checked = True
        picks = sorted({0, 1, len(part) - 1} & set(range(len(part))))  # 0 and 1 share a row
        loop_s = math.inf
        reference = []
        for i in picks:
            began = time.perf_counter()
            reference.append(float(ev.loop(part[i : i + 1])[0]))
            loop_s = min(loop_s, time.perf_counter() - began)
        for i, ref in zip(picks, reference, strict=True):
            got = float(values[i])
            if not _close(got, ref, self.dtype):
                a, b = part[i, 1:].tolist()
                self._fall_back(f"its batched loss at ({a:g}, {b:g}) is {got!r}, one at a time {ref!r}")
                return False
        if self.mode == "auto":
            self.mode = "loop" if loop_s < vectorised_s else "vmap"
        return True

    def _fall_back(self, why: str) -> None:
        warn(
            f"{self.who}: evaluating grid points in batches failed for this model and lossF: {why}. "
            "Falling back to one forward pass per point (slower, same values); pass engine='loop' "
            "to skip the attempt",
            RuntimeWarning,
        )
        self.mode = "loop"
        self.checked = True


def _check_options(
    resolution: int | None,
    budget: float,
    samples: int | None,
    ranges: Sequence[float],
    pairs: int,
    seed: int,
    engine: str,
    memory: int,
    who: str,
) -> tuple[float, ...]:
    """Check the options shared by ``LossLandscape.plot`` and ``loss_landscape`` (``who``
    starts the messages); returns the ranges as floats."""

    def positive_int(name: str, value: object, least: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{who}: {name} must be an int >= {least}, got {value!r}")

    if resolution is not None:
        positive_int("resolution", resolution, 2)
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget < math.inf:
        raise ValueError(f"{who}: budget must be a positive number of seconds, like 10, got {budget!r}")
    if samples is not None:
        positive_int("batchSize", samples)
    positive_int("pairs", pairs)
    positive_int("memory", memory)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{who}: seed must be an int, got {seed!r}")
    _check_choice(who, "engine", engine, _ENGINES)
    try:
        out = tuple(float(r) for r in ranges)
    except (TypeError, ValueError):
        out = ()
    if not out or not all(math.isfinite(r) and r > 0 for r in out):
        raise ValueError(f"{who}: ranges must be positive numbers, like (0.1, 1), got {ranges!r}")
    return out


def _check_choice(who: str, name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{who}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _draw(surfaces: list[Surface], cols: int, pairs: int, centre: float | None, moved: str) -> Figure:
    """The surfaces, ``cols`` per row, as pyplot's current figure (SliceablePlot closes it)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4 * max(cols, 1), 3.6 * pairs))
    for k, s in enumerate(surfaces):
        # computed_zorder off: the (0, 0) marker is drawn after the surface, not hidden behind it
        ax: Any = fig.add_subplot(pairs, cols, k + 1, projection="3d", computed_zorder=False)
        x, y = np.meshgrid(s.xs, s.ys, indexing="ij")
        z = np.where(np.isfinite(s.losses), s.losses, np.nan)
        if np.isfinite(z).any():
            ax.plot_surface(x, y, z, cmap="viridis", linewidth=0, antialiased=False, zorder=1)
        if centre is not None and math.isfinite(centre):
            ax.scatter([0.0], [0.0], [centre], color="red", s=20, zorder=2, depthshade=False)
        ax.set_title(f"[{-s.radius:g}, {s.radius:g}]")
        ax.set_xlabel(f"d{2 * s.pair + 1}")
        ax.set_ylabel(f"d{2 * s.pair + 2}")
    fig.suptitle(
        f"Loss around the current weights (red: (0, 0)); rows: random direction pairs\nmoved: {moved}"
    )
    with warnings.catch_warnings():  # tight_layout may not fit 3D axes exactly; they stay as they are
        warnings.simplefilter("ignore")
        fig.tight_layout()
    return fig
