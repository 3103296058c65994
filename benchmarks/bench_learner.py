"""Learner overhead per batch against a raw PyTorch loop on the same data, model and seed.

    python benchmarks/bench_learner.py [--quick]

Goals (issue "k1lib training core"): with the default callbacks at most 1.05x the raw loop on
the seed README network (batch 64) and 1.02x on an MLP 512 x 6 (batch 256). Measured without
the recording callbacks HookModule and HookParam (their cost is bench_hooks.py's) and without
Autosave (a file per run); LossLandscape and ParamFinder stay, as they have no per-batch
handler. Ratios are medians of alternated runs in one process.
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from tests.k1lib.helpers import Batches
from tests.modsel.models import Network


def readme_case() -> tuple[nn.Module, Batches]:
    x = torch.rand(10_000, 1) * 10 - 5
    y = torch.exp(x)
    data = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 8_000, 64)]
    valid = [(x[i : i + 64], y[i : i + 64]) for i in range(8_000, 10_000, 64)]
    return Network(), Batches(data, valid)


def mlp_case() -> tuple[nn.Module, Batches]:
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 1))
    x = torch.randn(256 * 24, 512)
    y = x[:, :1].clone()
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]
    return model, Batches(batches[:20], batches[20:])


class SmallCNN(nn.Module):
    """A first CNN: three 3 x 3 convolutions with BatchNorm and ReLU, pooled into a Linear
    (24,170 parameters, 1 x 28 x 28 images, 10 classes; 13 modules below the root)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def cnn_case() -> tuple[nn.Module, Batches]:
    """SmallCNN on 1 x 28 x 28 images, batch 64, cross entropy (``loss_f`` for a regression:
    the loss's own cost is the same; classes are one-hot targets)."""
    x = torch.randn(64 * 24, 1, 28, 28)
    y = nn.functional.one_hot(torch.randint(0, 10, (len(x),)), 10).float()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    return SmallCNN(), Batches(batches[:20], batches[20:])


