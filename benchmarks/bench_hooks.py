"""Cost of HookModule + HookParam on every module, against the same Learner without them.

    python benchmarks/bench_hooks.py [--quick]

Goals (issue "Seeing inside training"): with HookModule and HookParam recording every module
(the default css ``*``), at most 1.6x a batch of the seed README network (batch 64) and 1.08x
on an MLP 512 x 6 (batch 256), on CPU. Both learners have the other default callbacks
(ProgressBar, DontTrainValid, Loss, CancelOnExplosion); Autosave is removed from both, since
it writes a file per run. Ratios are medians of alternated runs in one process, 1 thread,
in CPU time (process_time): on this shared 2-core machine wall time swings with other load.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from benchmarks.bench_learner import alternate, loss_f, mlp_case, readme_case, report
from tests.k1lib.helpers import Batches


def learner(model: nn.Module, data: Batches, opt: torch.optim.Optimizer, hooks: bool) -> Callable[[], object]:
    l = k1lib.Learner()  # noqa: E741
    l.model, l.data, l.opt, l.lossF = model, data, opt, loss_f
    l.cbs.ProgressBar.stream = io.StringIO()  # measure the callback, not the terminal
    l.cbs.remove("Autosave")
    if not hooks:
        l.cbs.remove("HookModule")
        l.cbs.remove("HookParam")
    return lambda: l.run(1)


def compare(name: str, case: Callable[[], tuple[nn.Module, Batches]], goal: float, repeats: int) -> bool:
    torch.manual_seed(0)
    model, data = case()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    plain, hooked = learner(model, data, opt, False), learner(model, data, opt, True)
    plain(), hooked()  # warm up both
    times = alternate(plain, hooked, repeats, clock=time.process_time)
    return report(name, ("without", "with hooks"), times, len(data.train) + len(data.valid), goal)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 5 if args.quick else 15
    print(f"k1lib {k1lib.__version__}, torch {torch.__version__}, {repeats} alternated repeats, 1 thread")
    ok = compare("README network, batch 64", readme_case, 1.6, repeats)
    ok &= compare("MLP 512 x 6, batch 256", mlp_case, 1.08, repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
