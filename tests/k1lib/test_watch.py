"""``k1lib.watch`` in a plain training loop: what it records equals what the Learner's HookModule
and HookParam record on the same model, data and seed, and both equal plain hooks and parameter
copies; only training batches count; hooks never outlive the ``with`` block, whatever ends it."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

import k1lib
import modsel

from .helpers import Batches, PlainHooks, assert_stats_close

BATCH = 256  # up's output, BATCH x 300, is above SMALL: reduced in its hook
CSS = "Linear, ReLU: HookModule; #block, #head: HookParam"


class Model(nn.Module):
    """A large output changed in place (``up`` then an in-place ReLU), a small one too
    (``down``), and a block called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 300)
        self.act = nn.ReLU(inplace=True)
        self.down = nn.Linear(300, 8)
        self.act2 = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act2(self.down(self.act(self.up(x))))
        return self.head(self.block(self.block(h)))


def data(train: int = 3, valid: int = 1) -> Batches:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(BATCH, 4, generator=g) for _ in range(train + valid)]
    pairs = [(x, x.sin().sum(1, keepdim=True)) for x in xs]
    return Batches(pairs[:train], pairs[train:])


def loss_f(y: Tensor, yb: Tensor) -> Tensor:
    return ((y - yb) ** 2).mean()


def model() -> Model:
    torch.manual_seed(0)
    return Model()


def hooks_left(m: nn.Module) -> dict[str, int]:
    """Module hooks of any kind still registered, by path (only modules having some)."""
    counts = {
        path: sum(len(h) for h in (sub._forward_hooks, sub._forward_pre_hooks, sub._backward_hooks))
        for path, sub in m.named_modules()
    }
    return {path: n for path, n in counts.items() if n}


