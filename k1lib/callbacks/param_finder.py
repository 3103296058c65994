"""``ParamFinder``: a range test that suggests a value for one optimizer hyperparameter.

``l.ParamFinder.plot()`` trains for a few batches while raising the hyperparameter (``lr`` by
default) exponentially from ``start`` to ``end``, one value per batch, stops once the loss
diverges, prints the suggested value and returns the loss-against-value plot. Afterwards the
learner is exactly as before: weights, optimizer state and hyperparameters, callbacks, torch's
random number generators and the learner's fields. Between tests this callback handles no event,
so a normal ``l.run`` pays nothing for it: the test runs with a private callback appended for
its duration.

The sweep itself (``_Sweep``: the values, the divergence rule, the suggestion) knows no
Learner. Two drivers run its training batches: ``_RangeTest``, the callback appended to a
Learner run, and ``find_lr`` (``k1lib.find_lr``), a plain loop over a model, an optimizer and a
loader, as a hand-written training loop would be; on the same model, data and seed both give
the same losses and suggestion.

This module is not a scheduler or a tuner: it makes one short sweep from the current weights.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import _distributed
from .._batch import forward, loss_of, split
from .._live import say
from .._rng import RngSnapshot, loader_generators
from .._warn import warn
from .callback import Callback, CancelEpochException, CancelRunException

if TYPE_CHECKING:
    from .._learner import Learner
    from ..viz import SliceablePlot

__all__ = ["ParamFinder", "RangeTestResult", "find_lr"]

# during the test, the callbacks that shape batches (``shapes_batch``) and the progress bar keep
# running (and get their state back afterwards); every other one (recorders, autosave, cancel
# rules) is suspended


def _kept(cb: Callback) -> bool:
    from .progress_bar import ProgressBar

    return cb.shapes_batch or isinstance(cb, ProgressBar)


_TEST_NAME = "_ParamFinderTest"
_PLOT_DOCS = "Reminder: slice range here is actually [0, 1], because it's kinda hard to slice the normal way"

# The sweep's pace, the smoothing, the divergence threshold and the suggestion's divisor were
# chosen together by measurement (benchmarks/bench_param_finder.py, README network with Adam).
# A slower sweep trains longer at each value, so the loss turns up at a lower value and the
# divisor that works changes with the pace: the pace is therefore fixed, and ``samples`` only
# caps the batches (a range that needs more is swept faster).
_PER_DECADE = 14  # batches per factor of 10: 1e-6 to 10 in 99 batches
_WINDOW = 5  # batches of exponential smoothing; one noisy batch must not look like divergence
_DIVERGE_FACTOR = 4.0  # smoothed loss above this many times its lowest: diverged
_DIVISOR = 40.0  # suggestion = value where the loss diverged / this
_MIN_SAMPLES = 10


class ParamFinder(Callback):
    """Range test for one optimizer hyperparameter (see the module docstring).

    The value rises by 10x every 14 batches from ``start`` to ``end`` (1e-6 to 10: 99
    batches); ``samples`` is the most batches a test takes, a wider range being swept faster
    to fit. The test stops once the loss diverges (about 80 batches on the README network with
    Adam). The suggestion is the value where it diverged divided by 40, a rule measured on
    learning rates; for another hyperparameter read the plot."""

    order = 30
    doc = """
- cb.plot(samples=100, start=1e-6, end=10, param="lr"): to run a range test (at most
    `samples` batches), print the suggested param and plot loss against param
- cb.run(samples=100, start=1e-6, end=10, param="lr"): the same test, returns the suggested
    param without printing or plotting
