"""Activation checkpointing chosen by CSS (the prop ``checkpoint``, ``k1lib/_act_checkpoint.py``):
the same gradients, weights and HookModule/HookParam records as without it, fewer bytes saved
for backward, forwards that are the modules' own again after a run (also one that failed),
validation untouched, and the plain-loop ``k1lib.checkpointed``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import k1lib
from k1lib import _act_checkpoint

from ..modsel.models import Network
from .helpers import Batches

CSS = "Block: checkpoint"


# ---- fixtures --------------------------------------------------------------------------------------


class Block(nn.Module):
    """A transformer's MLP block: x + down(dropout(gelu(up(norm(x)))))."""

    def __init__(self, dim: int, p: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(p)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(self.drop(self.act(self.up(self.norm(x)))))


class Net(nn.Module):
    """``inp``, ``blocks`` of Block (dropout in each), ``out``."""

    def __init__(self, dim: int = 8, blocks: int = 3, p: float = 0.2) -> None:
        super().__init__()
        self.inp = nn.Linear(2, dim)
        self.blocks = nn.Sequential(*[Block(dim, p) for _ in range(blocks)])
        self.out = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.inp(x)))


class Twice(nn.Module):
    """One Block registered at two places (``a`` and ``again``) and called twice."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(2, dim)
        self.a = Block(dim, 0.2)
        self.again = self.a
        self.out = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.again(self.a(self.inp(x))))


def net(seed: int = 0, **kwargs: Any) -> Net:
    torch.manual_seed(seed)
    return Net(**kwargs)


def data(train: int = 3, valid: int = 2, size: int = 16, dim: int = 2, seed: int = 0) -> Batches:
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> list[tuple[Tensor, Tensor]]:
        xs = [torch.randn(size, dim, generator=g) for _ in range(n)]
        return [(x, x.sin().sum(1, keepdim=True)) for x in xs]

    return Batches(make(train), make(valid))


def make_learner(model: nn.Module, css: str = "*", train: int = 3, dim: int = 2) -> Any:
    """A quiet learner (no progress bar, no checkpoint files) with the default callbacks."""
    l = k1lib.Learner()
    l.model = model
    l.data = data(train, dim=dim)
    l.opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    l.cbs.remove("ProgressBar")
    l.cbs.remove("Autosave")
    l.css = css
    return l


def trained(model: nn.Module, css: str, epochs: int = 2, seed: int = 1, dim: int = 2) -> Any:
    l = make_learner(model, css, dim=dim)
    torch.manual_seed(seed)  # the dropout masks
    l.run(epochs)
    return l


def grads(model: nn.Module, x: Tensor, seed: int = 1) -> dict[str, Tensor]:
    """Each parameter's gradient of one forward and backward (dropout drawn from ``seed``)."""
    model.zero_grad()
    torch.manual_seed(seed)
    model(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(got: Any, want: Any, where: str = "") -> None:
    """Nested dicts, lists and tensors equal within float tolerance (NaN where NaN)."""
    if isinstance(want, Tensor):
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m: f"{where}: {m}"
        )
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            assert_close(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def own_forwards(model: nn.Module) -> list[str]:
    """Paths of the modules holding a ``forward`` of their own (none, for a model left as built)."""
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


class Calls(k1lib.Callback):
    """Counts, per phase, the calls of ``module``'s forward and of torch's checkpoint."""

    def __init__(self, module: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.calls = {True: 0, False: 0}
        self.checkpoints = {True: 0, False: 0}
        module.register_forward_hook(lambda *_: self._count(self.calls))
        real = _act_checkpoint.checkpoint

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(self.checkpoints)
            return real(*args, **kwargs)

        monkeypatch.setattr(_act_checkpoint, "checkpoint", counted)

    def _count(self, where: dict[bool, int]) -> None:
        if self.learner is not None and self.learner.model is not None:
            where[self.learner.training] += 1


class SavedBytes(k1lib.Callback):
    """Bytes of the tensors kept for backward by each training batch's forward and loss
    (``saved_tensors_hooks``; storages counted once, parameters left out): the activation memory
    held when backward starts. Inside a checkpointed module torch's own hook replaces this one:
    what it holds there is not a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self._hooks: Any = None

    def startPass(self) -> None:
        if not self.learner.training:
            return
        params = {p.untyped_storage().data_ptr() for p in self.learner.model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        self._seen = seen
        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()

    def endLoss(self) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(None, None, None)
            self._hooks = None
            self.batches.append(sum(self._seen.values()))


# ---- the same training ---------------------------------------------------------------------------------


def test_gradients_equal_with_dropout_in_a_plain_loop() -> None:
    model, x = net(), torch.randn(16, 2)
    plain = grads(model, x)
    with k1lib.checkpointed(model, CSS) as found:
        assert [p for p, _ in found] == ["blocks.0", "blocks.1", "blocks.2"]
        checked = grads(model, x)
    assert_close(checked, plain)
    assert own_forwards(model) == []
    # the masks matter: another seed gives other gradients, so equal ones above are not luck
    other = grads(model, x, seed=2)
    assert not torch.allclose(other["blocks.0.up.weight"], plain["blocks.0.up.weight"])


def test_learner_trains_the_same_weights_recomputing_each_block_in_backward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = trained(net(), "*")
    model = net()
    l = make_learner(model, "*; " + CSS)
    calls = Calls(model.blocks[1].up, monkeypatch)
    l.cbs.append(calls)
    torch.manual_seed(1)
    l.run(2)
    assert_close(model.state_dict(), plain.model.state_dict(), "weights")
    # 2 epochs of 3 training batches: one forward and one recomputation of each; validation
    # (2 batches an epoch, under no_grad) calls the forward once and never checkpoint
    assert calls.calls == {True: 12, False: 4}
    assert calls.checkpoints == {True: 6 * 3, False: 0}
    assert own_forwards(model) == []


def test_fewer_bytes_are_saved_for_backward() -> None:
    # wide blocks on a large batch: the activations (4 x 256 x 512 floats a block) dwarf the weights
    def saved(css: str) -> int:
        model = net(dim=256, blocks=4, p=0.1)
        l = make_learner(model, css, train=2)
        l.data = Batches([(torch.randn(512, 2), torch.randn(512, 1)) for _ in range(2)], [])
        l.cbs.remove("HookModule")
        l.cbs.remove("HookParam")
        l.cbs.remove("LossLandscape")
        cb = SavedBytes()
        l.cbs.append(cb)
        l.run(1)
        assert len(set(cb.batches)) == 1 and len(cb.batches) == 2
        return cb.batches[0]

    plain, checked = saved("*"), saved(CSS)
    # each block keeps ~6 activations of 512 x 256 or 512 x 1024 floats; checkpointed, only its
    # input (512 x 256 floats, 0.5 MiB)
    assert plain > 20 * 2**20
    assert checked < 4 * 2**20
    assert checked * 5 < plain


class LiveBytes(TorchDispatchMode):
    """The most bytes of tensor storage made inside the mode and alive at once (checked after
    every op, recomputed ones in backward included): the peak memory of a forward and backward
    beyond what existed before (parameters), deterministic on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                known = self.live.get(storage.data_ptr())
                if known is None or known[0].expired():
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def test_peak_memory_of_forward_and_backward_is_lower_in_a_plain_loop() -> None:
    def peak(checkpoint: bool) -> int:
        model, x = net(dim=256, blocks=4, p=0.1), torch.randn(512, 2)
        with k1lib.checkpointed(model, CSS) if checkpoint else contextlib.nullcontext(), LiveBytes() as mode:
            model(x).square().mean().backward()
        return mode.peak

    plain, checked = peak(False), peak(True)
    # both hold the weights' gradients (8.5 MiB); without checkpointing every block's
    # activations (~7 MiB each) live until backward, with it one block's at a time
    assert checked < 0.7 * plain
    assert plain - checked > 10 * 2**20


# ---- the module tree is left as it was -------------------------------------------------------------------


class Snapshot(k1lib.Callback):
    """What the model looks like from inside the run (at the first training batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}

    def startBatch(self) -> None:
        if not self.seen:
            self.seen = look(self.learner)


def look(l: Any) -> dict[str, Any]:
    model = l.model
    return {
        "modules": [(n, type(m)) for n, m in model.named_modules()],
        "params": [n for n, _ in model.named_parameters()],
        "state_dict": list(model.state_dict()),
        "paths": [p for p, _ in l.moduleSelector.named_modules()],
        "wrapped": [n for n, m in model.named_modules() if _act_checkpoint.wrapped(m)],
    }


def test_the_tree_is_unchanged_during_and_after_a_run_and_forwards_are_restored() -> None:
    model = net()
    model.blocks[2].forward = model.blocks[2].forward  # an instance forward of the user's own
    own = model.blocks[2].__dict__["forward"]
    l = make_learner(model, CSS)
    before = look(l)
    snap = Snapshot()
    l.cbs.append(snap)
    l.run(1)
    assert snap.seen["wrapped"] == ["blocks.0", "blocks.1", "blocks.2"]
    during = {k: v for k, v in snap.seen.items() if k != "wrapped"}
    assert during == {k: v for k, v in before.items() if k != "wrapped"}
    assert look(l) == before and before["wrapped"] == []
    assert own_forwards(model) == ["blocks.2"] and model.blocks[2].__dict__["forward"] is own


class Boom(k1lib.Callback):
    def endLoss(self) -> None:
        if self.learner.batch == 1:
            raise RuntimeError("boom")


def test_forwards_are_restored_after_an_exception_mid_run() -> None:
    model = net()
    l = make_learner(model, CSS)
    l.cbs.append(Boom())
    with pytest.raises(RuntimeError, match="boom"):
        l.run(1)
    assert own_forwards(model) == []
    # and the model still trains, checkpointed, afterwards
    l.cbs.remove("Boom")
    l.run(1)
    assert own_forwards(model) == []


def test_validation_and_predict_do_not_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    model = net()
    l = make_learner(model, CSS)
    calls = Calls(model.blocks[0], monkeypatch)
    l.cbs.append(calls)
    l.run(1)
    assert calls.checkpoints == {True: 3 * 3, False: 0}
    l.predict()  # outside a run: the forwards are the modules' own
    assert calls.checkpoints == {True: 3 * 3, False: 0}


# ---- selections ------------------------------------------------------------------------------------------


def test_a_module_used_twice_is_wrapped_once_and_both_calls_are_checkpointed() -> None:
    torch.manual_seed(0)
    model, x = Twice(), torch.randn(16, 2)
    plain = grads(model, x)
    with k1lib.checkpointed(model, CSS) as found:
        assert [p for p, _ in found] == ["a"]  # "again" is the same module
        checked = grads(model, x)
    assert_close(checked, plain)
    assert own_forwards(model) == []

    l = make_learner(model, CSS)
    assert [p for p, _ in l.css_checkpointed()] == ["a"]
    l.run(1)
    assert own_forwards(model) == []


@pytest.mark.parametrize(
    ("css", "wanted"),
    [
        ("Block: checkpoint\nBlock > Linear: checkpoint", ["blocks.0", "blocks.1", "blocks.2"]),
        ("#blocks: checkpoint\nBlock: checkpoint", ["blocks"]),
        ("Linear: checkpoint\n#blocks: checkpoint", ["inp", "blocks", "out"]),
        (":root: checkpoint\nBlock: checkpoint", [""]),
    ],
)
def test_nested_selections_checkpoint_the_outermost_module(css: str, wanted: list[str]) -> None:
    model, x = net(), torch.randn(16, 2)
    plain = grads(model, x)
    l = make_learner(model, css)
    assert [p for p, _ in l.css_checkpointed()] == wanted
    with k1lib.checkpointed(model, css) as found:
        assert [p for p, _ in found] == wanted
        assert_close(grads(model, x), plain)
    assert own_forwards(model) == []


def test_all_from_star_checkpoints_nothing_and_other_props_compose() -> None:
    model, x = net(), torch.randn(16, 2)
    assert make_learner(model, "*").css_checkpointed() == []
    plain = grads(model, x)
    # shard (later FSDP work) and HookModule beside checkpoint: checkpoint still applies
    css = "Block: shard, checkpoint, HookModule\n#inp: frozen"
    l = make_learner(model, css)
    assert [p for p, _ in l.css_checkpointed()] == ["blocks.0", "blocks.1", "blocks.2"]
    with k1lib.checkpointed(model, css):
        assert_close(grads(model, x), plain)
    l.run(1)
    assert own_forwards(model) == [] and model.inp.weight.requires_grad


def test_css_without_a_match_warns_once_naming_the_css() -> None:
    l = make_learner(net(), "Conv2d: checkpoint")
    with pytest.warns(
        UserWarning, match=r"checkpoint: l\.css selects no module with the prop 'checkpoint'"
    ) as got:
        l.run(1)
    assert sum("checkpoint" in str(w.message) for w in got) == 1
    assert "'Conv2d: checkpoint'" in str(got[0].message)
    # a css that never asks for checkpoint says nothing
    l.css = "*"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l.run(1)


def test_plain_loop_entry_point_warns_and_restores_after_an_exception() -> None:
    model = net()
    without_prop = r"give it with the prop, e\.g\. 'SkipBlock: checkpoint'"
    with pytest.warns(UserWarning, match=without_prop), k1lib.checkpointed(model, "Block") as found:
        assert found == []
    no_match = "selects no module with the prop 'checkpoint'"
    with pytest.warns(UserWarning, match=no_match), k1lib.checkpointed(model, "Conv2d: checkpoint"):
        pass
    with pytest.raises(ValueError, match="inside"), k1lib.checkpointed(model, CSS):
        assert own_forwards(model) == ["blocks.0", "blocks.1", "blocks.2"]
        raise ValueError("inside")
    assert own_forwards(model) == []
    with pytest.raises(TypeError, match=r"must be an nn\.Module, got str"):
        k1lib.checkpointed("model", CSS).__enter__()  # type: ignore[arg-type]
    # a run inside the block leaves the block's wrapping alone
    l = make_learner(model, CSS)
    with k1lib.checkpointed(model, CSS):
        l.run(1)
        assert own_forwards(model) == ["blocks.0", "blocks.1", "blocks.2"]
    assert own_forwards(model) == []


def test_keyword_arguments_reach_the_forward() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: Tensor, *, scale: Tensor, debug: bool = False) -> Tensor:
            assert debug  # a keyword named like one of checkpoint's own
            return self.lin(x).tanh() * scale

    torch.manual_seed(0)
    model, x, scale = Scaled(), torch.randn(4, 3), torch.randn(4, 1, requires_grad=True)

    def both() -> tuple[Tensor, Tensor]:
        model.zero_grad()
        scale.grad = None
        model(x, scale=scale, debug=True).square().sum().backward()
        assert model.lin.weight.grad is not None and scale.grad is not None
        return model.lin.weight.grad.clone(), scale.grad.clone()

    plain = both()
    with k1lib.checkpointed(model, ":root: checkpoint"):
        assert_close(both(), plain)


# ---- HookModule, HookParam and k1lib.watch see what they see without checkpointing ----------------------


def records(l: Any) -> dict[str, Any]:
    return {"HookModule": l.HookModule.state_dict(), "HookParam": l.HookParam.state_dict()}


@pytest.mark.parametrize(
    ("make", "css", "dim"),
    [
        pytest.param(net, CSS, 2, id="blocks-with-dropout"),
        pytest.param(Network, "SkipBlock: checkpoint", 1, id="readme-network"),
        pytest.param(net, ":root: checkpoint", 2, id="the-whole-model"),
    ],
)
def test_hook_module_and_hook_param_record_the_same_statistics(
    make: Callable[[], nn.Module], css: str, dim: int
) -> None:
    torch.manual_seed(0)
    plain = trained(make(), "*", dim=dim)
    torch.manual_seed(0)
    checked = trained(make(), "*\n" + css, dim=dim)
    want, got = records(plain), records(checked)
    assert got["HookModule"]["names"] == want["HookModule"]["names"] and len(want["HookModule"]["names"]) > 5
    assert_close(got, want, "records")
    # not all alike and not NaN: the gradients inside checkpointed modules were seen
    backward = got["HookModule"]["stats"]["backward"]["means"]
    assert backward.shape[0] == 6 and not backward.isnan().any()


def test_watch_in_a_plain_loop_records_the_same_statistics() -> None:
    def watched(checkpoint: bool) -> dict[str, Any]:
        model, batches = net(), data()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        torch.manual_seed(1)
        with k1lib.watch(model, "Block, Block *") as w:
            wrapping = k1lib.checkpointed(model, CSS) if checkpoint else _nothing()
            with wrapping:
                for x, y in batches.train:
                    ((model(x) - y) ** 2).mean().backward()
                    opt.step()
                    opt.zero_grad()
                    w.step()
        return {"HookModule": w.HookModule.state_dict(), "HookParam": w.HookParam.state_dict()}

    want = watched(False)
    assert_close(watched(True), want, "watch")
    assert not want["HookModule"]["stats"]["backward"]["means"].isnan().any()


def _nothing() -> Any:
    return contextlib.nullcontext()


# ---- DDP ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_two_ranks_under_ddp_train_and_record_the_same_with_checkpoint(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("ddp_act_checkpoint_worker.py")
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    try:
        done = subprocess.run(
            [*command, str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-process run did not finish in 180 s (a hang?); output:\n{e.stdout}\n{e.stderr}")
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        plain, checked = results["plain"], results["checkpoint"]
        assert checked["world"] == 2 and checked["model_type"] == "Net"  # DDP unwrapped after the run
        assert_close(checked["final"], plain["final"], f"rank {rank} weights")
        assert_close(checked["HookModule"], plain["HookModule"], f"rank {rank} HookModule")
        # 2 epochs: each training batch's forward is recomputed in backward, validation's not
        train, valid = plain["calls"][True], plain["calls"][False]
        assert train == 2 * checked["batches"] > 0
        assert checked["calls"] == {True: 2 * train, False: valid}
        assert checked["own_forwards"] == []


# ---- a Hugging Face model ----------------------------------------------------------------------------


def test_a_llama_trains_and_records_the_same_with_its_decoder_layers_checkpointed() -> None:
    # transformers' decoder layers checkpoint themselves when told to (dropping their KV cache,
    # which a recomputation would append to a second time): k1lib tells them, for the run
    pytest.importorskip("transformers")
    from . import hf_models

    def run(css: str) -> tuple[Any, int]:
        l = hf_models.lm_learner()
        l.css = css
        calls = [0]
        # (not the mlp: the recomputation stops inside it, at the last tensor it needs)
        attention = l.model.model.layers[0].self_attn
        attention.register_forward_hook(lambda m, *_: calls.__setitem__(0, calls[0] + m.training))
        torch.manual_seed(1)
        l.run(1)
        return l, calls[0]

    (plain, before), (checked, after) = (
        run(f"{hf_models.LAYER}: HookModule"),
        run(f"{hf_models.LAYER}: shard, checkpoint, HookModule"),
    )
    assert [p for p, _ in checked.css_checkpointed()] == hf_models.LAYER_PATHS
    assert before == 4 and after == 8  # 4 training batches, recomputed in backward
    assert_close(hf_models.weights(checked.model), hf_models.weights(plain.model), "weights")
    assert_close(checked.HookModule.state_dict(), plain.HookModule.state_dict(), "HookModule")
    for layer in checked.model.model.layers:
        assert not _act_checkpoint.wrapped(layer) and "gradient_checkpointing" not in layer.__dict__
        assert not layer.gradient_checkpointing


def test_an_error_while_recomputing_names_the_module() -> None:
    class Appends(nn.Module):
        """Appends its input to a cache: run twice, the cache no longer fits."""

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.cache: list[Tensor] = []

        def forward(self, x: Tensor) -> Tensor:
            self.cache.append(x)
            return self.lin(x + torch.cat(self.cache, 1)).tanh()

    model = nn.Sequential(nn.Linear(3, 3), Appends())
    with k1lib.checkpointed(model, "Appends: checkpoint"):
        y = model(torch.randn(2, 3)).sum()
        with pytest.raises(RuntimeError) as raised:
            y.backward()
    assert "while recomputing the forward of the module at '1' (Appends)" in "\n".join(raised.value.__notes__)


# ---- state a forward changes, copies, a second backward ---------------------------------------------


class NormBlock(nn.Module):
    """A block whose forward changes state: BatchNorm's running statistics, and a spectral
    norm's power-iteration vectors (which also change the gradients when run again)."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.lin = nn.utils.parametrizations.spectral_norm(nn.Linear(dim, dim))
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.norm(self.lin(x)).tanh()


def norm_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 6), NormBlock(), NormBlock(), nn.Linear(6, 1))


