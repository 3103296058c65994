"""HookModule: what it records equals the same statistics taken plainly (forward hooks and tensor
hooks of our own), on every training batch and only then; hooks never outlive a run, whatever
ends it; the reading API (``[i]``, ``[a:b]``, ``plot``), recorders and state dicts."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

import k1lib
from k1lib.callbacks._stats import SMALL

from ..modsel.models import Network
from .helpers import Batches
from .test_stats import assert_stats

DIRECTIONS = ("forward", "backward")
README_CSS = "SkipBlock #0: HookParam\nSkipBlock: HookModule"


# ---- fixtures --------------------------------------------------------------------------------------


def data(train: int, valid: int = 1, size: int = 8, dim: int = 2, seed: int = 0) -> Batches:
    """Batches of ``(x, y)``: ``x`` of ``(size, dim)``, ``y = sin(x).sum(1)`` of ``(size, 1)``."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> list[tuple[Tensor, Tensor]]:
        xs = [torch.randn(size, dim, generator=g) for _ in range(n)]
        return [(x, x.sin().sum(1, keepdim=True)) for x in xs]

    return Batches(make(train), make(valid))


def make_learner(model: nn.Module, batches: Batches, css: str = "*", lr: float = 0.05) -> Any:
    """A quiet learner (no progress bar, no checkpoint files) with the default callbacks."""
    l = k1lib.Learner()
    l.model = model
    l.data = batches
    l.opt = torch.optim.SGD(model.parameters(), lr=lr)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    l.css = css
    return l


def readme_learner(train: int = 4, valid: int = 2) -> Any:
    """The README's network, optimizer and css on ``y = exp(x)``, as ``newL()`` builds it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(16, 1, generator=g) * 4 - 2 for _ in range(train + valid)]
    batches = Batches([(x, x.exp()) for x in xs[:train]], [(x, x.exp()) for x in xs[train:]])
    l = make_learner(Network(), batches, README_CSS)
    l.opt = torch.optim.Adam(l.model.parameters(), lr=1e-2)
    return l


def first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in map(first_tensor, output) if t is not None), None)
    return None


class Reference(k1lib.Callback):
    """The plain way to get what HookModule records: for each watched module and training batch,
    the output at hook time and the gradient of that output (a tensor hook), of the module's
    last call in the batch (None where there is none)."""

    order = 1  # its forward hooks go in before HookModule's

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.watched = modules
        self.forward: dict[str, list[Tensor | None]] = {n: [] for n in modules}
        self.backward: dict[str, list[Tensor | None]] = {n: [] for n in modules}
        self._handles: list[Any] = []
        self._now: dict[str, list[Tensor | None]] = {}
        self._calls: dict[str, int] = {}

    def startRun(self) -> None:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.watched.items()]

    def endRun(self) -> None:
        for handle in self._handles:
            handle.remove()

    def startBatch(self) -> None:
        self._now = {n: [None, None] for n in self.watched}
        self._calls = dict.fromkeys(self.watched, 0)

    def endBatch(self) -> None:
        if self.learner.model.training:
            for name, (fwd, bwd) in self._now.items():
                self.forward[name].append(fwd)
                self.backward[name].append(bwd)

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output)
            if not module.training or t is None:
                return
            self._calls[name] += 1
            call, now = self._calls[name], self._now[name]
            now[0], now[1] = t.detach().clone(), None
            if t.requires_grad:

                def grad(g: Tensor) -> None:
                    if call == self._calls[name]:  # the last call's gradient
                        now[1] = g.detach().clone()

                t.register_hook(grad)

        return hook


def watch(l: Any, paths: list[str] | None = None) -> Reference:
    """A Reference on ``paths`` (default: what HookModule will select), appended to ``l``."""
    model = l.model
    if paths is None:
        selected = [p for p, _ in l.moduleSelector.named_modules("HookModule")]
        seen: set[int] = set()
        paths = []
        for p in selected:
            if id(model.get_submodule(p)) not in seen:
                seen.add(id(model.get_submodule(p)))
                paths.append(p)
    ref = Reference({p: model.get_submodule(p) for p in paths})
    l.cbs.append(ref)
    return ref


def assert_recorded(hm: Any, ref: Reference, stats: tuple[str, ...] = ("means", "stds")) -> None:
    """Each of ``hm``'s modules recorded, per training batch, the statistics of what ``ref`` saw."""
    assert hm.names == list(ref.watched)
    for i, name in enumerate(hm.names):
        for direction in DIRECTIONS:
            side = getattr(hm[i], direction)
            got = torch.stack([getattr(side, s) for s in stats], 1)
            try:
                assert_stats(got, getattr(ref, direction)[name], stats)
            except AssertionError as e:
                raise AssertionError(f"module {name!r}, {direction}: {e}") from None


