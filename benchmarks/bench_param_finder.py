"""How good is ParamFinder's suggestion? Train the seed README's network at it and count.

    python benchmarks/bench_param_finder.py [--quick] [--seeds N] [--workers N] [--problem P]

For each seed: the README's ``newL()`` (Network with SkipBlocks, ``FunctionDataset.exp``,
batches of 64, Adam, the README's callbacks), a learning rate from each method below, then 2
epochs of training from the same initial weights and data order; a seed counts when the mean
validation MSE of an epoch drops below 1 (what ``withCancelOnLowLoss(1, epochMode=True)``
waits for). Methods:

- ours: ``l.ParamFinder.run()``; the README's call, ``samples=1000``, is checked to be the
  same test (``samples`` caps the batches, the pace is fixed);
- 2021 rule: a 1000-value sweep from 1e-6 to 10 (the README's ``samples=1000``, the same
  divergence stop), the value at the lowest raw loss, halved;
- fastai's "valley": a 100-value sweep from 1e-7 to 10, losses smoothed with beta 0.98 and
  bias-corrected, the first 10 and last 5 points dropped; the suggestion is a third to a half
  into the longest run of falling smoothed losses (re-implemented here from its description);
- best fixed lr: every value of a grid, the same for all seeds, the best count chosen in
  hindsight (an upper bound no finder is promised).

Goal (issue "Seeing inside training"): ours reaches at least the best fixed lr's count, with at
most 100 batches. Counts out of 20 move by about +-2 between near-identical learning rates (the
outcome of one seed is noisy), so read them as such; ``--seeds 64`` on a bigger machine narrows
that. ``--problem`` runs the same comparison on other set-ups, to see how far the rule carries:
``sin`` (FunctionDataset.sin, Adam; success: MSE < 0.0025) and ``sgd`` (the README's data with
SGD, momentum 0.9; success: MSE < 20). Each worker runs one torch thread: on this tiny network a
second thread only waits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import optim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from tests.modsel.models import Network

# observers that do not change training; removed so that the benchmark measures training only
_OBSERVERS = ("ProgressBar", "Autosave", "LossLandscape", "HookModule", "HookParam")
# problem: (dataset name, optimizer, success threshold on the validation MSE, grid of lrs)
PROBLEMS: dict[str, tuple[str, str, float, list[float]]] = {
    "readme": ("exp", "adam", 1.0, [10**e for e in (-2.5, -2.25, -2.0, -1.75, -1.5, -1.25, -1.0)]),
    "sin": ("sin", "adam", 0.0025, [10**e for e in (-3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5)]),
    "sgd": ("exp", "sgd", 20.0, [10**e for e in (-4.0, -3.5, -3.25, -3.0, -2.75, -2.5, -2.25)]),
}


def new_learner(seed: int, problem: str = "readme") -> Any:
    """The README's ``newL()``, built right after seeding torch's generator (``problem`` swaps
    the dataset or the optimizer)."""
    dataset, opt, _, _ = PROBLEMS[problem]
    torch.manual_seed(seed)
    learner = k1lib.Learner()
    learner.model = Network()
    learner.data = k1lib.data.Data.fromDataset(getattr(k1lib.data.FunctionDataset, dataset), batchSize=64)
    if opt == "adam":
        learner.opt = optim.Adam(learner.model.parameters(), lr=1e-2)
    else:
        learner.opt = optim.SGD(learner.model.parameters(), lr=1e-4, momentum=0.9)
    learner.lossF = lambda x, y: ((x.squeeze() - y) ** 2).mean()
    learner.cbs.withModifyBatch(lambda x, y: (x[:, None], y))
    learner.cbs.withDType(torch.float32)
    learner.cbs.withCancelOnLowLoss(PROBLEMS[problem][2], epochMode=True)
    for name in _OBSERVERS:
        if name in learner.cbs:
            learner.cbs.remove(name)
    return learner


def train(seed: int, lr: float, problem: str) -> float:
    """Lowest epoch-mean validation MSE of 2 epochs at ``lr`` (inf when the run blew up)."""
    learner = new_learner(seed, problem)
    for group in learner.opt.param_groups:
        group["lr"] = lr
    with contextlib.redirect_stdout(io.StringIO()):
        learner.run(2)
    return min(learner.Loss.epoch.valid, default=math.inf)


def geometric(start: float, end: float, n: int) -> list[float]:
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


def sweep(seed: int, problem: str, values: list[float] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``ParamFinder.run(**kwargs)``, or the private test over ``values`` for the baselines:
    the suggestion (ours), the params and raw losses, and the seconds it took."""
    finder = new_learner(seed, problem).ParamFinder
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a sweep that does not diverge is reported by its lr
        if values is None:
            suggestion = finder.run(**kwargs)
            params, losses = finder.params, finder.losses
        else:
            test = finder._test(values, "lr")
            suggestion, params, losses = math.nan, test.params, test.losses
    seconds = time.perf_counter() - start
    return {"lr": suggestion, "params": list(params), "losses": list(losses), "seconds": seconds}