- cb.params, cb.losses: the params and losses of the last test, one per batch
- cb.suggestion: the last suggested param
"""

    def __init__(self) -> None:
        super().__init__()
        self.param = "lr"
        self.params: list[float] = []
        self.losses: list[float] = []
        self.suggestion: float | None = None

    def run(self, samples: int = 100, start: float = 1e-6, end: float = 10.0, param: str = "lr") -> float:
        """Sweep ``param`` exponentially from ``start`` to ``end`` in at most ``samples``
        training batches (fewer when the loss diverges), put the learner back as it was, and
        return the suggested value. Arguments are checked before anything changes."""
        _check_arguments(samples, start, end)
        test = self._test(_schedule(samples, start, end), param)
        self.param, self.params, self.losses = param, test.params, test.losses
        self.suggestion = test.sweep.suggest("ParamFinder")
        return self.suggestion

    def _test(self, values: list[float], param: str) -> _RangeTest:
        """One training batch for each of ``values`` until the loss diverges, with the
        learner restored afterwards (also what the benchmark calls with other schedules)."""
        learner = self.learner
        learner.check_ready()
        learner.shard()  # FSDP: before the snapshot, which puts the tensors it took back
        assert learner.opt is not None
        test = _RangeTest(_Sweep(values, _ratios(learner.opt.param_groups, param), param))
        with _restored(learner):
            quiet = [cb.name for cb in learner.cbs if not _kept(cb)]
            states = [(cb, copy.deepcopy(cb.state_dict())) for cb in learner.cbs if _kept(cb)]
            with learner.cbs.suspend(quiet), _states_restored(states):
                learner.cbs.append(test, _TEST_NAME)
                try:
                    learner.run(_epochs_for(learner.data.train, len(values)))
                finally:
                    learner.cbs.remove(_TEST_NAME)
        if not test.params:
            raise ValueError("ParamFinder: the range test ran no training batch (the train loader gave none)")
        return test

    def plot(self, samples: int = 100, start: float = 1e-6, end: float = 10.0, param: str = "lr") -> Any:
        """``run``, print ``Suggested param: <value>`` and return the plot of loss against
        param (a ``SliceablePlot``); its slices are fractions of the test, in [0, 1]: ``p[:0.99]``
        leaves out the last batches, where the loss blew up."""
        suggestion = self.run(samples, start, end, param)
        if _distributed.rank() == 0:
            say(f"Suggested param: {suggestion}")
        return range_plot(self.params, self.losses, suggestion, param)


def range_plot(
    params: Sequence[float], losses: Sequence[float], suggestion: float, param: str
) -> SliceablePlot:
    """The plot of a range test: raw and smoothed loss against the swept value (log scale), the
    suggestion marked; a ``SliceablePlot`` whose slices are fractions of the test, in [0, 1]."""
    from ..viz import SliceablePlot

    params, losses = list(params), list(losses)
    smoothed = _smooth(losses)

    def draw(sl: slice) -> None:
        import matplotlib.pyplot as plt

        lo, hi = _fraction_bounds(sl, len(params))
        ax = plt.gca()
        ax.plot(params[lo:hi], losses[lo:hi], alpha=0.35, label="loss")
        ax.plot(params[lo:hi], smoothed[lo:hi], label="smoothed loss")
        ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {param} {suggestion:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel("loss")
        ax.legend()

    return SliceablePlot(draw, docs=_PLOT_DOCS)


class _Sweep:
    """One range test, whatever runs the training batches: before each batch ``apply`` sets
    the next value in every param group (keeping their ``ratios``), after its loss ``record``
    says whether the loss diverged: not a finite number, or its smoothed value above
    ``_DIVERGE_FACTOR`` times its lowest (the lowest counted once the smoothing window is full,
    so early noise cannot stop the test). ``done`` once the values are used up or it diverged."""

    def __init__(self, values: list[float], ratios: list[float], param: str) -> None:
        self.values, self.ratios, self.param = values, ratios, param
        self.params: list[float] = []
        self.losses: list[float] = []
        self.diverged = False
        self._smoother = _Smoother()
        self._best = math.inf

    @property
    def done(self) -> bool:
        return self.diverged or len(self.params) >= len(self.values)

    def apply(self, opt: torch.optim.Optimizer) -> None:
        """Set the next value (the one the next ``record`` is for) in ``opt``'s param groups."""
        value = self.values[len(self.params)]
        for group, ratio in zip(opt.param_groups, self.ratios, strict=True):
            group[self.param] = value * ratio

    def record(self, loss: float) -> bool:
        """Record the loss of the next value; True when it diverged (the test ends)."""
        self.params.append(self.values[len(self.params)])
        self.losses.append(loss)
        smoothed = self._smoother.add(loss)
        if len(self.losses) >= _WINDOW:
            self._best = min(self._best, smoothed)
        if not math.isfinite(loss) or smoothed > _DIVERGE_FACTOR * self._best:
            self.diverged = True
        return self.diverged

    def suggest(self, who: str) -> float:
        """The suggested value: where the loss diverged divided by ``_DIVISOR``; with a warning
        naming ``who`` when it never diverged (the suggestion may then be too low)."""
        suggestion = self.params[-1] / _DIVISOR
        if len(self.losses) < _WINDOW and not all(math.isfinite(x) for x in self.losses):
            warn(
                f"{who}: the loss was not a finite number at {self.param}={self.params[-1]:.3g}, "
                f"after {len(self.losses)} batch(es): the suggestion ({suggestion:.3g}) means "
                "nothing; check the loss function and the data"
            )
        elif not self.diverged:
            warn(
                f"{who}: the loss did not diverge up to {self.param}={self.params[-1]:.3g}, so the "
                f"suggestion ({suggestion:.3g}) may be too low; try a larger end"
            )
        return suggestion


