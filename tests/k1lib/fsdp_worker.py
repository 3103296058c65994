"""One rank of the FSDP2 tests (``test_fsdp.py`` launches it with torchrun, 2 and 4 processes):
a tiny Llama sharded per decoder layer by ``l.css`` with ``l.strategy = "fsdp"``.

    python -m torch.distributed.run --standalone --nproc_per_node=N fsdp_worker.py OUT

Each rank saves what it saw to ``OUT/rank{r}.pt``; full tensors are gathered on every rank.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hf_models

import k1lib

TRAIN, VALID = 8, 4  # batches in all: TRAIN // world a rank an epoch
LR = 1e-2


def full(model: nn.Module) -> dict[str, Tensor]:
    """The model's state, DTensors gathered (a collective: every rank calls it)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = v.detach().clone()
    return out


def learner(css: str, seed: int) -> Any:
    model = hf_models.tiny_lm(seed=seed)
    l = hf_models.lm_learner(model, train=TRAIN, valid=VALID)
    l.opt = torch.optim.AdamW(model.parameters(), lr=LR)
    for name in ("LossLandscape", "ParamFinder", "HookParam"):
        l.cbs.remove(name)
    l.css = css
    l.strategy = "fsdp"
    l.cbs.append(hf_models.Seen(), "Seen")
    return l


def train(css: str, extra: k1lib.Callback | None = None) -> dict[str, Any]:
    rank = dist.get_rank()
    l = learner(css, seed=100 + rank)  # different on each rank: rank 0's weights are used
    if extra is not None:
        l.cbs.append(extra, "Extra")
    initial = hf_models.weights(l.model) if rank == 0 else None
    opt = l.opt
    l.run(2)
    return {
        "initial": initial,
        "final": full(l.model),
        "model_type": type(l.model).__name__,
        "same_opt": l.opt is opt,
        "sharded": [type(p).__name__ for p in l.model.parameters()][:1],
        "seen": l.Seen.batches,
        "train": list(l.Loss.train),
        "hook_names": list(l.HookModule.names),
        "hook_types": list(l.HookModule.types),
        "hook_forward_means": [l.HookModule[i].forward.means.clone() for i in range(len(l.HookModule))],
        "hook_backward_means": [l.HookModule[i].backward.means.clone() for i in range(len(l.HookModule))],
        "tree": str(l.moduleSelector)[:2000],
    }


class CancelOnRank1(k1lib.Callback):
    """Cancels batch 1 of epoch 0 on rank 1 before its backward pass (``startBackward``), or
    raises an error there (``error``)."""

    def __init__(self, error: bool = False) -> None:
        super().__init__()
        self.error = error

    def startBackward(self) -> None:
        learner = self.learner
        if dist.get_rank() == 1 and learner.training and learner.epoch == 0 and learner.batch == 1:
            if self.error:
                raise ValueError("boom on rank 1")
            raise k1lib.CancelBatchException("rank 1 cancels")


def cancelled() -> dict[str, Any]:
    out = train("LlamaDecoderLayer: shard", extra=CancelOnRank1())
    return out


def failed() -> dict[str, Any]:
    try:
        train("LlamaDecoderLayer: shard", extra=CancelOnRank1(error=True))
    except Exception as e:
        return {"raised": f"{type(e).__name__}: {e}"}
    return {"raised": None}


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 3 * dim)
        self.down = nn.Linear(3 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.down(torch.relu(self.up(x))))


class Net(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(Block(dim) for _ in range(3)))
        self.head = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x)).sum(1)  # not a view: FSDP warns about views


def net_learner(model: nn.Module) -> Any:
    l = k1lib.Learner()
    l.model = model
    x = torch.linspace(-2, 2, 64)[:, None].repeat(1, 6) * torch.linspace(0.5, 1.5, 6)
    l.data = k1lib.data.Data.fromDataset((x, torch.sin(x.sum(1))), batchSize=8)
    l.opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    for name in ("ProgressBar", "Autosave", "LossLandscape", "ParamFinder", "HookParam"):
        l.cbs.remove(name)
    l.css = "Block: shard"
    l.strategy = "fsdp"
    return l


