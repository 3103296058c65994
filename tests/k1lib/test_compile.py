"""torch.compile (and DDP) wrappers: a compiled model trains as the plain one does; the css,
the module tree, HookModule, HookParam, frozen props, checkpoints, ParamFinder and
LossLandscape see the original module (paths ``bulk.2``, not ``_orig_mod.bulk.2``).

Most tests compile with a counting backend (dynamo traces, the graph runs eagerly): what is
under test is dynamo's wrapper and tracing, not inductor's code; each asserts that dynamo did
trace the model, so a silent fallback to eager cannot pass."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
import torch.distributed as dist
from torch import Tensor, nn

import k1lib
from k1lib._checkpoint import checkpoint_of, write
from k1lib._unwrap import strip_wrapper_prefixes, unwrap

from ..modsel.models import Network
from .test_hook_module import readme_learner

# dynamo reads .grad of the non-leaf outputs HookModule's hooks see, inside its own
# hide_warnings(); pytest's "error" filter turns that hidden warning into a failure first
pytestmark = pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"
)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    # dynamo caches per code object and gives up compiling after 8 recompiles (each model here
    # is a new one for Network.forward): start every test from a clean cache
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Counting:
    """A torch.compile backend that runs dynamo's graphs as they are and counts them."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable[..., Any]:
        self.graphs += 1
        return gm.forward


def compiled(l: Any, backend: Any = None) -> Counting:
    """Compile ``l.model`` in place (the optimizer already holds its parameters)."""
    counting = Counting()
    l.model = torch.compile(l.model, backend=backend or counting)
    return counting


def params(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in unwrap(model).named_parameters()}