def rule_2021(params: list[float], losses: list[float]) -> float:
    best = min(range(len(losses)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)
    return params[best] / 2


def fastai_valley(params: list[float], losses: list[float], beta: float = 0.98) -> float:
    smoothed, avg, last = [], 0.0, 0.0
    for n, loss in enumerate(losses, 1):
        last = loss if math.isfinite(loss) else last
        avg = beta * avg + (1 - beta) * last
        smoothed.append(avg / (1 - beta**n))
    params, smoothed = params[10:-5], smoothed[10:-5]
    # longest run of ever-lower values (a decreasing subsequence), by dynamic programming
    longest = [1] * len(smoothed)
    end = 0
    for i in range(1, len(smoothed)):
        for j in range(i):
            if smoothed[i] < smoothed[j]:
                longest[i] = max(longest[i], longest[j] + 1)
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end]
    third = (end - start) / 3
    return params[max(0, start + int(third) + int(third / 2))]


def seed_job(seed: int, problem: str, grid: list[float]) -> dict[str, Any]:
    ours = sweep(seed, problem)
    readme = sweep(seed, problem, samples=1000)
    dense = sweep(seed, problem, geometric(1e-6, 10.0, 1000))
    fastai = sweep(seed, problem, geometric(1e-7, 10.0, 100))
    lrs = {
        "ours": ours["lr"],
        "2021 rule": rule_2021(dense["params"], dense["losses"]),
        "fastai valley": fastai_valley(fastai["params"], fastai["losses"]),
    }
    return {
        "lrs": lrs,
        "valid": {name: train(seed, lr, problem) for name, lr in lrs.items()},
        "grid": {lr: train(seed, lr, problem) for lr in grid},
        "readme_same": readme["lr"] == ours["lr"],
        "batches": len(ours["params"]),
        "seconds": ours["seconds"],
    }


def _init_worker(directory: str) -> None:
    torch.set_num_threads(1)
    os.chdir(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 seeds and a coarser grid")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 20)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="readme")
    args = parser.parse_args()
    seeds = args.seeds or (5 if args.quick else 20)
    _, _, threshold, grid = PROBLEMS[args.problem]
    grid = grid[::2] if args.quick else grid
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        torch.set_num_threads(1)
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers, initializer=_init_worker, initargs=(directory,)) as pool:
            results = pool.starmap(seed_job, [(seed, args.problem, grid) for seed in range(seeds)])
    elapsed = time.perf_counter() - clock
    print(f"problem {args.problem}: 2 epochs per training, {seeds} seeds ({elapsed:.0f}s)")
    print(f"success: an epoch's mean validation MSE < {threshold:g}\n")

    def row(name: str, lrs: list[float], valids: list[float]) -> int:
        count = sum(v < threshold for v in valids)
        lo, mid, hi = min(lrs), statistics.median(lrs), max(lrs)
        print(
            f"{name:24s} {count:2d}/{seeds}   lr median {mid:.3g} [{lo:.3g}, {hi:.3g}]   "
            f"median valid MSE {statistics.median(valids):.3g}"
        )
        return count

    counts = {
        name: row(name, [r["lrs"][name] for r in results], [r["valid"][name] for r in results])
        for name in results[0]["lrs"]
    }
    grid_counts = {lr: sum(r["grid"][lr] < threshold for r in results) for lr in grid}
    best = max(grid, key=lambda lr: (grid_counts[lr], -statistics.median(r["grid"][lr] for r in results)))
    row(f"best fixed lr ({best:.3g})", [best] * seeds, [r["grid"][best] for r in results])
    print("\nfixed-lr grid: " + ", ".join(f"{lr:.3g}: {grid_counts[lr]}" for lr in grid))
    print(
        f"ours / best fixed lr: {counts['ours']}/{grid_counts[best]} = "
        f"{counts['ours'] / max(grid_counts[best], 1):.2f}"
    )
    batches = [r["batches"] for r in results]
    print(
        f"finder batches: median {statistics.median(batches):.0f}, max {max(batches)}; median "
        f"{statistics.median(r['seconds'] for r in results):.2f}s; README call (samples=1000) gave "
        f"the same suggestion in {sum(r['readme_same'] for r in results)}/{seeds} seeds"
    )


if __name__ == "__main__":
    main()
