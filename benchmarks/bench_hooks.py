"""Cost of HookModule + HookParam on every module, against the same Learner without them,
and of the Learner with all its defaults against a raw loop.

    python benchmarks/bench_hooks.py [--quick]

Goals (issue 17, goal 1): with HookModule and HookParam recording every module (the default
css ``*``), at most 1.30x a batch of the seed README network (batch 64), 1.08x on an MLP
512 x 6 (batch 256) and 1.20x on a small CNN with BatchNorm (``bench_learner.SmallCNN``,
batch 64 of 1 x 28 x 28). Both learners have the other default callbacks (ProgressBar,
DontTrainValid, Loss, CancelOnExplosion, ...); Autosave is removed from both, since it writes
a file per run. Last row: the Learner exactly as made (every default callback, Autosave
writing its checkpoint at the end of each one-epoch run to a temporary folder) against
``bench_learner.raw_loop`` on the CNN: at most 1.25x. Ratios are medians of alternated runs in
one process, 1 thread, in CPU time (process_time): on this shared 2-core machine wall time
swings with other load.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from benchmarks.bench_learner import (
    alternate,
    cnn_case,
    loss_f,
    mlp_case,
    raw_loop,
    readme_case,
    report,
    start,
)
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


def compare_defaults(
    name: str, case: Callable[[], tuple[nn.Module, Batches]], goal: float, repeats: int
) -> bool:
    """The Learner with every default callback (Autosave into a temporary folder) against the
    raw loop."""
    torch.manual_seed(0)
    model, data = case()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    with tempfile.TemporaryDirectory() as folder:
        l = k1lib.Learner()  # noqa: E741
        l.model, l.data, l.opt, l.lossF = model, data, opt, loss_f
        l.cbs.ProgressBar.stream = io.StringIO()
        l.cbs.Autosave.directory = folder
        raw = lambda: raw_loop(model, data, opt)  # noqa: E731
        raw(), l.run(1)  # warm up both
        times = alternate(raw, lambda: l.run(1), repeats, clock=time.process_time)
    return report(name, ("raw", "learner"), times, len(data.train) + len(data.valid), goal)


def main() -> int:
    repeats = start(__doc__)
    ok = compare("README network, batch 64", readme_case, 1.30, repeats)
    ok &= compare("MLP 512 x 6, batch 256", mlp_case, 1.08, repeats)
    ok &= compare("small CNN + BatchNorm, batch 64", cnn_case, 1.20, repeats)
    ok &= compare_defaults("CNN: all defaults vs raw loop", cnn_case, 1.25, repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