def hooks(model: nn.Module) -> dict[str, int]:
    """Forward hooks left on each module (only those that have some)."""
    return {name: len(m._forward_hooks) for name, m in model.named_modules() if m._forward_hooks}


# ---- recorded values equal direct computation ---------------------------------------------------------


def test_readme_network_records_what_plain_hooks_see() -> None:
    l = readme_learner()
    ref = watch(l)
    l.run(2)
    hm = l.HookModule
    assert hm.names == ["bulk.2", "bulk.3", "bulk.4"] and len(hm) == 3
    assert len(hm[0].forward.means) == 8
    assert_recorded(hm, ref)
    # statistics that are not all alike (a recorder reading a stale or shared buffer would be)
    assert len(set(hm[0].forward.means.tolist())) == 8
    assert not torch.equal(hm[0].backward.stds, hm[1].backward.stds)


@pytest.mark.parametrize(
    "custom",
    [pytest.param(False, id="builtin"), pytest.param(True, id="with-a-custom-recorder")],
)
@pytest.mark.parametrize("readme", [False, True], ids=["sequential", "readme-network"])
def test_every_module_of_the_default_css(custom: bool, readme: bool) -> None:
    # a custom recorder sends every output through a tensor hook instead of retain_grad: both paths
    if readme:
        l = readme_learner(train=3, valid=1)
        l.css = "*"
    else:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 3), nn.Linear(3, 1))
        l = make_learner(model, data(3))
    if custom:
        l.HookModule.withHook(lambda t: t.abs().mean(), "absmean")
    ref = watch(l)
    l.run(2)
    assert l.HookModule.names == [name for name, _ in l.model.named_modules()]
    assert_recorded(l.HookModule, ref)