def assert_close(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


# ---- unwrap --------------------------------------------------------------------------------------


def test_unwrap_sees_through_compile_and_data_parallel_in_any_order() -> None:
    model = Network()
    assert unwrap(model) is model
    assert unwrap(torch.compile(model, backend="eager")) is model
    assert unwrap(nn.DataParallel(torch.compile(model, backend="eager"))) is model
    assert unwrap(torch.compile(nn.DataParallel(model), backend="eager")) is model


def test_strip_wrapper_prefixes() -> None:
    expected = {"a.weight", "a.bias"}
    assert strip_wrapper_prefixes({"_orig_mod.a.weight": 1, "_orig_mod.a.bias": 2}, expected) == {
        "a.weight": 1,
        "a.bias": 2,
    }
    assert strip_wrapper_prefixes({"module._orig_mod.a.weight": 1, "module._orig_mod.a.bias": 2}, expected)
    # keys that do not fit after stripping, or prefixes not all keys share: no guess
    assert strip_wrapper_prefixes({"_orig_mod.a.weight": 1}, expected) is None
    assert strip_wrapper_prefixes({"_orig_mod.a.weight": 1, "a.bias": 2}, expected) is None
    # a model whose own child is called "module" is not a wrapper: only a real extra prefix goes
    own = {"module.weight", "module.bias"}
    assert strip_wrapper_prefixes({"module.module.weight": 1, "module.module.bias": 2}, own) == {
        "module.weight": 1,
        "module.bias": 2,
    }


# ---- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["counting", "aot_eager"])
def test_a_compiled_model_trains_and_records_as_the_plain_one(backend: str) -> None:
    plain = readme_learner()
    plain.run(2)
    l = readme_learner()
    counting = compiled(l, None if backend == "counting" else backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        l.run(2)
    assert [str(w.message) for w in caught] == []  # no recompile-limit or hook warnings
    if backend == "counting":
        assert counting.graphs > 0  # dynamo traced it: not a silent fallback to eager
    torch.testing.assert_close(torch.tensor(l.Loss.train), torch.tensor(plain.Loss.train), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(l.Loss.valid), torch.tensor(plain.Loss.valid), rtol=1e-5, atol=0)
    assert_close(params(l.model), params(plain.model))
    # the README's css: the same modules and parameters, by their original names
    assert l.HookModule.names == plain.HookModule.names == ["bulk.2", "bulk.3", "bulk.4"]
    assert l.HookParam.names == plain.HookParam.names
    assert l.HookParam.names[0] == "bulk.2.seq.0.weight"
    torch.testing.assert_close(l.HookParam.data, plain.HookParam.data, rtol=1e-5, atol=1e-6)
    # HookModule's forward hooks and output-gradient hooks fired inside the compiled forward
    for i in range(3):
        for side in ("forward", "backward"):
            ours, theirs = getattr(l.HookModule[i], side), getattr(plain.HookModule[i], side)
            assert len(ours.means) == 8  # 2 epochs x 4 training batches
            torch.testing.assert_close(ours.means, theirs.means, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(ours.stds, theirs.stds, rtol=1e-4, atol=1e-7)


def test_module_selector_shows_the_original_tree() -> None:
    plain, l = readme_learner(), readme_learner()
    compiled(l)
    assert [p for p, _ in l.moduleSelector.named_modules()] == [
        p for p, _ in plain.moduleSelector.named_modules()
    ]
    hooked = [p for p, _ in l.moduleSelector.named_modules("HookParam")]
    assert hooked == ["bulk.2.seq.0", "bulk.3.seq.0", "bulk.4.seq.0"]
    assert repr(l.moduleSelector) == repr(plain.moduleSelector)
    assert "_orig_mod" not in repr(l.moduleSelector)


def test_module_selector_hooks_fire_in_the_compiled_forward() -> None:
    l = readme_learner()
    counting = compiled(l)
    seen: list[tuple[str, tuple[int, ...]]] = []
    xb = l.data.train[0][0]
    with l.moduleSelector.hookF(lambda path, m, i, o: seen.append((path, tuple(o.shape))), "HookModule"):
        l.model(xb)
    assert counting.graphs > 0
    assert seen == [(f"bulk.{i}", (16, 10)) for i in (2, 3, 4)]
    seen.clear()
    l.model(xb)  # hooks removed: the forward is traced again without them
    assert seen == []


def test_frozen_modules_of_a_compiled_model_stay_frozen() -> None:
    l = readme_learner()
    counting = compiled(l)
    l.css = "#bulk > Linear:first-child: frozen"
    before = params(l.model)
    l.run(1)
    after = params(l.model)
    assert counting.graphs > 0
    assert torch.equal(after["bulk.0.weight"], before["bulk.0.weight"])
    assert not torch.equal(after["bulk.5.weight"], before["bulk.5.weight"])
    assert all(p.requires_grad for p in l.model.parameters())  # flags given back after the run


def test_a_slice_of_hook_param_finds_its_names_in_a_compiled_model() -> None:
    l = readme_learner()
    compiled(l)
    l.run(1)
    part = l.HookParam[0:2]
    l.cbs.append(part, "Part")
    l.run(1)
    assert part.names == ["bulk.2.seq.0.weight", "bulk.2.seq.0.bias"]
    # the slice kept its 4 batches and recorded 4 more, as the full record did
    assert len(part.data) == 8
    torch.testing.assert_close(part.data[4:], l.HookParam.data[4:, :2])


# ---- checkpoints ---------------------------------------------------------------------------------


def test_checkpoints_move_between_compiled_and_plain_models(tmp_path: Path) -> None:
    l = readme_learner()
    compiled(l)
    l.run(1)
    l.save(tmp_path / "compiled.pth")
    saved = torch.load(tmp_path / "compiled.pth", weights_only=True)["model"]
    assert list(saved) == list(Network().state_dict())  # the original's keys, no _orig_mod.

    plain = readme_learner()
    plain.load(tmp_path / "compiled.pth")
    assert_close(params(plain.model), params(l.model))
    plain.run(1)
    plain.save(tmp_path / "plain.pth")

    again = readme_learner()
    compiled(again)
    again.load(tmp_path / "plain.pth")
    assert_close(params(again.model), params(plain.model))


def test_a_checkpoint_with_wrapper_prefixes_loads_into_either(tmp_path: Path) -> None:
    l = readme_learner()
    l.run(1)
    checkpoint = checkpoint_of(l)
    # as a compiled DDP model's own state_dict() names its keys
    checkpoint["model"] = {f"module._orig_mod.{k}": v for k, v in checkpoint["model"].items()}
    write(checkpoint, tmp_path / "prefixed.pth")
    for wrap in (False, True):
        other = readme_learner()
        if wrap:
            compiled(other)
        other.load(tmp_path / "prefixed.pth")
        assert_close(params(other.model), params(l.model))


def test_a_checkpoint_that_does_not_fit_still_says_why(tmp_path: Path) -> None:
    small = readme_learner()
    small.model = Network(hiddenDim=4)
    small.opt = torch.optim.Adam(small.model.parameters(), lr=1e-2)
    small.save(tmp_path / "small.pth")
    l = readme_learner()
    compiled(l)
    with pytest.raises(k1lib.CheckpointError, match=r"shape mismatch:\n    bulk\.0\.weight"):
        l.load(tmp_path / "small.pth")


# ---- ParamFinder and LossLandscape ---------------------------------------------------------------


def test_param_finder_on_a_compiled_model() -> None:
    plain, l = readme_learner(), readme_learner()
    counting = compiled(l)
    before = params(l.model)
    assert l.ParamFinder.run(samples=30) == pytest.approx(plain.ParamFinder.run(samples=30), rel=1e-5)
    assert counting.graphs > 0
    assert l.ParamFinder.losses == pytest.approx(plain.ParamFinder.losses, rel=1e-4)
    assert_close(params(l.model), before)  # put back


def test_loss_landscape_evaluates_the_original_module() -> None:
    plain, l = readme_learner(), readme_learner()
    compiled(l)
    before = params(l.model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the point-by-point loop
        ours = l.LossLandscape.compute(resolution=5, ranges=(0.5,), pairs=1, engine="vmap")
    theirs = plain.LossLandscape.compute(resolution=5, ranges=(0.5,), pairs=1, engine="vmap")
    assert l.LossLandscape.engine == "vmap"
    torch.testing.assert_close(torch.tensor(ours[0].losses), torch.tensor(theirs[0].losses))
    assert_close(params(l.model), before)
    assert l.model.training and unwrap(l.model).training  # modes as before


# ---- DDP -----------------------------------------------------------------------------------------


def test_a_ddp_model_is_seen_through_as_well(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        l = readme_learner()
        l.model = nn.parallel.DistributedDataParallel(l.model)
        assert [p for p, _ in l.moduleSelector.named_modules("HookModule")] == ["bulk.2", "bulk.3", "bulk.4"]
        l.run(1)
        assert l.HookParam.names[0] == "bulk.2.seq.0.weight"
        l.save(tmp_path / "ddp.pth")
        assert list(torch.load(tmp_path / "ddp.pth", weights_only=True)["model"]) == list(
            Network().state_dict()
        )
    finally:
        dist.destroy_process_group()


# ---- inductor ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    os.environ.get("K1LIB_INDUCTOR_TESTS") != "1",
    reason="inductor's first compile takes 10-20 s on 2 CPU cores; set K1LIB_INDUCTOR_TESTS=1 to run it",
)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's
def test_inductor_trains_as_the_plain_model() -> None:
    plain = readme_learner(train=2, valid=1)
    plain.run(1)
    l = readme_learner(train=2, valid=1)
    l.model = torch.compile(l.model)
    l.run(1)
    torch.testing.assert_close(
        torch.tensor(l.Loss.train), torch.tensor(plain.Loss.train), rtol=1e-4, atol=1e-6
    )
    assert_close(params(l.model), params(plain.model))
    assert l.HookModule.names == plain.HookModule.names == ["bulk.2", "bulk.3", "bulk.4"]
    torch.testing.assert_close(l.HookModule[0].backward.means, plain.HookModule[0].backward.means)