def meta() -> dict[str, Any]:
    """A model built on meta: sharded, materialised, initialised by reset_parameters, trained."""
    with torch.device("meta"):
        model = Net()
    l = net_learner(model)
    l.run(2)
    params = list(l.model.parameters())
    return {
        "meta": any(p.is_meta for p in params),
        "local": sum(p.to_local().numel() for p in params),
        "total": sum(p.numel() for p in params),
        "train": list(l.Loss.train),
        "final": full(l.model),
    }


def meta_refused() -> dict[str, Any]:
    """A Llama on meta without l.fsdpInit: its norms have no reset_parameters."""
    with torch.device("meta"):
        model = hf_models.tiny_lm()
    l = hf_models.lm_learner(model)
    l.strategy = "fsdp"
    l.css = "LlamaDecoderLayer: shard"
    try:
        l.run(1)
    except Exception as e:
        return {"raised": f"{type(e).__name__}: {e}", "sharded": k1lib._fsdp.is_sharded(l.model)}
    return {"raised": None}


def options() -> dict[str, Any]:
    """Mixed precision (bf16 parameters, fp32 reduce), no reshard after forward, a bad option."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    torch.manual_seed(0)
    l = net_learner(Net())
    l.fsdpKwargs = {"reshard_after_forward": True, "mp_plicy": None}
    try:
        l.run(1)
        refused = None
    except ValueError as e:
        refused = str(e)
    unchanged = not k1lib._fsdp.is_sharded(l.model)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    l.fsdpKwargs = {"reshard_after_forward": False, "mp_policy": policy}
    seen: list[torch.dtype] = []
    handle = l.model.blocks[0].up.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    l.run(2)
    handle.remove()
    return {
        "refused": refused,
        "unchanged": unchanged,
        "dtypes": sorted({str(d) for d in seen}),
        "param_dtype": str(next(l.model.parameters()).dtype),
        "train": list(l.Loss.train),
    }


def finders() -> dict[str, Any]:
    """ParamFinder runs on the sharded model and leaves it as it was; LossLandscape refuses."""
    torch.manual_seed(0)
    l = net_learner(Net())
    l.cbs.withParamFinder().withLossLandscape()
    l.run(1)
    before = full(l.model)
    suggestion = l.ParamFinder.run(samples=12)
    after = full(l.model)
    try:
        l.LossLandscape.plot(resolution=5)
        refused = None
    except RuntimeError as e:
        refused = str(e)
    return {
        "suggestion": suggestion,
        "unchanged": all(torch.equal(before[k], after[k]) for k in before),
        "losses": list(l.ParamFinder.losses),
        "refused": refused,
    }


class SeenPairs(k1lib.Callback):
    """The (xb, yb) training batches this rank ran, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[Tensor, Tensor]] = []

    def startBatch(self) -> None:
        if self.learner.training:
            self.batches.append((self.learner.xb.clone(), self.learner.yb.clone()))


def clipped() -> dict[str, Any]:
    """GradClipping (a total norm over the shards) and GradAccumulation on the sharded Net."""
    torch.manual_seed(0)
    l = net_learner(Net())
    initial = {k: v.clone() for k, v in l.model.state_dict().items()}
    l.cbs.append(SeenPairs(), "Seen")
    l.cbs.withGradClipping(0.05).withGradAccumulation(2)
    l.run(2)
    return {
        "initial": initial,
        "final": full(l.model),
        "seen": l.Seen.batches,
        "norm": float(
            l.GradClipping.norm.full_tensor()
            if hasattr(l.GradClipping.norm, "full_tensor")
            else l.GradClipping.norm
        ),
    }


