"""GPU check of l.strategy = "fsdp" against a raw FSDP2 loop: step time and memory (nccl, bf16).

One process per GPU, bf16 mixed precision; the Learner's FSDP2 against ``fully_shard`` by hand.

    python benchmarks/gpu_fsdp.py [--quick] [--nproc N] [--steps S] [--repeats R] [--strict]
    python benchmarks/gpu_fsdp.py --device cpu --quick     # smoke run without a GPU (2 gloo processes)

Launches itself with torchrun, ``--nproc_per_node`` = every visible GPU unless ``--nproc``
(FSDP needs 2 or more: with one GPU it says so and stops). The model is a Llama causal LM built
from a config on each GPU, random weights (``tests/real_models.llama``; default hidden 2048,
MLP 5632, 8 decoder layers, 16 heads, 4 kv heads, vocabulary 32,000, untied: 492M parameters),
trained with AdamW on random tokens already on the GPU, 4 rows of 1,024 tokens a rank a step
(``--hidden``, ``--layers``, ... change it), on its output's own loss. Both ways shard each
``LlamaDecoderLayer``, then the root, on one mesh of all the GPUs, with
``MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)`` (parameters
gathered and computed in bf16, gradients reduced in fp32, float32 shards and AdamW state):

- **raw**: ``fully_shard`` by hand, AdamW on the shards; forward, loss, backward, step,
  zero_grad on this rank's batches.
- **learner**: ``k1lib.Learner`` with ``l.strategy = "fsdp"``,
  ``l.css = "LlamaDecoderLayer: shard"``, ``l.fsdpKwargs = {"mesh": ..., "mp_policy": ...}``;
  its default callbacks minus Autosave, HookModule, HookParam, ProgressBar, LossLandscape and
  ParamFinder (DontTrainValid, Loss and CancelOnExplosion run); no validation batches. It
  deals the same global batches (rank ``r`` trains on every ``world``-th).

Figures (rank 0 prints them, for every rank where it says so):

- **step time** (goal: learner <= 1.10x raw): wall time of alternated runs (raw, learner,
  raw, ...; default 7 pairs of 10 steps), each run between a ``torch.cuda.synchronize()`` and
  a barrier of all ranks at both ends; medians a step and the median of the pairs' ratios.
- **memory**: ``torch.cuda.max_memory_allocated`` of each rank during one more run of each
  (peak statistics reset at its start), and the same above what was allocated at its start
  (gathered parameters, activations, gradients: both models' shards and optimizer states
  stay resident throughout). Goal: the learner's rise <= 1.10x the raw loop's.
- **state a rank**: parameters, gradients and AdamW state counted from the local tensors
  before the last optimizer step of a run (as ``bench_fsdp.py``). Goal: the learner's the same
  as raw's and <= 1.25x the ideal (4 x the full float32 parameters) / N.
- **same work**: afterwards both models hold the same parameters (largest |difference|,
  informative on CUDA, where kernels need not be bitwise deterministic).

``--device cpu`` runs the same code on CPU processes with gloo (``--nproc``, default 2; peak
RSS instead of CUDA memory); with ``--quick`` a tiny Llama and a few steps: a smoke run of the
script, its figures mean nothing. Exit status 0 unless a launch failed, or ``--strict`` and a
goal failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from benchmarks.bench_fsdp import (
    LR,
    REMOVED,
    STEP_GOAL,
    Size,
    StateBytes,
    build,
    gathered,
    largest_difference,
    launch,
    make_learner,
    mesh_for,
    mine,
    peak_rss,
    raw_loop,
    shard_by_hand,
    state_bytes,
    time_pair,
    timing_line,
    token_batches,
)

GPU_SIZE = Size(hidden=2048, mlp=5632, layers=8, heads=16, kv_heads=4, vocab=32000, rows=4, tokens=1024)
SMOKE_SIZE = Size(hidden=64, mlp=128, layers=2, heads=2, kv_heads=2, vocab=512, rows=2, tokens=16)
PEAK_GOAL = 1.10  # learner's rise of allocated memory during a run, at most this times raw's
STATE_GOAL = 1.25  # a rank's state at most this times the ideal (unsharded / N)
GIB = 2**30


def size_from(args: argparse.Namespace) -> Size:
    base = SMOKE_SIZE if args.device == "cpu" and args.quick else GPU_SIZE
    given = {k: getattr(args, k) for k in Size.__dataclass_fields__ if getattr(args, k) is not None}
    return Size(**{**base.__dict__, **given})


# ---- one rank ---------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, device: torch.device) -> int:
    """Everything on this rank; rank 0 prints. Returns the number of goals failed."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    rank, world = dist.get_rank(), dist.get_world_size()
    cuda = device.type == "cuda"
    size = size_from(args)
    steps, repeats = args.steps, args.repeats
    barrier_group = dist.new_group(backend="gloo")  # barriers and small sums on the CPU

    def say(line: str = "") -> None:
        if rank == 0:
            print(line, flush=True)

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    options = {**mesh_for(device), "mp_policy": policy}
    data = token_batches(steps * world, size, seed=2, device=device)
    shard = mine(data, rank, world)

    raw_model = build(size, device)
    total = sum(p.numel() for p in raw_model.parameters())
    full_bytes = sum(p.numel() * p.element_size() for p in raw_model.parameters())
    shard_by_hand(raw_model, **options)
    raw_opt = torch.optim.AdamW(raw_model.parameters(), lr=LR)
    model = build(size, device)
    l = make_learner(model, data, torch.optim.AdamW(model.parameters(), lr=LR), options)  # noqa: E741
    del model
    counter = StateBytes()
    l.cbs.append(counter, "StateBytes")
    raw_counted: dict[str, int] = {}

    def raw() -> None:
        raw_loop(raw_model, shard, raw_opt)

    def learner() -> None:
        l.run(1)

    if cuda:
        say(f"GPU: {torch.cuda.get_device_name(device)}")
    say(f"{size.describe()}; {total:,} parameters")
    say(
        f"{world} processes ({dist.get_backend()}), bf16 parameters / fp32 reduce; the learner keeps "
        f"{', '.join(n for n in l.cbs.names() if n != 'StateBytes')}"
    )
    started = time.perf_counter()
    raw_loop(raw_model, shard, raw_opt, lambda: raw_counted.update(state_bytes(raw_model, raw_opt)))
    l.run(1)  # shards, then trains: both warmed up, and their state counted
    l.cbs.remove("StateBytes")
    say(f"warm-up runs done ({time.perf_counter() - started:.1f} s); timing {repeats} pairs of {steps} steps")

    failed = 0
    t = time_pair(raw, learner, repeats, steps, device, barrier_group)
    say()
    say(timing_line("step", t, STEP_GOAL))
    failed += t.ratio > STEP_GOAL

    # memory: one more run of each, the peak above what it started with
    rises: dict[str, list[Any]] = {}
    say()
    for name, fn in (("raw", raw), ("learner", learner)):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
        fn()
        if cuda:
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            peaks, starts = gathered(peak), gathered(start)
            rises[name] = [p - s for p, s in zip(peaks, starts, strict=True)]
            say(
                f"{name:8s} max_memory_allocated GiB by rank: {' '.join(f'{p / GIB:.2f}' for p in peaks)}"
                f"   above the run's start: {' '.join(f'{r / GIB:.2f}' for r in rises[name])}"
            )
        else:
            rss = " ".join(f"{r / 2**20:.0f}" for r in gathered(peak_rss()))
            say(f"{name:8s} (CPU: peak RSS of the process so far, MiB by rank: {rss})")
    if cuda:
        ratio = max(rises["learner"]) / max(max(rises["raw"]), 1)
        ok = ratio <= PEAK_GOAL
        failed += not ok
        say(
            f"memory   learner / raw rise (largest rank) {ratio:5.3f}x  goal <= {PEAK_GOAL}x  "
            f"{'PASS' if ok else 'FAIL'}"
        )

    # state a rank, counted before the last optimizer step of the warm-up runs
    learner_counts, raw_counts = gathered(counter.counted), gathered(raw_counted)
    worst = max(sum(c.values()) for c in learner_counts)
    ideal = 4 * full_bytes / world
    ok = learner_counts == raw_counts and worst <= STATE_GOAL * ideal
    failed += not ok
    c = max(learner_counts, key=lambda c: sum(c.values()))
    raw_worst = max(sum(c.values()) for c in raw_counts)
    say(
        f"state    a rank holds {worst / 2**20:.1f} MiB (params {c['params'] / 2**20:.1f} + grads "
        f"{c['grads'] / 2**20:.1f} + AdamW {c['opt'] / 2**20:.1f}); raw {raw_worst / 2**20:.1f} MiB; "
        f"ideal 4 x {full_bytes / 2**20:.1f} / {world} = {ideal / 2**20:.1f} MiB: {worst / ideal:5.3f}x  "
        f"goal <= {STATE_GOAL}x and = raw  {'PASS' if ok else 'FAIL'}"
    )

    assert l.model is not None
    difference = largest_difference(l.model, raw_model)
    say(f"same work: largest |learner - raw| parameter difference afterwards {difference:.2e} (informative)")
    smoke = " (a smoke run on the CPU: the figures mean nothing)" if args.quick and not cuda else ""
    say(f"\nsummary: {3 + cuda - failed} goals met, {failed} failed{smoke}")
    return failed