class Mixed(nn.Module):
    """Outputs above and below SMALL elements (for batches of 224), one that needs no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Identity()  # its output (the input) needs no gradient
        self.up = nn.Linear(4, 300)
        self.act = nn.ReLU()
        self.wide = nn.Linear(300, 300)
        self.small = nn.Linear(300, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.wide(self.act(self.up(self.pre(x))))
        return self.head(torch.tanh(self.small(h)))


@pytest.mark.parametrize("custom", [False, True], ids=["builtin", "with-a-custom-recorder"])
def test_large_and_small_outputs_in_one_model(custom: bool) -> None:
    torch.manual_seed(0)
    l = make_learner(Mixed(), data(3, size=224, dim=4), "Mixed > *: HookModule", lr=0.01)
    l.HookModule.withMinRecorder().withMaxRecorder()
    if custom:
        l.HookModule.withForwardHook(lambda t: t.max(), "top")
    ref = watch(l)
    l.run(1)
    hm = l.HookModule
    assert 224 * 300 > SMALL >= 224 * 3
    assert_recorded(hm, ref, ("means", "stds", "mins", "maxs"))
    assert hm[hm.names.index("pre")].backward.means.isnan().all()  # no gradient: NaN, not an error


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda() -> None:
    torch.manual_seed(0)
    batches = data(3, size=224, dim=4)
    batches.train = [(x.cuda(), y.cuda()) for x, y in batches.train]
    batches.valid = [(x.cuda(), y.cuda()) for x, y in batches.valid]
    l = make_learner(Mixed().cuda(), batches, "Mixed > *: HookModule", lr=0.01)
    l.HookModule.withMinRecorder().withMaxRecorder()
    ref = watch(l)
    l.run(2)
    ref.forward = {n: [None if t is None else t.cpu() for t in ts] for n, ts in ref.forward.items()}
    ref.backward = {n: [None if t is None else t.cpu() for t in ts] for n, ts in ref.backward.items()}
    assert l.HookModule[0].forward.means.device.type == "cpu"
    assert_recorded(l.HookModule, ref, ("means", "stds", "mins", "maxs"))


def test_nan_and_inf_are_recorded_not_raised() -> None:
    torch.manual_seed(0)
    batches = data(4, size=4)
    x = batches.train[1][0]
    x[0, 0] = math.inf
    x = batches.train[2][0]
    x[1, 1] = math.nan
    l = make_learner(
        nn.Sequential(nn.Identity(), nn.Linear(2, 3), nn.Linear(3, 1)), batches, "Sequential > *: HookModule"
    )
    l.cbs.remove("CancelOnExplosion")
    ref = watch(l)
    l.run(1)
    hm = l.HookModule
    assert_recorded(hm, ref)
    identity = hm[hm.names.index("0")].forward
    assert identity.means[1] == math.inf and identity.stds[1].isnan()
    assert identity.means[2].isnan() and identity.means[0].isfinite()


class Odd(nn.Module):
    """Children returning a tuple, None and an int; one called every other batch (the 2nd, 4th)."""

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            h = self.lin(x)
            return h * 2, h

    class Nothing(nn.Module):
        def forward(self, x: Tensor) -> None:
            return None

    class Number(nn.Module):
        def forward(self, x: Tensor) -> int:
            return 3

    def __init__(self) -> None:
        super().__init__()
        self.pair = Odd.Pair()
        self.nothing = Odd.Nothing()
        self.number = Odd.Number()
        self.sometimes = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        h, _ = self.pair(x)
        self.nothing(h)
        self.number(h)
        if self.calls % 2 == 0:
            h = self.sometimes(h)
        return self.head(h)


def test_tuple_none_int_outputs_and_modules_not_called() -> None:
    torch.manual_seed(0)
    l = make_learner(Odd(), data(4), "#pair, #nothing, #number, #sometimes, #head: HookModule")
    ref = watch(l)
    l.run(1)
    hm = l.HookModule
    assert hm.names == ["pair", "nothing", "number", "sometimes", "head"]
    assert_recorded(hm, ref)  # the tuple's first tensor (h * 2) and its gradient
    for name in ("nothing", "number"):
        for direction in DIRECTIONS:
            assert getattr(hm[hm.names.index(name)], direction).means.isnan().all()
    sometimes = hm[hm.names.index("sometimes")].forward.means
    assert sometimes[[0, 2]].isnan().all() and sometimes[[1, 3]].isfinite().all()


@pytest.mark.parametrize("css", ["#nothing: HookModule", "#sometimes: HookModule"])
def test_batches_where_no_selected_module_gave_a_tensor_still_get_a_nan_row(css: str) -> None:
    torch.manual_seed(0)
    l = make_learner(Odd(), data(4), css)
    l.run(1)
    means = l.HookModule[0].forward.means
    assert len(means) == 4
    if css.startswith("#sometimes"):
        assert means[[0, 2]].isnan().all() and means[[1, 3]].isfinite().all()


def test_bfloat16_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    l = make_learner(Mixed(), data(2, size=224, dim=4), "Mixed > *: HookModule", lr=0.01)
    l.cbs.withDType(torch.bfloat16)
    ref = watch(l)
    l.run(1)
    assert ref.forward["wide"][0] is not None and ref.forward["wide"][0].dtype == torch.bfloat16
    assert_recorded(l.HookModule, ref)


class Shared(nn.Module):
    """One Linear registered at two places and called twice a batch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.again = self.a
        self.head = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.again(self.a(x) * 2))