def test_buffers_a_forward_changes_are_as_without_checkpointing() -> None:
    # a recomputation must not update BatchNorm's running statistics a second time, and must
    # start the spectral norm's power iteration where the first forward started it
    xs = [torch.randn(16, 2, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def train(model: nn.Module) -> dict[str, Tensor]:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x in xs:
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return {
            **model.state_dict(),
            **{f"{n}.grad": p.grad for n, p in model.named_parameters() if p.grad is not None},
        }

    plain = train(norm_net())
    model = norm_net()
    with k1lib.checkpointed(model, "NormBlock: checkpoint"):
        checked = train(model)
    assert_close(checked, plain)
    assert int(checked["1.norm.num_batches_tracked"]) == len(xs)


def test_a_learner_keeps_batchnorm_running_statistics_as_without_checkpointing() -> None:
    plain = make_learner(norm_net(), "*", dim=2)
    plain.run(2)
    checked = make_learner(norm_net(), "*\nNormBlock: checkpoint", dim=2)
    checked.run(2)
    assert_close(dict(checked.model.state_dict()), dict(plain.model.state_dict()))


def test_a_second_backward_recomputes_again() -> None:
    # backward(retain_graph=True) then another backward recomputes the same checkpointed call twice
    model, x = norm_net(), torch.randn(16, 2)
    model.train()

    def twice(m: nn.Module) -> dict[str, Tensor]:
        m.zero_grad()
        loss = m(x).square().mean()
        loss.backward(retain_graph=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain = twice(norm_net())
    with k1lib.checkpointed(model, "NormBlock: checkpoint"):
        checked = twice(model)
    assert_close(checked, plain)


def test_the_model_can_be_copied_and_saved_during_a_run(tmp_path: Path) -> None:
    import copy

    model, x = net(), torch.randn(16, 2)
    with k1lib.checkpointed(model, CSS):
        torch.save(model, tmp_path / "model.pt")  # a closure on the instance would not pickle
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for p in twin.parameters():
                p.zero_()
        model.eval(), twin.eval()
        # the copy computes with its own (zero) weights, not the original's
        assert torch.equal(twin(x), torch.zeros(16, 1)) and not torch.equal(model(x), torch.zeros(16, 1))
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))
