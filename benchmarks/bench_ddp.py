"""The Learner under DDP against a raw DDP loop: 2 CPU processes (gloo), same model and shards.

    python benchmarks/bench_ddp.py [--quick] [--nproc N]

Launches itself with torchrun. Each rank trains its half of every epoch's batches; the raw
loop is a ``DistributedDataParallel`` with forward, loss, backward, step and zero_grad on the
same batches (made once, outside the timing), the Learner the same with its default
callbacks minus HookModule, HookParam and Autosave (as ``bench_learner.py``). What the Learner
adds is its per-run DDP wrap (5-14 ms for the MLP here) and the agreement on cancels: in
training batches it rides on the gradients' first all-reduce (a DDP comm hook: no exchange of
its own, but the hook's own division of the gradients), after an all-reduce of seven integers
on a gloo group in a run's first two batches; one such all-reduce before each validation
batch and at each event, plus the Loss averaging once an epoch. Rank 0 prints the medians of
alternated runs and their ratio against the goals of issue 17 (<= 1.35x on the README network,
<= 1.08x on the MLP), which a 2-core machine running 2 processes makes noisy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_learner import alternate, learner_loop, mlp_case, raw_loop, readme_case, report
from tests.k1lib.helpers import Batches


def shard(data: Batches, rank: int, world: int) -> Batches:
    """The batches the Learner deals to ``rank``: every ``world``-th, whole groups only."""

    def mine(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        whole = len(batches) // world * world
        return batches[rank:whole:world]

    return Batches(mine(data.train), mine(data.valid))


def raw_ddp(model: nn.Module, data: Batches, opt: torch.optim.Optimizer) -> Callable[[], None]:
    """bench_learner's raw loop, on the model wrapped in DDP."""
    ddp = nn.parallel.DistributedDataParallel(model)
    return lambda: raw_loop(ddp, data, opt)


def compare(name: str, case: Callable[[], tuple[nn.Module, Batches]], goal: float, repeats: int) -> bool:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model, data = case()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    raw = raw_ddp(model, shard(data, rank, world), opt)
    learner = learner_loop(model, data, opt)  # the Learner deals the whole data itself
    raw()  # warm up both
    learner()
    times = alternate(raw, learner, repeats)
    batches = len(data.train) // world + len(data.valid) // world
    if rank != 0:
        return True
    return report(name, ("raw DDP", "learner"), times, batches, goal)


def worker(repeats: int) -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        if dist.get_rank() == 0:
            world = dist.get_world_size()
            print(f"torch {torch.__version__}, {world} processes (gloo), {repeats} alternated repeats")
        compare("README network, batch 64", readme_case, 1.35, repeats)
        compare("MLP 512 x 6, batch 256", mlp_case, 1.08, repeats)
    finally:
        dist.destroy_process_group()
    return 0  # a goal missed is reported, not a failed worker (torchrun would print a traceback)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = 5 if args.quick else 15
    if args.worker:
        return worker(repeats)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={args.nproc}", __file__, "--worker"] + (["--quick"] if args.quick else [])
    return subprocess.run(command, env=os.environ | {"OMP_NUM_THREADS": "1"}).returncode


if __name__ == "__main__":
    sys.exit(main())
