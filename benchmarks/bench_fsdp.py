"""l.strategy = "fsdp" on 1, 2, 4 CPU processes (gloo): memory a rank, step time against raw FSDP2.

The Learner's FSDP2 against ``fully_shard`` by hand: the state memory a rank holds at 1, 2 and
4 processes, and the step time at 2.

    python benchmarks/bench_fsdp.py [--quick] [--nprocs 1 2 4] [--time-at 2] [--strict]

Launches itself with torchrun once per process count (``OMP_NUM_THREADS=1`` and one torch
thread a process). The model is a Llama causal LM built from a config, random weights
(``tests/real_models.llama``: hidden 256, MLP 688, 4 decoder layers, 4 heads, vocabulary 4,096,
untied embeddings: 5.26M parameters), trained with AdamW on random tokens, 4 rows of 32 tokens
a rank a step, on its output's own loss (no ``lossF``). Two ways, on the same batches:

- **learner**: ``k1lib.Learner`` with ``l.strategy = "fsdp"``,
  ``l.css = "LlamaDecoderLayer: shard"`` (``fully_shard`` on each decoder layer, then the
  root) and ``l.fsdpKwargs = {"mesh": <a CPU mesh of all ranks>}`` (given to both ways:
  ``fully_shard``'s default mesh is on the GPU when there is one), its default callbacks
  minus Autosave, HookModule, HookParam, ProgressBar, LossLandscape and ParamFinder
  (DontTrainValid, Loss and CancelOnExplosion run), no validation batches. It deals the
  global batches itself: rank ``r`` trains on every ``world``-th. What it adds a batch is
  its cancel agreement (an exchange of 7 integers on a gloo group before the forward pass,
  FSDP's forward gathering, and one before backward) and its callbacks.
- **raw**: the same model sharded by hand (``fully_shard`` on each ``LlamaDecoderLayer``,
  then the root), AdamW built on the shards, then forward, loss, backward, step and
  zero_grad on this rank's batches (the same ones). In one process neither shards.

**Memory** (goal: falls as 1/N, each N within 1.25x of the ideal ``1/N`` of one process):
the bytes a rank holds of parameters, gradients and AdamW state, counted exactly from the
local tensors (``to_local()`` of each DTensor, ``p.grad``, every tensor in ``opt.state``)
just before the optimizer step of the 3rd training batch, when all three are alive; the
table shows the largest rank's, for both ways (they must hold the same), its ratio to one
process, and the processes' peak RSS (information only: mostly torch and transformers).

**Step time** (goal: learner <= 1.10x raw) at N = 2 by default: wall time of alternated runs
(raw, learner, raw, ...) of 6 steps a rank (7 pairs), each run started and stopped at a
barrier of all ranks (collectives make ranks wait for each other: the group's wall time is
what a step costs); the medians per step, and the median of the pairs' ratios (also that of
the CPU time of all ranks, steadier on a loaded machine; informative). Afterwards both models
must hold the same parameters (they did the same work: same start, batches and steps).
``--time-at 2 4`` times 4 processes too (on 2 cores, 2 processes a core).

It takes about 105 s of CPU time: 2.5 minutes on a 2-core machine at a load of 6, about one
when idle (``--quick``: fewer steps and repeats, most of its time starting processes). Rank 0
prints progress; this process prints the tables and a summary.
Exit status 0 unless ``--strict`` and a goal failed, or a launch failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from benchmarks.bench_learner import alternate

Batch = dict[str, Tensor]
LAYER = "LlamaDecoderLayer"  # transformers' class of the decoder blocks: the shard units
REMOVED = ("Autosave", "HookModule", "HookParam", "ProgressBar", "LossLandscape", "ParamFinder")
LR = 1e-3
MEMORY_STEPS = 3  # training steps a rank in the memory runs: counted before the last one's step
MEMORY_GOAL = 1.25  # bytes per rank at most this times (one process's) / N
STEP_GOAL = 1.10  # learner step at most this times the raw FSDP2 step
SAME = 1e-4  # largest |difference| of parameters the "same work" check allows


@dataclass(frozen=True)
class Size:
    """The Llama built (``LlamaConfig`` arguments) and the batches each rank trains on a step."""

    hidden: int = 256
    mlp: int = 688
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    vocab: int = 4096
    rows: int = 4  # a rank's batch: rows x tokens
    tokens: int = 32

    def describe(self) -> str:
        return (
            f"Llama hidden {self.hidden}, MLP {self.mlp}, {self.layers} layers, {self.heads} heads "
            f"({self.kv_heads} kv), vocabulary {self.vocab}, untied; {self.rows} x {self.tokens} tokens "
            "a rank a step"
        )


# ---- model, batches and the two ways to train ----------------------------------------------------
def build(size: Size, device: torch.device, seed: int = 0) -> nn.Module:
    """The Llama of ``size`` with weights from ``seed`` (the same on every rank), on ``device``."""
    from tests.real_models import llama

    with device:
        model: nn.Module = llama(
            seed,
            tied=False,
            vocab_size=size.vocab,
            hidden_size=size.hidden,
            intermediate_size=size.mlp,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=size.tokens,
        )
    return model


def token_batches(n: int, size: Size, seed: int, device: torch.device) -> list[Batch]:
    """``n`` causal-LM batches of random tokens (every token in the loss), the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, size.vocab, (size.rows, size.tokens), generator=g).to(device)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def mine(batches: list[Batch], rank: int, world: int) -> list[Batch]:
    """The batches the Learner deals to ``rank``: every ``world``-th, whole groups only."""
    return batches[rank : len(batches) // world * world : world]


def mesh_for(device: torch.device) -> dict[str, Any]:
    """``{"mesh": ...}``: all the ranks on ``device``'s type, given to both ways. Said
    explicitly because ``fully_shard``'s default mesh is on the accelerator when there is one,
    whatever the process group's backend (gloo on a GPU machine would then gather on CUDA)."""
    from torch.distributed.device_mesh import init_device_mesh

    return {"mesh": init_device_mesh(device.type, (dist.get_world_size(),))}


def shard_by_hand(model: nn.Module, **options: Any) -> None:
    """What ``l.css = "LlamaDecoderLayer: shard"`` asks of the Learner, written out."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__ == LAYER:
            fully_shard(module, **options)
    fully_shard(model, **options)


def raw_loop(
    model: nn.Module,
    batches: list[Batch],
    opt: torch.optim.Optimizer,
    before_last_step: Callable[[], object] | None = None,
) -> None:
    """One epoch of training batches by hand (``before_last_step``: called between the last
    backward and its optimizer step)."""
    model.train()
    for i, batch in enumerate(batches):
        loss = model(**batch).loss
        loss.backward()
        if before_last_step is not None and i == len(batches) - 1:
            before_last_step()
        opt.step()
        opt.zero_grad()


def make_learner(
    model: nn.Module, batches: list[Batch], opt: torch.optim.Optimizer, options: dict[str, Any] | None = None
) -> k1lib.Learner:
    """The Learner that shards ``model`` per decoder layer (``options``: ``l.fsdpKwargs``)."""
    l = k1lib.Learner()  # noqa: E741
    l.model, l.data, l.opt = model, k1lib.data.Data(batches, []), opt
    for name in REMOVED:
        l.cbs.remove(name)
    l.css = f"{LAYER}: shard"
    l.strategy = "fsdp"
    l.fsdpKwargs = dict(options or {})
    return l


# ---- memory ---------------------------------------------------------------------------------------
def local_bytes(t: Tensor) -> int:
    """Bytes of this rank's part of ``t`` (a DTensor's local shard, else the tensor)."""
    from torch.distributed.tensor import DTensor

    part = t.to_local() if isinstance(t, DTensor) else t
    return part.numel() * part.element_size()


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of parameters, gradients and optimizer state, right now."""
    params = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, Tensor)]
    return {
        "params": sum(local_bytes(p) for p in params),
        "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
        "opt": sum(local_bytes(v) for v in state),
    }


