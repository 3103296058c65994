"""Speed benchmark for k1lib.data: batches per second of the README's loaders, against a goal.

Run ``python benchmarks/bench_data.py`` (``--quick`` for fewer repeats, ``--strict`` to exit 1
when the goal fails).

The README's setup, ``Data.fromDataset(FunctionDataset.exp, batchSize=64)``, is iterated one
epoch at a time (train then valid: 125 + 32 = 157 batches); each run times ``--epochs`` epochs
with ``time.perf_counter`` after ``gc.collect()``, and a rate is the median over the runs.
Goal: >= 20,000 batches/s (the 2021 original did about 650). For reference, the same data
through ``torch.utils.data.DataLoader`` over a ``TensorDataset`` (per-sample indexing and
collation, single process) is timed too.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import TensorDataset

from k1lib.data import Data, FunctionDataset

GOAL_BATCHES_PER_S = 20_000.0
ORIGINAL_BATCHES_PER_S = 650.0  # the 2021 k1lib, as reported


def consume(loaders: Iterable[Iterable[Any]], epochs: int) -> int:
    """Iterate every loader ``epochs`` times, touching each batch; the number of batches."""
    count = 0
    for _ in range(epochs):
        for loader in loaders:
            for xb, yb in loader:
                count += 1
                del xb, yb
    return count


def rate(run: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Median batches/s of ``run`` over ``repeats`` runs, and every run's rate."""
    rates = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        batches = run()
        rates.append(batches / (time.perf_counter() - start))
    return statistics.median(rates), rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run; noisier)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs per timed run (default 200)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the goal fails")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    epochs = max(1, args.epochs // 4) if args.quick else args.epochs
    torch.set_num_threads(1)  # batches are tiny; threads only add noise
    torch.manual_seed(0)

    start = time.perf_counter()
    dataset = FunctionDataset.exp
    built = time.perf_counter() - start
    start = time.perf_counter()
    data = Data.fromDataset(dataset, batchSize=64)
    split = time.perf_counter() - start
    per_epoch = len(data.train) + len(data.valid)
    print(f"FunctionDataset.exp built in {built * 1e3:.1f} ms; Data.fromDataset in {split * 1e3:.2f} ms")
    print(f"batchSize 64: {len(data.train)} train + {len(data.valid)} valid = {per_epoch} batches an epoch")
    print(f"{repeats} runs of {epochs} epochs ({per_epoch * epochs:,} batches) each; medians\n")

    ours, ours_all = rate(lambda: consume((data.train, data.valid), epochs), repeats)
    torch_epochs = max(1, epochs // 50)
    n_train = len(data.train.x)
    x, y = dataset.x, dataset.y
    reference = (
        TorchDataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=64, shuffle=True),
        TorchDataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=64),
    )
    theirs, _ = rate(lambda: consume(reference, torch_epochs), repeats)

    verdict = "PASS" if ours >= GOAL_BATCHES_PER_S else "FAIL"
    spread = f"(runs {min(ours_all):,.0f} to {max(ours_all):,.0f})"
    print(f"k1lib.data.DataLoader             {ours:>12,.0f} batches/s {spread}")
    print(f"torch.utils.data.DataLoader       {theirs:>12,.0f} batches/s ({torch_epochs} epochs a run)")
    print()
    ratio = ours / GOAL_BATCHES_PER_S
    print(f"goal >= {GOAL_BATCHES_PER_S:,.0f} batches/s: {verdict}, ratio to goal {ratio:.1f}x")
    print(f"vs the 2021 original ({ORIGINAL_BATCHES_PER_S:,.0f}/s): {ours / ORIGINAL_BATCHES_PER_S:,.0f}x")
    print(f"vs torch.utils.data.DataLoader: {ours / theirs:,.0f}x")
    return 1 if args.strict and verdict == "FAIL" else 0


if __name__ == "__main__":
    raise SystemExit(main())