def loss_f(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return ((y - yb) ** 2).mean()


def raw_loop(
    model: nn.Module,
    data: Batches,
    opt: torch.optim.Optimizer,
    after_step: Callable[[], object] | None = None,
) -> None:
    """One epoch: training batches, then validation under no_grad (``after_step``: called after
    each optimizer step, e.g. ``k1lib.watch``'s ``w.step``)."""
    model.train()
    for xb, yb in data.train:
        loss = loss_f(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if after_step is not None:
            after_step()
    model.eval()
    with torch.no_grad():
        for xb, yb in data.valid:
            loss_f(model(xb), yb)


def learner_loop(model: nn.Module, data: Batches, opt: torch.optim.Optimizer) -> Callable[[], object]:
    l = k1lib.Learner()  # noqa: E741
    l.model, l.data, l.opt, l.lossF = model, data, opt, loss_f
    l.cbs.ProgressBar.stream = io.StringIO()  # measure the callback, not the terminal
    for name in ("HookModule", "HookParam", "Autosave"):
        l.cbs.remove(name)
    return lambda: l.run(1)


def alternate(
    first: Callable[[], object],
    second: Callable[[], object],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` runs of each, taken alternately (A, B, A, B, ...) after a
    ``gc.collect()``: a slow phase of the machine then slows both sides."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times, strict=True):
            gc.collect()
            start = clock()
            fn()
            out.append(clock() - start)
    return times


def report(
    name: str, labels: tuple[str, str], times: tuple[list[float], list[float]], batches: int, goal: float
) -> bool:
    """Print per-batch medians and the median ratio second / first against ``goal``."""
    base, other = times
    ratio = statistics.median(o / b for o, b in zip(other, base, strict=True))
    verdict = "PASS" if ratio <= goal else "FAIL"
    print(
        f"{name:34s} {labels[0]} {statistics.median(base) / batches * 1e6:8.1f} us/batch   "
        f"{labels[1]} {statistics.median(other) / batches * 1e6:8.1f} us/batch   ratio {ratio:5.3f}x  "
        f"goal <= {goal}x  {verdict}"
    )
    return ratio <= goal


def compare(name: str, case: Callable[[], tuple[nn.Module, Batches]], goal: float, repeats: int) -> bool:
    torch.manual_seed(0)
    model, data = case()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run_learner = learner_loop(model, data, opt)
    raw_loop(model, data, opt)  # warm up both
    run_learner()
    times = alternate(lambda: raw_loop(model, data, opt), run_learner, repeats)
    return report(name, ("raw", "learner"), times, len(data.train) + len(data.valid), goal)


# ---- with a metric and the progress bar (issue 14: <= 1.05x a raw loop computing the same) -----


def mlp_classifier_case() -> tuple[nn.Module, Batches]:
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 10))
    x = torch.randn(256 * 24 - 100, 512)  # an uneven last batch
    y = x[:, :10].argmax(1)
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]
    return model, Batches(batches[:20], batches[20:])


def correct(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return y.argmax(-1) == yb


def absolute_error(y: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return (y - yb).abs().reshape(-1)


def raw_metric_loop(
    model: nn.Module,
    data: Batches,
    opt: torch.optim.Optimizer,
    lossF: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],  # noqa: N803
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[float, float]:
    """The raw loop computing the metric as one would by hand, without a sync per batch:
    sums on the device, read once at the end of each phase."""
    sums = []
    for training, batches in ((True, data.train), (False, data.valid)):
        model.train(training)
        total, count = torch.zeros((), dtype=torch.float64), 0
        with torch.set_grad_enabled(training):
            for xb, yb in batches:
                y = model(xb)
                loss = lossF(y, yb)
                if training:
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                with torch.no_grad():
                    value = metric(y, yb)
                    total += value.double().sum()
                    count += value.numel()
        sums.append(float(total) / count)
    return sums[0], sums[1]


def compare_metric(
    name: str,
    case: Callable[[], tuple[nn.Module, Batches]],
    lossF: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],  # noqa: N803
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    goal: float,
    repeats: int,
) -> bool:
    torch.manual_seed(0)
    model, data = case()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    l = k1lib.Learner()  # noqa: E741
    l.model, l.data, l.opt, l.lossF = model, data, opt, lossF
    l.cbs.ProgressBar.stream = io.StringIO()  # measure the callback, not the terminal
    for cb in ("HookModule", "HookParam", "Autosave"):
        l.cbs.remove(cb)
    if metric is correct:
        l.cbs.withAccuracy()
    else:
        l.cbs.withMetric("metric", metric)
    raw = lambda: raw_metric_loop(model, data, opt, lossF, metric)  # noqa: E731
    raw()  # warm up both
    l.run(1)
    times = alternate(raw, lambda: l.run(1), repeats)
    return report(name, ("raw", "learner"), times, len(data.train) + len(data.valid), goal)


def start(doc: str) -> int:
    """The common start of a benchmark script: ``--quick`` parsed (``doc``'s first line is the
    description), one torch thread, the versions printed; returns the alternated repeats."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine has 2 noisy cores: one thread measures steadier
    repeats = 5 if args.quick else 15
    print(f"k1lib {k1lib.__version__}, torch {torch.__version__}, {repeats} alternated repeats, 1 thread")
    return repeats


def main() -> int:
    repeats = start(__doc__)
    ok = compare("README network, batch 64", readme_case, 1.05, repeats)
    ok &= compare("MLP 512 x 6, batch 256", mlp_case, 1.02, repeats)
    ok &= compare_metric(
        "README network + |error| metric, bar", readme_case, loss_f, absolute_error, 1.05, repeats
    )
    ok &= compare_metric(
        "MLP classifier + accuracy, bar",
        mlp_classifier_case,
        nn.functional.cross_entropy,
        correct,
        1.05,
        repeats,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