class StateBytes(k1lib.Callback):
    """``state_bytes`` at every optimizer step of the run (the last one stays in ``counted``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counted: dict[str, int] = {}

    def startStep(self) -> bool:
        learner = self.learner
        assert learner.model is not None and learner.opt is not None
        self.counted = state_bytes(learner.model, learner.opt)
        return False  # the step is taken


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gathered(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (a collective)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


# ---- timing ---------------------------------------------------------------------------------------
def synced_clock(group: dist.ProcessGroup, device: torch.device) -> Callable[[], float]:
    """A clock read when every rank got there (and, on CUDA, its kernels finished): a run then
    lasts until its slowest rank is done, as the next step's collectives would make it."""

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier(group=group)
        return time.perf_counter()

    return clock


@dataclass
class Timing:
    """A step-time comparison: seconds a step (medians of wall time) and the median of the
    pairs' ratios; ``cpu_ratio``: the same ratio of the CPU time of all ranks together."""

    raw: float
    learner: float
    ratio: float
    spread: tuple[float, float]  # the smallest and largest pair ratio
    cpu_ratio: float
    repeats: int
    steps: int


def time_pair(
    raw: Callable[[], object],
    learner: Callable[[], object],
    repeats: int,
    steps: int,
    device: torch.device,
    group: dist.ProcessGroup,
) -> Timing:
    """``alternate`` the two on ``synced_clock`` (every rank calls this; ``group``: a gloo
    group); each run's process time is summed over the ranks too."""
    cpu: tuple[list[float], list[float]] = ([], [])

    def counted(fn: Callable[[], object], out: list[float]) -> Callable[[], None]:
        def run() -> None:
            start = time.process_time()
            fn()
            out.append(time.process_time() - start)

        return run

    times = alternate(counted(raw, cpu[0]), counted(learner, cpu[1]), repeats, synced_clock(group, device))
    summed = torch.tensor(cpu, dtype=torch.float64)
    dist.all_reduce(summed, group=group)
    ratios = [b / a for a, b in zip(*times, strict=True)]
    return Timing(
        raw=statistics.median(times[0]) / steps,
        learner=statistics.median(times[1]) / steps,
        ratio=statistics.median(ratios),
        spread=(min(ratios), max(ratios)),
        cpu_ratio=statistics.median((summed[1] / summed[0]).tolist()),
        repeats=repeats,
        steps=steps,
    )