def test_shared_module_is_recorded_once_with_its_last_call() -> None:
    torch.manual_seed(0)
    l = make_learner(Shared(3), data(3, dim=3), "Linear: HookModule")
    ref = watch(l)
    l.run(1)
    assert l.HookModule.names == ["a", "head"]  # at its first place, once
    assert_recorded(l.HookModule, ref)


def test_shared_module_with_a_large_output_records_its_last_calls_gradient() -> None:
    torch.manual_seed(0)
    l = make_learner(Shared(300), data(2, size=300, dim=300), "#a: HookModule", lr=1e-3)
    ref = watch(l)
    l.run(1)
    assert_recorded(l.HookModule, ref)


def test_output_changed_in_place_afterwards() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(inplace=True), nn.Linear(4, 1))
    l = make_learner(model, data(3), "#0: HookModule")
    ref = watch(l)
    l.run(1)
    assert_recorded(l.HookModule, ref)


# ---- which batches are recorded ---------------------------------------------------------------------------


def test_only_training_batches_are_recorded_and_runs_accumulate() -> None:
    torch.manual_seed(0)
    l = make_learner(
        nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), data(3, valid=2), "Linear: HookModule"
    )
    ref = watch(l)
    l.run(2)
    assert len(l.HookModule[0].forward.means) == 6 == len(l.Loss.train)
    l.run(1, 2)  # 2 training batches an epoch
    assert len(l.HookModule[0].backward.stds) == 8 == len(l.Loss.train)
    assert_recorded(l.HookModule, ref)
    l.record(1, 2)  # runs the model, records nothing here
    assert len(l.HookModule[0].forward.means) == 8
    assert hooks(l.model) == {}
    l.css = "ReLU: HookModule"  # another selection: a new record
    l.run(1)
    assert l.HookModule.names == ["1"] and len(l.HookModule[0].forward.means) == 3


def test_hooks_exist_in_training_batches_only() -> None:
    seen: list[tuple[bool, dict[str, int]]] = []

    class Spy(k1lib.Callback):
        order = 100

        def endPass(self) -> None:
            seen.append((self.learner.model.training, hooks(self.learner.model)))

    torch.manual_seed(0)
    l = make_learner(
        nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), data(2, valid=2), "Linear: HookModule"
    )
    l.cbs.append(Spy())
    l.run(2)
    assert [training for training, _ in seen] == [True, True, False, False] * 2
    assert all(h == ({"0": 1, "2": 1} if training else {}) for training, h in seen)
    assert hooks(l.model) == {}


class Raise(k1lib.Callback):
    """Raises ``exc`` at ``event`` from the training batch after the ``at``-th on."""

    def __init__(self, event: str, exc: BaseException, at: int = 1) -> None:
        super().__init__()
        self.exc, self.at, self.count = exc, at, 0
        setattr(self, event, self._maybe)

    def _maybe(self) -> None:
        if self.learner.model.training:
            self.count += 1
            if self.count > self.at:
                raise self.exc


class Boom(k1lib.Callback):
    order = 1  # before HookModule

    def endRun(self) -> None:
        raise RuntimeError("boom")


def _lossF_raising(exc: BaseException, after: int) -> Callable[[Tensor, Tensor], Tensor]:
    calls = [0]

    def lossF(y: Tensor, yb: Tensor) -> Tensor:
        calls[0] += 1
        if calls[0] > after:
            raise exc
        return ((y - yb) ** 2).mean()

    return lossF