class _RangeTest(Callback):
    """Drives a ``_Sweep`` from a Learner run: sets the value before each training batch,
    records the loss, skips validation, ends each epoch once the schedule is used up and
    cancels the run when the loss diverges."""

    order = 0  # first, so that a batch past the schedule is cancelled before anything acts on it
    exchanges_in_batches = True  # under DDP, each loss is averaged over the ranks

    def __init__(self, sweep: _Sweep) -> None:
        super().__init__()
        self.sweep = sweep

    @property
    def params(self) -> list[float]:
        return self.sweep.params

    @property
    def losses(self) -> list[float]:
        return self.sweep.losses

    @property
    def diverged(self) -> bool:
        return self.sweep.diverged

    def startEpoch(self) -> None:
        if self.sweep.done:
            raise CancelEpochException("range test done")

    def startBatch(self) -> None:
        # the value is recorded with its loss (endLoss): a batch that never gets there (a
        # cancel, or under DDP a batch another rank's loader had no match for) takes none
        if self.sweep.done:
            raise CancelEpochException("range test done")
        opt = self.learner.opt
        assert opt is not None  # check_ready: set for every run
        self.sweep.apply(opt)

    def endLoss(self) -> None:
        loss = float(self.learner.loss.detach().float().mean())
        averaged = self.learner.group.mean(loss)  # several processes: the same on every rank
        assert averaged is not None  # this rank has one
        if self.sweep.record(averaged):
            raise CancelRunException("Loss increases significantly")

    def startValidBatches(self) -> None:
        raise CancelEpochException("range test skips validation")


# ---- without a Learner ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RangeTestResult:
    """What ``find_lr`` returns: the swept ``param``, the ``params`` and ``losses`` of the test
    (one per training batch), the ``suggestion`` and whether the loss ``diverged``; ``plot()``
    is ``l.ParamFinder.plot()``'s figure (a ``SliceablePlot``: ``r.plot()[:0.99]``)."""

    param: str
    params: list[float]
    losses: list[float]
    suggestion: float
    diverged: bool

    def plot(self) -> SliceablePlot:
        return range_plot(self.params, self.losses, self.suggestion, self.param)

    def __repr__(self) -> str:
        how = "diverged" if self.diverged else "did not diverge"
        return (
            f"RangeTestResult: {self.param} from {self.params[0]:.3g} to {self.params[-1]:.3g} in "
            f"{len(self.params)} batches, {how}; suggestion {self.suggestion:.3g}. Use .plot(), "
            ".params, .losses"
        )