def timing_line(name: str, t: Timing, goal: float) -> str:
    verdict = "PASS" if t.ratio <= goal else "FAIL"
    return (
        f"{name:8s} raw FSDP2 {t.raw * 1e3:8.2f} ms/step   learner {t.learner * 1e3:8.2f} ms/step   "
        f"ratio {t.ratio:5.3f}x (pairs {t.spread[0]:.3f}-{t.spread[1]:.3f}, {t.repeats} x {t.steps} steps; "
        f"CPU time of all ranks {t.cpu_ratio:5.3f}x)  goal <= {goal}x  {verdict}"
    )


def largest_difference(a: nn.Module, b: nn.Module) -> float:
    """The largest |difference| between the two models' parameters, over all ranks (a collective)."""
    from torch.distributed.tensor import DTensor

    worst = torch.zeros(())
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            x = p.to_local() if isinstance(p, DTensor) else p
            y = q.to_local() if isinstance(q, DTensor) else q
            if x.numel():
                worst = torch.maximum(worst, (x.float() - y.float()).abs().max().cpu())
    if dist.is_initialized() and dist.get_world_size() > 1:
        worst = worst.to(x.device)  # the backend's device (nccl reduces CUDA tensors)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


# ---- launching ------------------------------------------------------------------------------------
def launch(nproc: int, script: str, args: Sequence[str], timeout: float) -> int:
    """Run ``script args`` under torchrun on ``nproc`` processes of this machine, in a process
    group of its own, ended (all of it) after ``timeout`` seconds: a hang does not stall us."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.Popen([*command, script, *args], env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"the {nproc}-process run did not finish in {timeout:.0f} s (a hang?): stopping it", flush=True)
        _end(proc)
        return 124
    except BaseException:  # Ctrl-C: take the workers down too
        _end(proc)
        raise


def _end(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# ---- one launch: a worker per rank ---------------------------------------------------------------
def measure(size: Size, time_it: bool, steps: int, repeats: int) -> dict[str, Any]:
    """The memory runs, then (``time_it``) the timed runs, on this rank; what rank 0 keeps."""
    from torch.distributed.fsdp import FSDPModule

    rank, world = dist.get_rank(), dist.get_world_size()
    cpu = torch.device("cpu")

    def say(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    barrier_group = dist.new_group(backend="gloo")

    # memory: the learner first (the peak RSS is read after it), then the raw loop
    data = token_batches(MEMORY_STEPS * world, size, seed=1, device=cpu)
    model = build(size, cpu)
    total_params = sum(p.numel() for p in model.parameters())
    options = mesh_for(cpu)
    l = make_learner(model, data, torch.optim.AdamW(model.parameters(), lr=LR), options)  # noqa: E741
    counter = StateBytes()
    l.cbs.append(counter, "StateBytes")
    l.run(1)
    l.cbs.remove("StateBytes")
    rss = peak_rss()
    raw_model = build(size, cpu)
    if world > 1:
        shard_by_hand(raw_model, **options)
    raw_opt = torch.optim.AdamW(raw_model.parameters(), lr=LR)
    raw_counted: dict[str, int] = {}
    raw_loop(
        raw_model,
        mine(data, rank, world),
        raw_opt,
        lambda: raw_counted.update(state_bytes(raw_model, raw_opt)),
    )
    result: dict[str, Any] = {
        "world": world,
        "total_params": total_params,
        "learner": gathered(counter.counted),
        "raw": gathered(raw_counted),
        "rss": gathered(rss),
        "kept": l.cbs.names(),
        "sharded": isinstance(l.model, FSDPModule),
        "timing": None,
    }
    say(f"[N={world}] memory counted (learner sharded: {result['sharded']})")

    if time_it:
        data = token_batches(steps * world, size, seed=2, device=cpu)
        l.data = k1lib.data.Data(data, [])
        shard = mine(data, rank, world)

        def raw() -> None:
            raw_loop(raw_model, shard, raw_opt)

        def learner() -> None:
            l.run(1)

        raw()  # warm up both
        learner()
        say(f"[N={world}] timing {repeats} alternated runs of {steps} steps each ...")
        t = time_pair(raw, learner, repeats, steps, cpu, barrier_group)
        result["timing"] = asdict(t)
        assert l.model is not None
        result["difference"] = largest_difference(l.model, raw_model)
        say(f"[N={world}] {timing_line('', t, STEP_GOAL).strip()}")
    return result


def worker(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        world = dist.get_world_size()
        steps, repeats = (3, 3) if args.quick else (6, 7)
        result = measure(Size(), world in args.time_at, steps, repeats)
        if dist.get_rank() == 0:
            Path(args.out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
    return 0  # a goal missed is reported by the launcher, not a failed worker


# ---- the launcher: tables and summary ------------------------------------------------------------
def memory_table(results: dict[int, dict[str, Any]]) -> list[bool]:
    """Print the memory table; one verdict per N > 1 (and one for the learner == raw check)."""
    mib = 1 / 2**20
    one = max(sum(r.values()) for r in results[1]["learner"])
    print(
        "\nmemory a rank: parameters + gradients + AdamW state, counted from the local tensors before "
        f"the optimizer step of training batch {MEMORY_STEPS} (largest rank), MiB"
    )
    heads = ("N", "learner", "params", "grads", "AdamW", "raw", "/ N=1", "ideal 1/N", "peak RSS", "verdict")
    print("  ".join(f"{h:>9s}" for h in heads[:-1]) + "  " + heads[-1])
    verdicts = []
    for n, r in sorted(results.items()):
        worst = max(r["learner"], key=lambda c: sum(c.values()))
        learner = sum(worst.values())
        raw = max(sum(c.values()) for c in r["raw"])
        ratio = learner / one
        ok = n == 1 or ratio <= MEMORY_GOAL / n
        same = r["learner"] == r["raw"]
        if n > 1:
            verdicts.append(ok)
        verdicts.append(same)
        verdict = "" if n == 1 else ("PASS" if ok else "FAIL")
        if not same:
            verdict += "  learner != raw: " + json.dumps({"learner": r["learner"], "raw": r["raw"]})
        figures = [learner, worst["params"], worst["grads"], worst["opt"], raw]
        print(
            f"{n:9d}  "
            + "  ".join(f"{b * mib:9.2f}" for b in figures)
            + f"  {ratio:9.3f}  {1 / n:9.3f}  {max(r['rss']) * mib:9.0f}  {verdict}"
        )
    print(
        f"goal: a rank's bytes <= {MEMORY_GOAL} x (one process's) / N, the learner holding what raw holds; "
        "peak RSS: the process's, informative (mostly torch and transformers)"
    )
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument(
        "--nprocs", type=int, nargs="+", default=[1, 2, 4], help="process counts (1 is added)"
    )
    parser.add_argument("--time-at", type=int, nargs="+", default=[2], help="process counts to time")
    parser.add_argument("--strict", action="store_true", help="exit status 1 when a goal fails")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a launch may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    size = Size()
    print(f"k1lib {k1lib.__version__}, torch {torch.__version__}, gloo on CPU, 1 thread a process")
    print(f"{size.describe()}; AdamW; learner without {', '.join(REMOVED)}", flush=True)
    started = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted({1, *args.nprocs}):
            out = Path(tmp) / f"{n}.json"
            forwarded = ["--worker", "--out", str(out), "--time-at", *map(str, args.time_at)]
            code = launch(n, __file__, forwarded + (["--quick"] if args.quick else []), args.timeout)
            if code != 0 or not out.exists():
                print(f"FAIL: the {n}-process run ended with status {code}")
                continue
            results[n] = json.loads(out.read_text())
            print(
                f"  ({n} process{'es' if n > 1 else ''} done at {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    if 1 not in results:
        return 1
    first = results[1]
    print(f"\n{first['total_params']:,} parameters; the learner kept callbacks {', '.join(first['kept'])}")
    verdicts = memory_table(results)
    timed = {n: r for n, r in sorted(results.items()) if r["timing"] is not None}
    if timed:
        print("\nstep time: wall time of alternated runs, each between barriers of all ranks; medians a step")
    for n, r in timed.items():
        t = Timing(**{**r["timing"], "spread": tuple(r["timing"]["spread"])})
        print(timing_line(f"N = {n}", t, STEP_GOAL))
        same = r["difference"] <= SAME
        print(
            f"         same work: largest |learner - raw| parameter difference afterwards "
            f"{r['difference']:.2e} ({'PASS' if same else 'FAIL'}: <= {SAME:g})"
        )
        verdicts += [t.ratio <= STEP_GOAL, same]
    failed = verdicts.count(False)
    took = time.perf_counter() - started
    print(f"\nsummary: {len(verdicts) - failed} checks passed, {failed} failed ({took:.0f} s)")
    if len(results) < len({1, *args.nprocs}):
        return 1  # a launch failed
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