@pytest.mark.parametrize(
    "how",
    ["cancelled", "cancel-on-low-loss", "lossF-raises", "keyboard-interrupt", "earlier-endRun-raises"],
)
def test_no_hooks_outlive_a_run(how: str) -> None:
    torch.manual_seed(0)
    l = make_learner(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), data(4), "*")
    expected: type[BaseException] | None = None
    if how == "cancelled":
        l.cbs.append(Raise("startPass", k1lib.CancelRunException("stop")))
    elif how == "cancel-on-low-loss":
        l.cbs.withCancelOnLowLoss(1e9)  # the first training loss is low enough
    elif how == "lossF-raises":
        l.lossF, expected = _lossF_raising(ValueError("bad loss"), after=1), ValueError
    elif how == "keyboard-interrupt":
        l.lossF, expected = _lossF_raising(KeyboardInterrupt(), after=1), KeyboardInterrupt
    else:  # a callback before HookModule fails in endRun while hooks are still in (mid-epoch)
        l.cbs.append(Raise("startPass", k1lib.CancelRunException("stop")))
        l.cbs.append(Boom())
        expected = RuntimeError
    if expected is None:
        l.run(2)
    else:
        with pytest.raises(expected):
            l.run(2)
    assert hooks(l.model) == {}
    recorded = len(l.HookModule[0].forward.means)
    # the batches that finished (the one cut short is not recorded)
    assert recorded == (0 if how == "cancel-on-low-loss" else 1)
    # nothing is left half-done: the next run records and adds recorders as usual
    l.HookModule.withMaxRecorder()
    for name in [n for n in l.cbs.names() if n in ("Raise", "Boom", "CancelOnLowLoss")]:
        l.cbs.remove(name)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    l.run(1)
    assert len(l.HookModule[0].forward.maxs) == 4 and hooks(l.model) == {}


def test_suspending_hook_module_mid_run_removes_its_hooks() -> None:
    seen: list[dict[str, int]] = []

    class Suspender(k1lib.Callback):
        order = 1

        def startBatch(self) -> None:
            if self.learner.model.training and self.learner.epoch == 0 and self.learner.batch == 1:
                self.learner.cbs.suspend(["HookModule"])
                seen.append(hooks(self.learner.model))

        def endEpoch(self) -> None:
            if self.learner.epoch == 0:
                self.learner.cbs.restore()

    torch.manual_seed(0)
    l = make_learner(
        nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), data(3), "Linear: HookModule"
    )
    l.cbs.append(Suspender())
    ref = watch(l)
    l.run(2)
    assert seen == [{"0": 1, "2": 1}]  # the Reference's own hooks only
    assert hooks(l.model) == {}
    # epoch 0: batch 0 only; epoch 1: all 3 (restored between epochs)
    for direction in DIRECTIONS:
        for name in ref.watched:
            batches = getattr(ref, direction)[name]
            getattr(ref, direction)[name] = [batches[0], *batches[3:]]
    assert_recorded(l.HookModule, ref)


def test_restoring_hook_module_mid_epoch_records_the_following_batches() -> None:
    class SuspendOneBatch(k1lib.Callback):
        order = 1

        def startBatch(self) -> None:
            if self.learner.model.training and self.learner.batch == 1:
                self.learner.cbs.suspend(["HookModule"])

        def endBatch(self) -> None:
            if self.learner.model.training and self.learner.batch == 1:
                self.learner.cbs.restore()

    torch.manual_seed(0)
    l = make_learner(
        nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), data(4), "Linear: HookModule"
    )
    l.cbs.append(SuspendOneBatch())
    ref = watch(l)
    l.run(1)
    for direction in DIRECTIONS:
        for name in ref.watched:
            batches = getattr(ref, direction)[name]
            getattr(ref, direction)[name] = [batches[0], *batches[2:]]
    assert_recorded(l.HookModule, ref)


