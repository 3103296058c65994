"""ModuleCapture and ParamCapture on a bare model, no Learner: what one batch writes equals the
same statistics taken with plain hooks (small and large outputs, outputs changed in place,
modules called twice, tuple and dict outputs, outputs without gradient, custom recorders), and
``remove`` leaves no hook behind, also in the middle of a batch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from k1lib.callbacks._module_capture import ModuleCapture
from k1lib.callbacks._module_record import ModuleRecord
from k1lib.callbacks._param_capture import ParamCapture
from k1lib.callbacks._param_record import ParamRecord
from k1lib.callbacks._stats import SMALL, STATS

from .helpers import PlainHooks, assert_stats_close

BATCH = 256


class Pair(nn.Module):
    """Returns a tuple: the statistic is of its first tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, 8)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.lin(x)
        return h * 2, h


class Named(nn.Module):
    """Returns a dict: the statistic is of its first entry."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"first": x.tanh(), "second": x}


class Net(nn.Module):
    """A large output (``up``: BATCH x 300 > SMALL), one reduced with others of its size, one
    changed in place afterwards (``small``, then an in-place ReLU), a tuple and a dict output, a
    module called twice (``shared``) and one whose output needs no gradient (``pre``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Identity()
        self.up = nn.Linear(4, 300)
        self.act = nn.ReLU()
        self.pair = Pair(300)
        self.named = Named()
        self.small = nn.Linear(8, 8)
        self.relu = nn.ReLU(inplace=True)
        self.shared = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.up(self.pre(x)))
        h, _ = self.pair(h)
        h = self.named(h)["first"]
        h = self.relu(self.small(h))
        h = self.shared(torch.tanh(self.shared(h)))
        return self.head(h)


def batches(n: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(BATCH, 4, generator=g) for _ in range(n)]
    return [(x, x.sin().sum(1, keepdim=True)) for x in xs]