def refused(l: Any) -> str | None:
    """What ``l.run(1)`` raised (its message), None when it trained."""
    try:
        l.run(1)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def untouched(l: Any, before: list[Tensor]) -> bool:
    """The model is not sharded and ``l.opt`` still holds its parameters, ``before``."""
    params = list(l.model.parameters())
    held = [p for g in l.opt.param_groups for p in g["params"]]
    return (
        not k1lib._fsdp.is_sharded(l.model)
        and all(a is b for a, b in zip(params, before, strict=True))
        and all(a is b for a, b in zip(held, before, strict=True))
    )


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(6, 6)
        self.blocks = nn.Sequential(Block(6))
        self.post = nn.Linear(6, 6)
        self.post.weight = self.pre.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.blocks(self.pre(x))).sum(1)


def edges() -> dict[str, Any]:
    """Runs after runs, and what sharding refuses before it changes anything."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    out: dict[str, Any] = {}
    torch.manual_seed(0)
    l = net_learner(Net())
    l.run(1)  # ends in validation: FSDP2 leaves the root unit gathered
    out["second run"] = refused(l)
    l.predict()
    out["after predict"] = refused(l)
    out["finder after run"] = None
    l.cbs.withParamFinder()  # net_learner removed it
    try:
        l.ParamFinder.run(samples=10)
    except Exception as e:
        out["finder after run"] = f"{type(e).__name__}: {e}"
    l.run(1)
    l.model.head.requires_grad_(False)  # frozen after a run: kept in the next one
    head = l.model.head.weight.full_tensor().clone()
    l.run(1)
    out["frozen head kept"] = torch.equal(head, l.model.head.weight.full_tensor())
    l.css = "Net > #blocks: shard"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        l.run(1)
    out["css change warned"] = any("other units" in str(w.message) for w in caught)

    cases = {
        "a ModuleList unit": (Net, "Block: shard\n#blocks: shard", {}),
        "a bad option value": (Net, "Block: shard", {"reshard_after_forward": "yes"}),
        "tied across units": (Tied, "#pre: shard", {}),
        "offload without an accelerator": (Net, "Block: shard", {"offload_policy": CPUOffloadPolicy()}),
    }
    for name, (make, css, kwargs) in cases.items():
        torch.manual_seed(0)
        model = make()
        if name == "a ModuleList unit":
            model.blocks = nn.ModuleList(model.blocks)  # type: ignore[assignment]
            model.forward = lambda x, m=model: m.head(m.blocks[2](m.blocks[1](m.blocks[0](x)))).sum(1)  # type: ignore[method-assign]
        l = net_learner(model)
        l.css, l.fsdpKwargs = css, kwargs
        before = list(l.model.parameters())
        out[name] = (refused(l), untouched(l, before))
        l.css, l.fsdpKwargs = "Block: shard", {}
        out[name + ", fixed"] = refused(l)

    with torch.device("meta"):
        model = Net()
    model.head = nn.Linear(6, 1)  # on the CPU: its values would be lost
    l = net_learner(model)
    before = list(l.model.parameters())
    out["partly on meta"] = (refused(l), untouched(l, before))

    torch.manual_seed(0)  # the same seed on every rank: the shards must still differ
    with torch.device("meta"):
        model = Net()
    l = net_learner(model)
    l.shard()
    weight = l.model.blocks[0].up.weight.full_tensor()
    half = weight.shape[0] // dist.get_world_size()
    out["meta shards differ"] = not torch.equal(weight[:half], weight[half : 2 * half])

    with torch.device("meta"):
        model = Net()
    l = net_learner(model)

    def init(m: nn.Module) -> None:
        if dist.get_rank() == 1:
            raise FileNotFoundError("weights.bin on rank 1")
        for p in m.parameters():
            p.zero_()

    l.fsdpInit = init
    out["init failing on one rank"] = refused(l)
    out["init failed, run again"] = refused(l)
    return out


RESUME_SAMPLES, RESUME_GLOBAL = 96, 16  # 6 global steps an epoch of 16 samples


def resume_batches(world: int) -> k1lib.data.Data:
    """The same samples in the same order, cut into batches of ``RESUME_GLOBAL // world``: a
    global step is the same 16 samples on any number of ranks (plain lists are dealt as given)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(RESUME_SAMPLES, 6, generator=g)
    y = torch.sin(x.sum(1))
    size = RESUME_GLOBAL // world
    batches = [(x[i : i + size], y[i : i + size]) for i in range(0, RESUME_SAMPLES, size)]
    return k1lib.data.Data(batches, batches[: 2 * world])


