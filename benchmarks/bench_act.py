"""Speed benchmark for modsel's selection actions (``freeze``, ``param_groups``) on 100k modules.

Run ``python benchmarks/bench_act.py`` (``--blocks N``, ``--repeats N``). The baseline is what a
user would write by hand: freeze every parameter with a loop plus one ``modsel.match(model,
"Linear")``. Each action is timed alternately with the baseline (A, B, A, B, ...) after
``gc.collect()``, and the ratio of the medians is compared with the goal: at most 2x.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable

import torch
from synthetic import Synthetic  # benchmarks/ is on sys.path when a script here runs
from torch import nn

import modsel
from modsel._act import freeze, param_groups

GOAL = 2.0
RULES = {
    "Linear": {"lr": 1e-3},
    "#mlp Linear": {"lr": 1e-4, "weight_decay": 0.0},
    "LayerNorm": {"weight_decay": 0.0},
}


def baseline(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    modsel.match(model, "Linear")


def do_freeze(model: nn.Module) -> None:
    freeze(model, "Linear")


def do_groups(model: nn.Module) -> None:
    param_groups(model, RULES, lr=1e-3, weight_decay=0.01)


def timed(fn: Callable[[nn.Module], None], model: nn.Module) -> float:
    for p in model.parameters():  # the same starting state for every run
        p.requires_grad_(True)
    gc.collect()
    start = time.perf_counter()
    fn(model)
    return time.perf_counter() - start


def ratio(fn: Callable[[nn.Module], None], model: nn.Module, repeats: int) -> tuple[float, float, float]:
    ours, base = [], []
    for _ in range(repeats):
        ours.append(timed(fn, model))
        base.append(timed(baseline, model))
    a, b = statistics.median(ours), statistics.median(base)
    return a, b, a / b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=7_700)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = Synthetic(args.blocks)
    modules = sum(1 for _ in model.modules())
    params = sum(1 for _ in model.parameters())
    print(f"model: {modules:,} modules, {params:,} parameters; {args.repeats} alternated runs each")
    ok = True
    for label, fn in (("freeze(model, 'Linear')", do_freeze), ("param_groups(model, 3 rules)", do_groups)):
        ours, base, r = ratio(fn, model, args.repeats)
        verdict = "PASS" if r <= GOAL else "FAIL"
        ok &= r <= GOAL
        times = f"{ours * 1e3:8.1f} ms  baseline {base * 1e3:8.1f} ms"
        print(f"{label:32} {times}  {r:5.2f}x  (goal <= {GOAL}x) {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
