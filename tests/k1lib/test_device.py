"""Device: moving batches (nested), the model and optimizer state; bad devices fail before training."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch

import k1lib
from k1lib.callbacks import Device
from k1lib.callbacks.device import _move_optimizer_state, _resolve, move

from .helpers import learner

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
Pair = namedtuple("Pair", "x y")
CPU = torch.device("cpu")


def test_move_keeps_structure_and_leaves_other_objects() -> None:
    t = torch.ones(2)
    batch = {"a": (t, [t, {"b": t}]), "n": 3, "s": "text", "p": Pair(t, None)}
    out = move(batch, CPU)
    assert out["a"][0] is t and out["a"][1][1]["b"] is t  # already there: not copied
    assert isinstance(out["a"], tuple) and isinstance(out["a"][1], list)
    assert out["n"] == 3 and out["s"] == "text"
    assert isinstance(out["p"], Pair) and out["p"].x is t and out["p"].y is None
    assert isinstance(move(OrderedDict(k=t), CPU), OrderedDict)


def test_move_copies_to_another_device() -> None:
    # meta is a device every build has: the copy really happens, in the same structure
    out = move({"x": (torch.ones(2), [torch.zeros(3)])}, torch.device("meta"))
    assert out["x"][0].device.type == "meta" and out["x"][1][0].device.type == "meta"
    assert out["x"][1][0].shape == (3,)


def test_unknown_device_fails_at_the_builder() -> None:
    with pytest.raises(ValueError, match=r"'tpu' is not a device; devices here: cpu"):
        k1lib.Callbacks().withDevice("tpu")
    with pytest.raises(TypeError, match="withDevice"):
        Device(1.5)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_fails_before_anything_moves_or_trains() -> None:
    l = learner()
    l.cbs.withCuda()
    before = [p.clone() for p in l.model.parameters()]
    with pytest.raises(
        RuntimeError, match=r"device 'cuda' is not available in this process; devices here: cpu"
    ):
        l.run(1)
    assert l.Loss.train == []  # no batch ran
    assert all(torch.equal(a, b) for a, b in zip(before, l.model.parameters(), strict=True))


def test_missing_gpu_index_names_the_ones_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # a one-GPU machine, simulated: cuda:3 does not exist, cuda:0 does
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(RuntimeError, match=r"'cuda:3' is not available .* devices here: cpu, cuda:0"):
        _resolve(torch.device("cuda:3"))
    assert _resolve(torch.device("cuda")) == torch.device("cuda:0")


def test_meta_is_refused() -> None:
    l = learner()
    l.cbs.withDevice("meta")
    with pytest.raises(RuntimeError, match="'meta' tensors have no data"):
        l.run(1)
    assert all(p.device.type == "cpu" for p in l.model.parameters())


def test_cuda_builder_is_named_as_in_2021() -> None:
    cbs = k1lib.Callbacks().withCuda()
    assert isinstance(cbs.Cuda, Device) and cbs.Cuda.device.type == "cuda"
    with cbs.suspend(["Cuda"]):
        assert cbs.Cuda.suspended


def test_batch_moves_before_modify_batch_sees_it(monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[int] = []

    def tagging_move(value: object, device: torch.device) -> object:
        moved.append(id(value))
        return value

    monkeypatch.setattr("k1lib.callbacks.device.move", tagging_move)
    seen: list[bool] = []
    l = learner(train=1, valid=0)
    l.cbs.withModifyBatch(lambda x, y: (seen.append(id(x) in moved), (x, y))[1])
    l.cbs.withDevice("cpu")  # appended after ModifyBatch, runs before it
    l.run(1)
    assert seen == [True]


def test_training_on_cpu_device_matches_training_without() -> None:
    a, b = learner(), learner()
    b.cbs.withDevice("cpu")
    a.run(2)
    b.run(2)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_optimizer_state_elsewhere_moves_to_the_parameters() -> None:
    # parameters on one device, state on another (as after a load while the model was on the
    # CPU); meta stands in for the accelerator: a copy onto it needs no data
    param = torch.nn.Parameter(torch.empty(3, device="meta"))
    opt = torch.optim.Adam([param])
    opt.state[param] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
    assert _move_optimizer_state(opt)
    state = opt.state[param]
    assert state["exp_avg"].device.type == "meta" and state["exp_avg_sq"].device.type == "meta"
    assert state["step"].device.type == "cpu"  # as torch keeps it for a non-capturable Adam
    assert not _move_optimizer_state(opt)  # nothing left to move


# ---- CUDA ------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_moves_model_and_batches_and_pinned_batches() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    l = learner()
    x = torch.randn(32, 2)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, pin_memory=True)
    l.data = k1lib.data.Data(loader, loader)
    devices: list[str] = []
    l.cbs.withInspectBatch(lambda xb, yb: devices.append(xb.device.type))
    l.cbs.withCuda()
    l.run(1)
    assert all(p.device.type == "cuda" for p in l.model.parameters())
    assert devices and set(devices) == {"cuda"}
    assert l.Cuda.device.index is not None


@needs_cuda
def test_cuda_run_after_loading_on_the_cpu(tmp_path: object) -> None:
    a = learner()
    a.opt = torch.optim.Adam(a.model.parameters(), lr=1e-2)
    a.cbs.withCuda()
    a.run(1)
    a.save("ck.pth")
    b = learner()  # model and optimizer on the CPU: the state loads there
    b.opt = torch.optim.Adam(b.model.parameters(), lr=1e-2)
    b.cbs.withCuda()
    b.load("ck.pth")
    b.run(1)  # moves model and state together
    for param, state in b.opt.state.items():
        assert param.device.type == "cuda" and state["exp_avg"].device.type == "cuda"