def test_a_css_selecting_nothing_warns_once_and_records_nothing() -> None:
    torch.manual_seed(0)
    l = make_learner(
        nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), data(2), "Conv2d: HookModule\nLinear: HookParam"
    )
    message = re.escape("'HookModule'") + ".*" + re.escape(repr(l.css))
    with pytest.warns(UserWarning, match=message):
        l.run(1)
    assert len(l.HookModule) == 0 and hooks(l.model) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l.run(1)  # the same css: no second warning
        repr(l.HookModule)
        assert isinstance(l.HookModule.plot().plot(), Figure)
        l.css = "Linear: HookParam"  # HookModule is not asked for: nothing to warn about
        l.run(1)
    assert len(l.HookModule) == 0
    l.css = "ReLU: HookModule"
    with pytest.warns(UserWarning, match=re.escape("'ReLU: HookModule'")):
        l.run(1)


# ---- reading ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> tuple[Any, Reference]:
    """The README learner after 3 epochs of 4 batches, with min, max, hist and custom recorders."""
    l = readme_learner()
    hm = l.HookModule
    hm.withMinRecorder().withMaxRecorder().withHistRecorder(bins=6, low=-1.5, high=1.5)
    hm.withHook(lambda t: t.abs().mean(), "absmean")
    hm.withForwardHook(lambda t: t.norm(), "norm")
    hm.withBackwardHook(lambda t: torch.stack([t.min(), t.max()]), "range")
    ref = watch(l)
    l.run(3)
    return l, ref


def test_recorders_record_what_they_say(trained: tuple[Any, Reference]) -> None:
    l, ref = trained
    hm = l.HookModule
    assert_recorded(hm, ref, ("means", "stds", "mins", "maxs"))
    customs: dict[str, tuple[Callable[[Tensor], Tensor], tuple[str, ...]]] = {
        "hists": (lambda t: torch.histc(t.float(), bins=6, min=-1.5, max=1.5), DIRECTIONS),
        "absmean": (lambda t: t.abs().mean(), DIRECTIONS),
        "norm": (lambda t: t.norm(), ("forward",)),
        "range": (lambda t: torch.stack([t.min(), t.max()]), ("backward",)),
    }
    for i, name in enumerate(hm.names):
        for stat, (f, directions) in customs.items():
            for direction in DIRECTIONS:
                side = getattr(hm[i], direction)
                if direction not in directions:
                    with pytest.raises(AttributeError, match=f"no statistic '{stat}'"):
                        getattr(side, stat)
                    continue
                want = torch.stack([f(t).float() for t in getattr(ref, direction)[name]])
                torch.testing.assert_close(getattr(side, stat), want, rtol=1e-5, atol=1e-7)
    assert hm[0].forward.hists.shape == (12, 6) and hm[0].forward.hists.sum() > 0


def test_index_gives_one_modules_statistics(trained: tuple[Any, Reference]) -> None:
    hm = trained[0].HookModule
    m = hm[1]
    assert m.name == "bulk.3" and hm[-1].name == "bulk.4"
    assert m.forward.names() == ["means", "stds", "mins", "maxs", "hists", "absmean", "norm"]
    assert m.backward.names() == ["means", "stds", "mins", "maxs", "hists", "absmean", "range"]
    assert m.backward.stds.shape == (12,) and not torch.equal(m.backward.stds, hm[0].backward.stds)
    with pytest.raises(AttributeError, match=r"no statistic 'median'; recorded: means, stds, mins, maxs, "):
        m.forward.median  # noqa: B018
    with pytest.raises(IndexError, match="3 modules"):
        hm[3]
    with pytest.raises(TypeError, match="int or a slice"):
        hm["bulk.2"]
    assert "bulk.3" in repr(m)


def test_slices_are_new_hook_modules_with_their_data(trained: tuple[Any, Reference]) -> None:
    hm = trained[0].HookModule
    for index in (slice(1, 3), slice(None, None, 2), slice(-1, None)):
        part = hm[index]
        assert isinstance(part, k1lib.callbacks.HookModule) and part is not hm
        picked = list(range(3))[index]
        assert part.names == [hm.names[i] for i in picked] and len(part) == len(picked)
        for j, i in enumerate(picked):
            for direction in DIRECTIONS:
                for stat in ("means", "stds", "maxs", "hists", "absmean"):
                    assert torch.equal(
                        getattr(getattr(part[j], direction), stat), getattr(getattr(hm[i], direction), stat)
                    )
    assert len(hm[5:]) == 0