def find_lr(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loader: Iterable[Any],
    lossF: Callable[[Any, Any], Any] | None = None,  # noqa: N803 - the Learner's name
    *,
    samples: int = 100,
    start: float = 1e-6,
    end: float = 10.0,
    param: str = "lr",
) -> RangeTestResult:
    """``l.ParamFinder.run()`` without a Learner: train ``model`` with ``opt`` on ``loader``'s
    batches (read again from the start when it runs out), one batch per value of ``param``
    rising 10x every 14 batches from ``start`` to ``end`` (at most ``samples`` batches), until
    the loss diverges; then put back the model's tensors and grads, its modules' train/eval
    flags, the optimizer's state and hyperparameters, torch's random generators and those
    ``loader`` holds, bitwise. Batches are ``(xb, yb)`` pairs or mappings of the model's keyword
    arguments; the loss is ``lossF(model(xb), yb)``, or with ``lossF=None`` the output's own
    ``.loss`` (a Hugging Face model given labels). The suggestion is the value where the loss
    diverged divided by 40 (a warning when it never did). One process: under several, each rank
    sweeps on its own (the Learner's ParamFinder averages the ranks' losses).

    Raises ``TypeError`` for a model that is not an ``nn.Module``, an optimizer that is not a
    ``torch.optim.Optimizer``, a ``lossF`` that is not callable or a loader that is not
    iterable, and ``ValueError`` for an optimizer holding tensors that are not the model's
    parameters, a loader that gives no batch or bad ``samples``/``start``/``end``/``param``:
    all before anything changes, except the empty loader (found by reading it)."""
    _check_standalone(model, opt, loader, lossF)
    _check_arguments(samples, start, end)
    sweep = _Sweep(_schedule(samples, start, end), _ratios(opt.param_groups, param, "find_lr"), param)
    modes = [(m, m.training) for m in model.modules()]
    with _model_restored(model, opt), _loader_restored(loader):
        try:
            model.train()
            _plain_sweep(model, opt, loader, lossF, sweep)
        finally:
            for m, training in modes:
                m.training = training
    if not sweep.params:
        raise ValueError(f"find_lr: the loader ({type(loader).__name__}) gave no batch")
    return RangeTestResult(param, sweep.params, sweep.losses, sweep.suggest("find_lr"), sweep.diverged)


def _plain_sweep(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loader: Iterable[Any],
    lossF: Callable[[Any, Any], Any] | None,  # noqa: N803
    sweep: _Sweep,
) -> None:
    """The Learner's training batch, nothing else: forward, loss, backward, step, zero_grad;
    epochs over ``loader`` until the sweep is done or an epoch gives no batch."""
    while not sweep.done:
        batches = iter(loader)
        fetched = False
        while not sweep.done:
            try:
                batch = next(batches)
            except StopIteration:
                break
            fetched = True
            sweep.apply(opt)
            xb, yb = split(batch)
            loss = loss_of(lossF, forward(model, xb), yb)
            if not isinstance(loss, torch.Tensor):
                raise TypeError(f"find_lr: lossF must return a tensor, got {type(loss).__name__}")
            if loss.numel() != 1:
                raise ValueError(
                    f"find_lr: the loss must be one number, got a tensor of shape {tuple(loss.shape)}: "
                    "reduce it in lossF (e.g. .mean())"
                )
            if sweep.record(float(loss.detach().float().mean())):
                return
            if not loss.requires_grad:
                raise ValueError(
                    "find_lr: the loss has no gradient (computed under torch.no_grad(), detached, "
                    "or every parameter frozen), so there is nothing to train"
                )
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad()
        if not fetched:
            return