def train(
    model: nn.Module,
    capture: ModuleCapture,
    data: list[tuple[Tensor, Tensor]],
    ref: PlainHooks | None = None,
    params: ParamCapture | None = None,
) -> list[dict[str, Tensor]]:
    """A plain loop driving ``capture``; returns copies of the parameters after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    taken = []
    for x, y in data:
        capture.start_batch()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        capture.end_batch()
        if params is not None:
            params.end_batch()
        if ref is not None:
            ref.close_batch()
        taken.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return taken


def hooks_left(model: nn.Module) -> dict[str, int]:
    return {
        name: len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
    }


def captured(paths: list[str] | None = None, setup: Any = None) -> tuple[Net, ModuleRecord, ModuleCapture]:
    """The Net, a record of the modules at ``paths`` (default: all), ``setup(record)`` done (its
    recorders), and a capture writing to it."""
    torch.manual_seed(0)
    model = Net()
    chosen = [(p, m) for p, m in model.named_modules() if paths is None or p in paths]
    record = ModuleRecord()
    if setup is not None:
        setup(record)
    record.begin([p for p, _ in chosen], [type(m).__name__ for _, m in chosen])
    return model, record, ModuleCapture(chosen, record)


def assert_like_plain(
    record: ModuleRecord, ref: PlainHooks, names: tuple[str, ...] = ("means", "stds")
) -> None:
    record.flush()
    for i, path in enumerate(record.names):
        for direction in ("forward", "backward"):
            side = getattr(record[i], direction)
            got = torch.stack([getattr(side, s) for s in names], 1)
            assert_stats_close(got, getattr(ref, direction)[path], names, f"{path!r} {direction}")


# ---- what a batch writes --------------------------------------------------------------------------------


def test_every_kind_of_output_equals_plain_hooks() -> None:
    model, record, capture = captured(setup=lambda r: r.withMinRecorder().withMaxRecorder())
    capture.install()
    with PlainHooks({p: model.get_submodule(p) for p in record.names}) as ref:
        train(model, capture, batches(3), ref)
    capture.remove()
    assert record.names == [
        "",
        "pre",
        "up",
        "act",
        "pair",
        "pair.lin",
        "named",
        "small",
        "relu",
        "shared",
        "head",
    ]
    assert BATCH * 300 > SMALL >= BATCH * 8
    assert record.batches() == 0  # on the device until flushed
    assert_like_plain(record, ref, STATS)
    assert record.batches() == 3
    pre = record[record.names.index("pre")]
    assert pre.forward.means.isfinite().all() and pre.backward.means.isnan().all()  # no gradient: NaN
    # the tuple's first tensor (h * 2), the dict's first entry
    pair, lin = record[record.names.index("pair")], record[record.names.index("pair.lin")]
    torch.testing.assert_close(pair.forward.means, 2 * lin.forward.means)


def test_small_outputs_retain_their_gradient_large_ones_and_probing_use_tensor_hooks() -> None:
    model, _, capture = captured(["up", "head"])
    capture.install()
    seen: list[tuple[bool, bool, bool]] = []

    def spy(module: nn.Module, args: Any, output: Tensor) -> None:  # runs after the capture's hooks
        seen.append((output.retains_grad, bool(output._backward_hooks), output.numel() > SMALL))

    handles = [model.up.register_forward_hook(spy), model.head.register_forward_hook(spy)]
    outputs: list[Tensor] = []
    keep = model.head.register_forward_hook(lambda m, a, o: outputs.append(o))
    train(model, capture, batches(2))
    for handle in (*handles, keep):
        handle.remove()
    capture.remove()
    # batch 0 probes: tensor hooks everywhere; then the small output's gradient is retained
    assert seen == [
        (False, True, True),
        (False, True, False),
        (False, True, True),
        (True, False, False),
    ]
    assert outputs[1].grad is None  # read at end_batch, then released


def test_output_changed_in_place_is_copied_after_the_first_batch() -> None:
    model, record, capture = captured(["small", "relu", "shared"])
    capture.install()
    retains: list[bool] = []
    handle = model.small.register_forward_hook(lambda m, a, o: retains.append(o.retains_grad))
    with PlainHooks({p: model.get_submodule(p) for p in record.names}) as ref:
        train(model, capture, batches(3), ref)
    handle.remove()
    capture.remove()
    assert retains == [False, False, False]  # found by probing: copied, never retained
    assert_like_plain(record, ref)
    small, relu = record[0], record[1]
    assert (relu.forward.means > small.forward.means).all()  # the copy was taken before ReLU


def test_a_module_called_twice_keeps_its_last_call() -> None:
    model, record, capture = captured(["shared"])
    capture.install()
    calls: list[Tensor] = []
    handle = model.shared.register_forward_hook(lambda m, a, o: calls.append(o.detach().clone()))
    with PlainHooks({"shared": model.shared}) as ref:
        train(model, capture, batches(2), ref)
    handle.remove()
    capture.remove()
    assert len(calls) == 4
    assert_like_plain(record, ref)
    torch.testing.assert_close(record[0].forward.means, torch.stack([calls[1].mean(), calls[3].mean()]))


class Widths(nn.Module):
    """``lin`` applied to a large input, then to a small one (``small_last``), or the reverse:
    its output is large in one call and small in the other."""

    def __init__(self, small_last: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 300)
        self.small_last = small_last

    def forward(self, x: Tensor) -> Tensor:
        big, small = x, x[:8]
        first, last = (big, small) if self.small_last else (small, big)
        return self.lin(first).mean() + self.lin(last).sum()


@pytest.mark.parametrize("small_last", [True, False])
def test_a_module_called_with_a_large_then_a_small_output_keeps_its_last_call(small_last: bool) -> None:
    # a large output is reduced in its hook and a small one at the end of the batch: the
    # later call must replace the earlier whichever way each went
    torch.manual_seed(0)
    model = Widths(small_last)
    record = ModuleRecord()
    record.begin(["lin"], ["Linear"])
    capture = ModuleCapture([("lin", model.lin)], record)
    capture.install()
    calls: list[Tensor] = []
    handle = model.lin.register_forward_hook(lambda m, a, o: calls.append(o.detach().clone()))
    with PlainHooks({"lin": model.lin}) as ref:
        for x, _ in batches(2):
            capture.start_batch()
            model(x).backward()
            capture.end_batch()
            ref.close_batch()
    handle.remove()
    capture.remove()
    assert [c.numel() > SMALL for c in calls] == [small_last, not small_last] * 2
    assert_like_plain(record, ref)
    torch.testing.assert_close(record[0].forward.means, torch.stack([calls[1].mean(), calls[3].mean()]))


def test_calls_without_gradients_are_ignored_when_grad_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    for grad_only in (False, True):
        record = ModuleRecord()
        record.begin(["0"], ["Linear"])
        capture = ModuleCapture([("0", model[0])], record, grad_only=grad_only)
        capture.install()
        with torch.no_grad():
            model(torch.randn(5, 4))
        capture.end_batch()
        capture.remove()
        record.flush()
        assert record[0].forward.means.isnan().item() is grad_only
        assert record[0].backward.means.isnan().all()  # no gradient either way


def test_custom_recorders_see_every_output_and_gradient() -> None:
    model, record, capture = captured(
        ["up", "pair", "head"],
        lambda r: r.withHook(lambda t: t.abs().mean(), "absmean").withBackwardHook(
            lambda t: t.norm(), "norm"
        ),
    )
    capture.install()
    with PlainHooks({p: model.get_submodule(p) for p in record.names}) as ref:
        train(model, capture, batches(2), ref)
    capture.remove()
    assert_like_plain(record, ref)
    for i, path in enumerate(record.names):
        for direction in ("forward", "backward"):
            want = torch.stack([t.abs().mean() for t in getattr(ref, direction)[path]])  # type: ignore[union-attr]
            torch.testing.assert_close(getattr(record[i], direction).absmean, want, rtol=1e-5, atol=1e-7)
        assert "norm" not in record[i].forward.names()
        norms = torch.stack([t.norm() for t in ref.backward[path]])  # type: ignore[union-attr]
        torch.testing.assert_close(record[i].backward.norm, norms, rtol=1e-5, atol=1e-7)


def test_param_capture_records_parameters_as_they_are_at_end_batch() -> None:
    model, _, capture = captured([])
    params = list(model.named_parameters())
    prec = ParamRecord()
    prec.begin([n for n, _ in params])
    pcap = ParamCapture(params, prec)
    pcap.start()
    taken = train(model, capture, batches(3), params=pcap)
    pcap.stop()
    prec.flush()
    assert prec.data.shape == (3, len(params), 4)
    for i, (name, _) in enumerate(params):
        assert_stats_close(prec.data[:, i], [t[name] for t in taken], STATS, name)


# ---- hooks come off -------------------------------------------------------------------------------------


def test_install_and_remove_leave_no_hooks() -> None:
    model, record, capture = captured()
    assert hooks_left(model) == {} and not capture.installed
    capture.install()
    capture.install()  # once only
    assert hooks_left(model) == {p: 1 for p in record.names} and capture.installed
    capture.remove()
    assert hooks_left(model) == {} and not capture.installed


def test_remove_in_the_middle_of_a_batch_takes_tensor_hooks_and_retained_gradients_off() -> None:
    model, record, capture = captured()
    capture.install()
    train(model, capture, batches(1))  # probing done: small outputs are retained from now on
    outputs: dict[str, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda m, a, o, p=p: outputs.setdefault(p, o))
        for p, m in model.named_modules()
    ]
    x, y = batches(1, seed=1)[0]
    loss = ((model(x) - y) ** 2).mean()
    for handle in handles:
        handle.remove()
    assert any(t.retains_grad for t in outputs.values())
    assert any(isinstance(t, Tensor) and t._backward_hooks for t in outputs.values())
    capture.remove()  # a batch cut short (an exception between forward and backward)
    assert hooks_left(model) == {}
    tensors = [t for t in outputs.values() if isinstance(t, Tensor)]
    assert not any(t._backward_hooks for t in tensors)  # tensor hooks removed
    loss.backward()
    capture.end_batch()  # not installed: writes nothing
    record.flush()
    assert record.batches() == 1