def test_plot_draws_each_statistic_for_each_direction(trained: tuple[Any, Reference]) -> None:
    hm = trained[0].HookModule
    plot = hm.plot("means", "stds")
    assert isinstance(plot, k1lib.viz.SliceablePlot)
    fig = plot.plot()
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4 and all(len(ax.lines) == 3 for ax in axes)
    fig = plot[10:].plot()
    means_forward = fig.axes[0]
    assert list(means_forward.lines[1].get_xdata()) == [10, 11]
    assert list(means_forward.lines[1].get_ydata()) == hm[1].forward.means[10:].tolist()
    # a forward-only statistic: the backward panel is hidden
    fig = hm.plot("norm").plot()
    assert [ax.get_visible() for ax in fig.axes] == [True, False]
    assert isinstance(hm.plot().plot(), Figure)  # means and stds by default
    with pytest.raises(ValueError, match=r"\['nope'\] not recorded; recorded: means, stds, mins, maxs"):
        hm.plot("means", "nope")


def test_plot_refuses_statistics_with_several_values_per_batch(trained: tuple[Any, Reference]) -> None:
    hm = trained[0].HookModule
    with pytest.raises(ValueError, match=r"one value per batch; \['hists'\]"):
        hm.plot("means", "hists")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "No artists with labels" from legend()
        fig = hm[:0].plot("means").plot()
    assert fig is not None


def test_state_dict_round_trip(trained: tuple[Any, Reference], tmp_path: Any) -> None:
    hm = trained[0].HookModule
    path = tmp_path / "hm.pth"
    torch.save(hm.state_dict(), path)
    loaded = k1lib.callbacks.HookModule()
    loaded.load_state_dict(torch.load(path, weights_only=True))
    assert loaded.names == hm.names and loaded.types == hm.types
    for i in range(len(hm)):
        for direction in DIRECTIONS:
            side, back = getattr(hm[i], direction), getattr(loaded[i], direction)
            assert back.names() == side.names()
            for stat in side.names():
                assert torch.equal(getattr(back, stat), getattr(side, stat)), (i, direction, stat)
    assert torch.equal(loaded[2].backward.maxs, hm[2].backward.maxs)


def test_recorder_names_and_arguments_are_checked() -> None:
    hm = k1lib.callbacks.HookModule()
    hm.withHook(lambda t: t.mean(), "mine")
    for bad in ("means", "mine", "not an identifier"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            hm.withHook(lambda t: t.mean(), bad)
    with pytest.raises(ValueError, match="both False"):
        hm.withHook(lambda t: t.mean(), "other", forward=False, backward=False)
    with pytest.raises(ValueError, match="bins >= 1 and low < high"):
        hm.withHistRecorder(bins=0)
    with pytest.raises(ValueError, match="bins >= 1 and low < high"):
        hm.withHistRecorder(low=1, high=1)


def test_a_recorder_giving_different_shapes_raises_naming_the_modules() -> None:
    torch.manual_seed(0)
    l = make_learner(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), data(2), "Linear: HookModule")
    l.HookModule.withForwardHook(lambda t: t[0], "firstRow")  # (3,) and (1,)
    with pytest.raises(ValueError, match=r"'firstRow' gave shapes other than \(3,\) for \['1'\]"):
        l.run(1)
    assert hooks(l.model) == {}


def test_adding_a_recorder_during_a_run_raises() -> None:
    class AddRecorder(k1lib.Callback):
        def startEpoch(self) -> None:
            self.learner.HookModule.withMinRecorder()

    torch.manual_seed(0)
    l = make_learner(nn.Sequential(nn.Linear(2, 1)), data(1))
    l.cbs.append(AddRecorder())
    with pytest.raises(RuntimeError, match="between runs"):
        l.run(1)
    assert hooks(l.model) == {}