def plain_loop(
    net: nn.Module, batches: Batches, css: str = CSS, ref: PlainHooks | None = None
) -> tuple[Any, list[dict[str, Tensor]]]:
    """Trains ``net`` on ``batches`` under ``k1lib.watch(net, css)``, with a validation pass (no
    grad, eval mode) after each batch; returns the watch and the parameters after each step."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    taken: list[dict[str, Tensor]] = []
    with k1lib.watch(net, css) as w:
        for xb, yb in batches.train:
            net.train()
            loss = loss_f(net(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.step()
            if ref is not None:
                ref.close_batch()
            taken.append({n: p.detach().clone() for n, p in net.named_parameters()})
            net.eval()
            with torch.no_grad():
                for xv, _ in batches.valid:
                    net(xv)
    return w, taken


# ---- the same statistics as the Learner's, and as plain hooks ---------------------------------------------


def test_watch_records_what_the_learner_and_plain_hooks_record() -> None:
    batches = data()
    l = k1lib.Learner()
    l.model, l.data, l.lossF = model(), batches, loss_f
    l.opt = torch.optim.SGD(l.model.parameters(), lr=0.01)
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    l.css = CSS
    l.run(1)

    net = model()
    paths = l.HookModule.names
    with PlainHooks({p: net.get_submodule(p) for p in paths}) as ref:
        w, taken = plain_loop(net, batches, ref=ref)

    hm, whm = l.HookModule, w.HookModule
    assert whm.names == paths == ["up", "act", "down", "act2", "block.0", "head"]
    assert whm.types == hm.types
    assert len(whm[0].forward.means) == len(hm[0].forward.means) == 3
    for i, path in enumerate(paths):
        for direction in ("forward", "backward"):
            ours, theirs = getattr(whm[i], direction), getattr(hm[i], direction)
            assert ours.names() == theirs.names() == ["means", "stds"]
            got = torch.stack([ours.means, ours.stds], 1)
            torch.testing.assert_close(
                got, torch.stack([theirs.means, theirs.stds], 1), rtol=1e-6, atol=0, equal_nan=True
            )
            assert_stats_close(got, getattr(ref, direction)[path], what=f"{path!r} {direction}")
    hp, whp = l.HookParam, w.HookParam
    assert whp.names == hp.names == ["block.0.weight", "block.0.bias", "head.weight", "head.bias"]
    torch.testing.assert_close(whp.data, hp.data, rtol=1e-6, atol=0, equal_nan=True)
    for i, name in enumerate(whp.names):
        assert_stats_close(whp.data[:, i], [t[name] for t in taken], ("means", "stds", "mins", "maxs"), name)


def test_records_read_like_the_callbacks() -> None:
    w, _ = plain_loop(model(), data(), "*")
    hm, hp = w.HookModule, w.HookParam
    assert hm.names[0] == "" and len(hm) == 9 and len(hp) == 8
    assert repr(hm).startswith(
        "HookModule record: 9 modules, 3 batches of means, stds each:\n  0. (root) (Model)"
    )
    assert repr(hp).startswith("HookParam record: 8 params, 3 means and stds each:\n  0. up.weight")
    part = hm[1:3]
    assert isinstance(part, type(hm)) and part.names == ["up", "act"]
    assert torch.equal(part[1].backward.stds, hm[2].backward.stds)
    assert torch.equal(hp[::2].data, hp.data[:, ::2])
    assert isinstance(hm.plot("means", "stds").plot(), Figure)
    assert isinstance(hp.plot()[1:].plot(), Figure)
    loaded = k1lib.callbacks.HookModule()  # the checkpoint format is the callback's
    loaded.load_state_dict(hm.state_dict())
    assert loaded.names == hm.names and torch.equal(loaded[3].forward.means, hm[3].forward.means)
    assert "w.step()" in repr(w) and "9 modules, 3 batches" in repr(w)


def test_recorders_are_chosen_before_the_block() -> None:
    net = model()
    w = k1lib.watch(net, "#head: HookModule")
    w.HookModule.withMinRecorder().withHook(lambda t: t.abs().mean(), "absmean")
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with w:
        with pytest.raises(RuntimeError, match="between runs"):
            w.HookModule.withMaxRecorder()
        for xb, yb in data().train:
            loss_f(net(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            w.step()
    head = w.HookModule[0]
    assert head.forward.names() == ["means", "stds", "mins", "absmean"] and len(head.backward.absmean) == 3
    w.HookModule.withMaxRecorder()  # between blocks: fine (a new record of the built-in columns)


# ---- which passes count ------------------------------------------------------------------------------------


def test_passes_without_gradients_or_paused_are_not_recorded() -> None:
    net = model()
    x, y = data().train[0]
    with k1lib.watch(net, "#head: HookModule") as w:
        loss_f(net(x), y).backward()
        with torch.no_grad():
            net(x * 100)  # validation: not the last call
        with torch.inference_mode():
            net(x * 100)
        with w.pause():
            net(x * 100)  # gradients on, paused
        w.step()
        net.eval()  # eval mode with gradients on is still training (frozen BatchNorm statistics, ...)
        loss_f(net(x), y).backward()
        w.step()
        for grad_off in (torch.no_grad, torch.inference_mode, w.pause):
            with grad_off():
                net(x)
            with pytest.raises(RuntimeError, match="no forward pass of the model since the last step"):
                w.step()
    means = w.HookModule[0].forward.means
    with torch.no_grad():  # no step was taken: both recorded calls saw x, not x * 100
        want = net.head(net.block(net.block(net.act2(net.down(net.act(net.up(x))))))).mean()
    torch.testing.assert_close(means, torch.stack([want, want]))


def test_step_outside_the_block_and_nested_blocks_raise() -> None:
    net = model()
    w = k1lib.watch(net)
    with pytest.raises(RuntimeError, match=re.escape("w.step() outside its with block")):
        w.step()
    with w:
        with pytest.raises(RuntimeError, match="already inside a with block"), w:
            pass
        assert hooks_left(net)  # the outer block's hooks are still there
    assert hooks_left(net) == {}


def test_a_second_block_goes_on_with_the_same_records() -> None:
    net = model()
    batches = data()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    w = k1lib.watch(net, "#down: HookModule, HookParam")
    for _ in range(2):
        with w:
            for xb, yb in batches.train:
                loss_f(net(xb), yb).backward()
                opt.step()
                opt.zero_grad()
                w.step()
            w.flush()
            assert len(w.HookParam.data) == len(w.HookModule[0].forward.means)
    assert len(w.HookParam.data) == 6 and len(w.HookModule[0].backward.means) == 6


def test_css_is_checked_and_an_empty_selection_warns() -> None:
    net = model()
    with pytest.raises(modsel.SelectorSyntaxError):
        k1lib.watch(net, "Linear:HookModule")
    with pytest.warns(
        UserWarning, match=r"HookModule: k1lib.watch's css selects no module .*'Conv2d: HookModule'"
    ):
        w = k1lib.watch(net, "Conv2d: HookModule")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        k1lib.watch(net, "#head: HookParam")  # HookModule not asked for: no warning
    with w:
        loss_f(net(data().train[0][0]), data().train[0][1]).backward()
        w.step()
    assert len(w.HookModule) == 0 and w.HookParam.data.shape == (0, 0, 4)
    with pytest.raises(TypeError, match=r"takes an nn\.Module, got str"):
        k1lib.watch("model")  # type: ignore[arg-type]


# dynamo reads .grad of the non-leaf outputs the hooks see, inside its own hide_warnings();
# pytest's "error" filter turns that hidden warning into a failure first (as in test_compile.py)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
@pytest.mark.parametrize("wrap", ["compile", "data-parallel"])
def test_a_wrapped_model_is_seen_through(wrap: str) -> None:
    torch._dynamo.reset()  # a fresh cache: Model.forward is compiled for this model
    batches = data()
    plain, _ = plain_loop(model(), batches)
    net = model()
    wrapped = torch.compile(net, backend="eager") if wrap == "compile" else nn.DataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with k1lib.watch(wrapped, CSS) as w:
        for xb, yb in batches.train:
            loss_f(wrapped(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            w.step()
    assert w.HookModule.names == plain.HookModule.names and w.HookParam.names == plain.HookParam.names
    torch.testing.assert_close(w.HookParam.data, plain.HookParam.data, rtol=1e-5, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(w.HookModule[4].backward.stds, plain.HookModule[4].backward.stds)
    assert hooks_left(net) == {}


# ---- hooks never outlive the block -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["after-forward", "after-backward", "under-no-grad"])
@pytest.mark.parametrize("exc", [ValueError("bad batch"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_no_hooks_outlive_the_block(where: str, exc: BaseException) -> None:
    net = model()
    batches = data()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    outputs: list[Tensor] = []
    spies = [m.register_forward_hook(lambda m, a, o: outputs.append(o)) for m in net.modules()]
    with pytest.raises(type(exc)), k1lib.watch(net) as w:
        for i, (xb, yb) in enumerate(batches.train):
            outputs.clear()
            if where == "under-no-grad" and i == 1:
                with torch.no_grad():
                    net(xb)
                raise exc
            loss = loss_f(net(xb), yb)
            if where == "after-forward" and i == 1:
                raise exc
            loss.backward()
            if where == "after-backward" and i == 1:
                raise exc
            opt.step()
            opt.zero_grad()
            w.step()
    for spy in spies:
        spy.remove()
    assert hooks_left(net) == {}
    assert outputs and not any(t._backward_hooks for t in outputs)  # no tensor hook left
    assert all(t.grad is None for t in outputs if t.retains_grad)  # retained gradients let go
    # the finished batch was recorded and flushed; the one cut short was not
    assert len(w.HookModule[0].forward.means) == 1 and len(w.HookParam.data) == 1
    loss_f(net(batches.train[0][0]), batches.train[0][1]).backward()  # the model trains on, unwatched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda() -> None:
    batches = data()
    batches.train = [(x.cuda(), y.cuda()) for x, y in batches.train]
    batches.valid = [(x.cuda(), y.cuda()) for x, y in batches.valid]
    net = model().cuda()
    with PlainHooks({p: net.get_submodule(p) for p in ("up", "down", "head")}) as ref:
        w, taken = plain_loop(net, batches, "#up, #down, #head: HookModule, HookParam", ref)
    assert w.HookModule[0].forward.means.device.type == "cpu" == w.HookParam.data.device.type
    for i, path in enumerate(w.HookModule.names):
        for direction in ("forward", "backward"):
            side = getattr(w.HookModule[i], direction)
            want = [None if t is None else t.cpu() for t in getattr(ref, direction)[path]]
            assert_stats_close(torch.stack([side.means, side.stds], 1), want, what=f"{path!r} {direction}")
    for i, name in enumerate(w.HookParam.names):
        want = [t[name].cpu() for t in taken]
        assert_stats_close(w.HookParam.data[:, i], want, ("means", "stds", "mins", "maxs"), name)


def test_two_watches_on_the_same_modules_both_get_the_gradients() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    with k1lib.watch(m, "Linear: HookModule") as a, k1lib.watch(m, "Linear: HookModule") as b:
        for _ in range(3):
            m(x).pow(2).mean().backward()
            a.step()
            b.step()
    for i in range(2):
        got = b.HookModule[i].backward.means
        assert not got.isnan().any(), got
        torch.testing.assert_close(got, a.HookModule[i].backward.means)


def test_a_prop_the_watch_does_not_read_is_refused_with_a_suggestion() -> None:
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with pytest.raises(ValueError, match=r"prop 'HookModul'.*did you mean 'HookModule'"):
        k1lib.watch(m, "Linear: HookModul")
    assert not m[0]._forward_hooks


def test_a_pass_without_gradients_runs_without_the_hooks() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    with k1lib.watch(m, "Linear: HookModule") as w:
        m(x).pow(2).mean().backward()
        w.step()
        with torch.no_grad():
            m(x)  # a validation pass: the Learner's runs with the hooks off too
        assert not m[0]._forward_hooks and not m[2]._forward_hooks
        m(x).pow(2).mean().backward()  # back on for the next training batch
        assert m[0]._forward_hooks
        w.step()
    assert w.HookModule.batches() == 2 and not m[0]._forward_hooks
    assert not w.HookModule[0].forward.means.isnan().any()


def test_a_pass_without_gradients_inside_a_batch_keeps_the_batch() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    xs = [torch.randn(16, 4) for _ in range(3)]
    expected = []
    with k1lib.watch(m, "#0: HookModule; #0: HookParam") as w:
        for x in xs:
            expected.append(m[0](x).detach().double().mean().item())
            m(x).pow(2).mean().backward()
            with torch.no_grad():
                m(x)  # after backward, before the step: the batch is still being recorded
            w.step()
    assert w.HookModule.batches() == w.HookParam.batches() == 3
    means = w.HookModule[0].forward.means.double()
    torch.testing.assert_close(means, torch.tensor(expected, dtype=torch.float64))


def test_a_forward_that_raises_is_not_a_batch() -> None:
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            self.lin(x)
            raise ValueError("boom")

    m = Fails()
    with k1lib.watch(m, "*") as w:
        with pytest.raises(ValueError, match="boom"):
            m(torch.randn(2, 4))
        with pytest.raises(RuntimeError, match="no forward pass"):
            w.step()


def test_the_watch_records_the_modules_own_output_whatever_other_hooks_do() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    m[2].register_forward_hook(lambda mod, args, out: out * 100)  # before the watch
    with k1lib.watch(m, "#2: HookModule") as w:
        m[2].register_forward_hook(lambda mod, args, out: out * 100)  # inside it
        for b in range(3):
            m(x).pow(2).mean().backward()
            w.step()
            if b == 0:
                with torch.no_grad():
                    m(x)  # the hooks come off and back on: still ahead of the others
    own = m[2](m[1](m[0](x))).detach().double().mean()  # hooks still apply here: undo them
    means = w.HookModule[0].forward.means.double()
    torch.testing.assert_close(means, (own / 10_000).expand(3))