def resume_learner(world: int) -> Any:
    torch.manual_seed(0)
    l = net_learner(Net())
    l.data = resume_batches(world)
    return l


def resume_save() -> dict[str, Any]:
    """One epoch, a sharded checkpoint, then the next epoch: what an uninterrupted run gives."""
    l = resume_learner(dist.get_world_size())
    l.run(1)
    l.save(Path(os.environ["FSDP_RESUME"]) / "ck")
    l.run(1)
    return {"final": full(l.model)}


def resume_load() -> dict[str, Any]:
    """The checkpoint of ``resume_save`` (2 ranks) loaded here, then its second epoch."""
    l = resume_learner(dist.get_world_size())
    l.load(Path(os.environ["FSDP_RESUME"]) / "ck")
    sharded = k1lib._fsdp.is_sharded(l.model)
    l.run(1)
    return {"final": full(l.model), "sharded before the run": sharded}


class Worse(k1lib.Callback):
    """From epoch 2 on, a learning rate that makes the model worse; keeps each epoch's weights."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[int, dict[str, Tensor]] = {}

    def startEpoch(self) -> None:
        if self.learner.epoch == 2:
            for group in self.learner.opt.param_groups:
                group["lr"] = 2.0

    def endEpoch(self) -> None:
        self.weights[self.learner.epoch] = full(self.learner.model)


def best() -> dict[str, Any]:
    """BestCheckpoint(restoreBest=True) on the sharded model puts back the best epoch's weights."""
    l = resume_learner(dist.get_world_size())  # validation batches on every rank
    folder = Path(os.environ["FSDP_OUT"]) / "best"
    l.cbs.append(k1lib.callbacks.BestCheckpoint(folder, monitor="valid loss", restoreBest=True))
    l.cbs.append(Worse(), "Worse")
    l.cbs.remove("CancelOnExplosion")
    l.run(4)
    end = full(l.model)
    kept = l.Worse.weights
    return {
        "best epoch": l.BestCheckpoint.bestEpoch,
        "restored": all(torch.equal(end[k], kept[l.BestCheckpoint.bestEpoch][k]) for k in end),
        "last": all(torch.equal(end[k], kept[3][k]) for k in end),
    }


def out_of_step() -> dict[str, Any]:
    """Rank 0 runs one epoch, the others two, with HookParam on sharded parameters (a
    collective at each epoch's end): every rank raises saying where each was, none hangs."""
    torch.manual_seed(0)
    l = net_learner(Net())
    l.cbs.withHookParam()
    l.css = "Block: shard\n#head: HookParam"
    try:
        l.run(1 if dist.get_rank() == 0 else 2)
    except Exception as e:
        return {"raised": f"{type(e).__name__}: {e}"}
    return {"raised": None}


def scenarios() -> dict[str, Any]:
    return {
        "best": best,
        "edges": edges,
        "clipped": clipped,
        "finders": finders,
        "sharded": lambda: train("LlamaDecoderLayer: shard, HookModule"),
        "checkpointed": lambda: train("LlamaDecoderLayer: shard, checkpoint, HookModule"),
        "cancelled": cancelled,
        "failed": failed,
        "meta": meta,
        "meta_refused": meta_refused,
        "options": options,
    }


def main() -> None:
    out = Path(sys.argv[1])
    os.environ["FSDP_OUT"] = str(out)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    results: dict[str, Any] = {"world": dist.get_world_size()}
    only = os.environ.get("FSDP_ONLY")  # a comma-separated list of scenarios, when debugging
    chosen = {
        "resume_save": resume_save,
        "resume_load": resume_load,
        **scenarios(),
        "out_of_step": out_of_step,
    }
    for name, scenario in chosen.items():
        if (only and name not in only.split(",")) or (not only and name.startswith("resume")):
            continue
        try:
            results[name] = scenario()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
        dist.barrier()
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