def _check_standalone(model: object, opt: object, loader: object, lossF: object) -> None:  # noqa: N803
    if not isinstance(model, nn.Module):
        raise TypeError(f"find_lr: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(
            "find_lr: opt must be a torch.optim.Optimizer over the model's parameters, got "
            f"{type(opt).__name__}"
        )
    if lossF is not None and not callable(lossF):
        raise TypeError(
            f"find_lr: lossF must be callable as lossF(y, yb), or None to use the output's .loss; "
            f"got {type(lossF).__name__}"
        )
    if isinstance(loader, torch.Tensor | str | bytes) or not isinstance(loader, Iterable):
        raise TypeError(
            f"find_lr: loader must be an iterable of batches ((xb, yb) pairs or mappings), got "
            f"{type(loader).__name__}"
        )
    ours = {id(p) for p in model.parameters()}
    held = [p for group in opt.param_groups for p in group["params"]]
    foreign = sum(id(p) not in ours for p in held)
    if foreign:
        raise ValueError(
            f"find_lr: {foreign} of the {len(held)} tensors opt optimizes are not parameters of the "
            f"model ({type(model).__name__}): build it from this model, e.g. "
            "torch.optim.Adam(model.parameters(), lr=1e-3)"
        )
    if _sized(loader) == 0:
        raise ValueError(f"find_lr: the loader ({type(loader).__name__}) has no batches")
    closure = inspect.signature(opt.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise TypeError(
            f"find_lr: {type(opt).__name__}.step needs a closure (as LBFGS); the range test takes "
            "one plain step per batch: use an optimizer such as SGD or Adam"
        )


def _sized(loader: object) -> int | None:
    """``len(loader)``, None without one (a DataLoader over an IterableDataset raises)."""
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:
        return None


@contextmanager
def _model_restored(model: nn.Module, opt: torch.optim.Optimizer) -> Iterator[None]:
    """The model's tensors and grads, the optimizer's state and hyperparameters and torch's
    global generators, put back after the block, even when it raises."""
    saved, state, rng = _ModelSnapshot(model), _OptimizerSnapshot(opt), RngSnapshot()
    try:
        yield
    finally:
        saved.restore()
        state.restore()
        rng.restore()


@contextmanager
def _loader_restored(loader: object) -> Iterator[None]:
    """The generators ``loader`` draws its order from, put back after the block."""
    states = [(g, g.get_state()) for _, g in loader_generators(loader)]
    try:
        yield
    finally:
        for generator, state in states:
            generator.set_state(state)


class _Smoother:
    """Exponential smoothing over ``_WINDOW`` batches, bias-corrected (the first values are not
    pulled towards 0); a non-finite loss counts as the last finite one."""

    def __init__(self) -> None:
        self.beta = 1 - 1 / _WINDOW
        self.avg, self.n, self.last = 0.0, 0, 0.0

    def add(self, loss: float) -> float:
        self.last = loss if math.isfinite(loss) else self.last
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * self.last
        return self.avg / (1 - self.beta**self.n)


def _smooth(losses: Sequence[float]) -> list[float]:
    smoother = _Smoother()
    return [smoother.add(loss) for loss in losses]


# ---- arguments -------------------------------------------------------------------------------


def _check_arguments(samples: object, start: object, end: object) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < _MIN_SAMPLES:
        raise ValueError(f"samples must be an int of at least {_MIN_SAMPLES}, got {samples!r}")
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number (the sweep is exponential), got {value!r}")
    assert isinstance(start, int | float) and isinstance(end, int | float)
    if not start < end:
        raise ValueError(f"start must be below end, got start={start!r}, end={end!r}")


def _ratios(groups: list[dict[str, Any]], param: str, who: str = "ParamFinder") -> list[float]:
    """Each param group's value relative to the first group's (all 1 unless every group holds a
    positive number): the sweep keeps those ratios. Errors start with ``who``."""
    missing = [i for i, g in enumerate(groups) if param not in g]
    if missing:
        known = sorted({k for g in groups for k in g if k != "params"})
        close = difflib.get_close_matches(param, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"{who}: the optimizer's param groups have no hyperparameter {param!r}; {hint}"
            f"they have: {', '.join(known)}"
        )
    values = []
    for i, g in enumerate(groups):
        value = g[param]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"{who} sweeps a number; param group {i}'s {param!r} is {type(value).__name__} {value!r}"
            )
        values.append(float(value))
    if all(v > 0 and math.isfinite(v) for v in values):
        return [v / values[0] for v in values]
    return [1.0] * len(values)