def worker(args: argparse.Namespace) -> int:
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
    try:
        failed = measure(args, device)
        if dist.get_rank() == 0:
            Path(args.out).write_text(json.dumps({"failed": failed}))
    finally:
        dist.destroy_process_group()
    return 0  # a goal missed is reported, not a failed worker


# ---- the launcher ---------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats (with --device cpu: a tiny model)"
    )
    parser.add_argument("--nproc", type=int, help="processes (default: every GPU; 2 on the CPU)")
    parser.add_argument(
        "--steps", type=int, help="training steps a rank in a timed run (default 10; quick 5)"
    )
    parser.add_argument("--repeats", type=int, help="alternated pairs of runs (default 7; quick 3)")
    for field in Size.__dataclass_fields__:  # the model and batch: --hidden 1024 --layers 4 ...
        default = getattr(GPU_SIZE, field)
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, type=int, help=f"default {default}")
    parser.add_argument("--strict", action="store_true", help="exit status 1 when a goal fails")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the launch may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke = args.device == "cpu" and args.quick
    args.steps = args.steps or (2 if smoke else 5 if args.quick else 10)
    args.repeats = args.repeats or (2 if smoke else 3 if args.quick else 7)
    if args.worker:
        return worker(args)

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device here: run on a GPU machine, or smoke-test with --device cpu --quick")
            return 1
        nproc = args.nproc or torch.cuda.device_count()  # no CUDA context here: NVML
        if nproc < 2:
            print(f"SKIP: FSDP shards across processes, one a GPU, and there is {nproc}: nothing to compare")
            return 1 if args.strict else 0
        print(f"k1lib {k1lib.__version__}, torch {torch.__version__}, {nproc} GPUs (nccl)", flush=True)
    else:
        nproc = args.nproc or 2
        print(
            f"k1lib {k1lib.__version__}, torch {torch.__version__}, {nproc} CPU processes (gloo)", flush=True
        )
    print(f"learner without {', '.join(REMOVED)}", flush=True)
    forwarded = [a for a in sys.argv[1:] if a != "--strict"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        code = launch(nproc, __file__, [*forwarded, "--worker", "--out", str(out)], args.timeout)
        if code != 0 or not out.exists():
            print(f"FAIL: the {nproc}-process run ended with status {code}")
            return 1
        failed = json.loads(out.read_text())["failed"]
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