def _schedule(samples: int, start: float, end: float) -> list[float]:
    """``start`` to ``end``, rising 10x every ``_PER_DECADE`` values, in at most ``samples``
    values (a wider range rises faster) and at least ``_MIN_SAMPLES``."""
    needed = round(math.log10(end / start) * _PER_DECADE) + 1
    n = min(samples, max(needed, _MIN_SAMPLES))
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


def _epochs_for(loader: Any, samples: int) -> int:
    """Epochs enough for ``samples`` training batches (each at least 1 when the loader has no
    length)."""
    try:
        size = _distributed.batches_per_rank(loader)  # with several processes: one rank's share
    except TypeError:
        return samples
    return math.ceil(samples / max(size, 1))


def _fraction_bounds(sl: slice, n: int) -> tuple[int, int]:
    """Indices of ``sl``, whose bounds are fractions of the test in [0, 1]."""
    bounds = []
    for part, default in ((sl.start, 0.0), (sl.stop, 1.0)):
        value = default if part is None else part
        if not 0 <= value <= 1:
            raise ValueError(
                f"ParamFinder's plot slices with fractions in [0, 1] (e.g. p[:0.99]), got {sl!r}"
            )
        bounds.append(round(value * n))
    return bounds[0], bounds[1]


# ---- saving and restoring the learner ------------------------------------------------------------


@contextmanager
def _restored(learner: Learner) -> Iterator[None]:
    """Run the block, then put back the model's tensors (and their grads), the optimizer's state
    and hyperparameters, the random number generators and the learner's fields, even when the
    block raises."""
    assert learner.model is not None and learner.opt is not None  # check_ready ran
    model = _ModelSnapshot(learner.model)
    opt = _OptimizerSnapshot(learner.opt)
    rng = RngSnapshot(learner.data)
    fields = learner.fields()
    try:
        yield
    finally:
        model.restore()
        opt.restore()
        rng.restore()
        learner.restore_fields(fields)


class _ModelSnapshot:
    """Copies of every parameter and buffer (and grad). A dtype cast during the test (the DType
    callback) is undone too: the same tensor objects get their data back."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.slots: list[tuple[torch.nn.Module, str, torch.Tensor]] = []
        self.copies: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for module in model.modules():
            owned = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, tensor in owned:
                self.slots.append((module, name, tensor))
                if id(tensor) not in self.copies:
                    grad = tensor.grad.detach().clone() if tensor.grad is not None else None
                    self.copies[id(tensor)] = (tensor, tensor.detach().clone(), grad)

    def restore(self) -> None:
        with torch.no_grad():
            for module, name, tensor in self.slots:
                if getattr(module, name) is not tensor:
                    setattr(module, name, tensor)
            for tensor, saved, grad in self.copies.values():
                same = (tensor.dtype, tensor.shape, tensor.device) == (saved.dtype, saved.shape, saved.device)
                if same:
                    tensor.copy_(saved)
                else:
                    tensor.data = saved
                tensor.grad = grad


class _OptimizerSnapshot:
    """Copies of the optimizer's per-parameter state and of each param group's hyperparameters."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.state = {p: copy.deepcopy(s) for p, s in opt.state.items()}
        self.groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]

    def restore(self) -> None:
        self.opt.state.clear()
        self.opt.state.update(self.state)
        for group, saved in zip(self.opt.param_groups, self.groups, strict=True):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            group.update(saved)


@contextmanager
def _states_restored(states: list[tuple[Callback, dict[str, Any]]]) -> Iterator[None]:
    """Put back the state of the callbacks that ran during the test (a GradScaler's scale)."""
    try:
        yield
    finally:
        for cb, state in states:
            if state:
                cb.load_state_dict(state)
