"""LossLandscape: seconds per surface, against the 2021-style loop and plain forward passes.

    python benchmarks/bench_landscape.py [--quick] [--threads N] [--device cuda]

Goals (issue "Seeing inside training"):
- README network, one validation batch of 64, 50 x 50 surfaces: at most 0.25 s a surface; the
  2021-style loop (``p.data = w + a*d1 + b*d2`` for every parameter, forward, ``loss.item()``
  per point) is the baseline it is compared with.
- MLP 512 x 6 on a batch of 256 (compute-bound): ``compute()`` within 1.1x of the same number of
  plain forward passes (``lossF(model(xb), yb)`` in a loop under ``no_grad``, one sync at the end).
- (issue 17) a small CNN (38k parameters, 8 x 8 images, a batch of 256): the default call (no
  ``resolution``: the grid fits the 10 s budget) within 15 s, with the grid it chose; the
  README network's default grid stays 51 x 51.

``LossLandscape.compute`` (the figure is not drawn) is timed for the default options: both
direction pairs and the four ranges, so the one-off costs (the batch, the centre, the engine's
first checked call) are spread over the 8 surfaces, as in ``plot()``. Times are medians of
alternated runs in one process; the ratios compare medians of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from k1lib.callbacks.loss_landscape import directions
from tests.k1lib.helpers import Batches
from tests.modsel.models import Network


def readme_learner(device: str) -> Any:
    torch.manual_seed(0)
    learner = k1lib.Learner()
    learner.model = Network().to(device)
    learner.data = k1lib.data.Data.fromDataset(k1lib.data.FunctionDataset.exp, batchSize=64)
    learner.opt = torch.optim.Adam(learner.model.parameters(), lr=1e-2)
    learner.lossF = lambda x, y: ((x.squeeze() - y) ** 2).mean()
    learner.cbs.withModifyBatch(lambda x, y: (x[:, None].to(device), y.to(device)))
    learner.cbs.withDType(torch.float32)
    return learner


def mlp_learner(device: str) -> Any:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 1)).to(device)
    x = torch.randn(256, 512, device=device)
    learner = k1lib.Learner()
    learner.model = model
    learner.data = Batches([(x, x[:, :1].clone())], [(x, x[:, :1].clone())])
    learner.opt = torch.optim.SGD(model.parameters(), lr=0.1)
    learner.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    return learner


class SmallCNN(nn.Module):
    """38,186 parameters for 3 x 8 x 8 images and 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def cnn_learner(device: str) -> Any:
    torch.manual_seed(0)
    model = SmallCNN().to(device)
    x = torch.randn(256, 3, 8, 8, device=device)
    y = torch.randint(0, 10, (256,), device=device)
    learner = k1lib.Learner()
    learner.model = model
    learner.data = Batches([(x, y)], [(x, y)])
    learner.opt = torch.optim.SGD(model.parameters(), lr=0.1)
    learner.lossF = nn.functional.cross_entropy
    return learner


def default_call(learner: Any) -> tuple[float, str]:
    """Seconds of ``compute()`` with the default options, once, and the line saying its grid."""
    out = io.StringIO()
    gc.collect()
    with contextlib.redirect_stdout(out):
        start = time.perf_counter()
        learner.LossLandscape.compute()
        seconds = time.perf_counter() - start
    chosen = next(line for line in out.getvalue().splitlines() if "points a surface" in line)
    return seconds, chosen


def loop_2021(learner: Any, resolution: int, radius: float = 1.0) -> None:
    """One surface the 2021 way: move every parameter through ``.data``, forward, ``.item()``."""
    model = learner.model
    xb, yb = next(iter(learner.data.valid))
    device = next(model.parameters()).device
    xb, yb = xb[:, None].float().to(device), yb.float().to(device)
    params = list(model.parameters())
    originals = [p.data for p in params]
    d1, d2 = directions(model, pairs=1)[0]
    dirs = [(d1[n], d2[n]) for n, _ in model.named_parameters()]
    grid = torch.linspace(-radius, radius, resolution).tolist()
    model.eval()
    try:
        with torch.no_grad():
            for a in grid:
                for b in grid:
                    for p, w, (u, v) in zip(params, originals, dirs, strict=True):
                        p.data = w + a * u + b * v
                    learner.lossF(model(xb), yb).item()
    finally:
        for p, w in zip(params, originals, strict=True):
            p.data = w


def plain_forwards(learner: Any, n: int) -> None:
    xb, yb = next(iter(learner.data.valid))
    learner.model.eval()
    with torch.no_grad():
        losses = [learner.lossF(learner.model(xb), yb) for _ in range(n)]
        torch.stack(losses).tolist()


def timed(f: Callable[[], object]) -> float:
    gc.collect()
    with contextlib.redirect_stdout(io.StringIO()):  # the progress lines
        start = time.perf_counter()
        f()
        return time.perf_counter() - start


def auto(cb: Any, engines: list[str], **options: Any) -> None:
    """``cb.compute(**options)`` with the default engine ("auto"), noting the engine it chose."""
    cb.compute(**options)
    engines.append(cb.engine)


def alternate(fs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turn ``repeats`` times (after one warm-up each)."""
    for f in fs.values():
        timed(f)
    times: dict[str, list[float]] = {name: [] for name in fs}
    for _ in range(repeats):
        for name, f in fs.items():
            times[name].append(timed(f))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller MLP grid")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="where the models and batches live (cpu, cuda)")
    parser.add_argument("--only-default", action="store_true", help="only the default-call rows (issue 17)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    device = args.device
    on_gpu = device.startswith("cuda")
    where = torch.cuda.get_device_name() if on_gpu else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device}: {where}, repeats {repeats}")

    # ---- the default call: the grid fits the budget ---------------------------------------------
    cnn = cnn_learner(device)
    params = sum(p.numel() for p in cnn.model.parameters())
    seconds, chosen = default_call(cnn)
    print(f"\nSmall CNN ({params} parameters), 8 x 8 images, batch 256: default compute()")
    print(f"  {seconds:6.2f} s   {chosen}")
    print(f"  goal <= 15 s: {'PASS' if seconds <= 15 else 'FAIL'}")
    seconds, chosen = default_call(readme_learner(device))
    print("README network, batch 64: default compute()")
    print(f"  {seconds:6.2f} s   {chosen}")
    print(f"  goal 51 x 51: {'PASS' if chosen.split(': ')[1].startswith('51 x 51') else 'FAIL'}")
    if args.only_default:
        return

    # ---- README network, 50 x 50 ---------------------------------------------------------------
    learner = readme_learner(device)
    cb = learner.LossLandscape
    surfaces = 8
    chosen: list[str] = []
    fs: dict[str, Callable[[], object]] = {
        "auto": lambda: auto(cb, chosen, resolution=50),
        "vmap": lambda: cb.compute(resolution=50, engine="vmap"),
        "2021 loop": lambda: loop_2021(learner, 50),
    }
    med = alternate(fs, repeats)
    per = {"auto": med["auto"] / surfaces, "vmap": med["vmap"] / surfaces, "2021 loop": med["2021 loop"]}
    print("\nREADME network, batch 64, 50 x 50 surface (seconds per surface, median)")
    for name, s in per.items():
        print(f"  {name:10} {s:8.4f} s   {per['2021 loop'] / s:6.1f}x faster than the 2021 loop")
    verdict = "PASS" if per["auto"] <= 0.25 else "FAIL"
    print(f"  goal <= 0.25 s a surface: {verdict} (auto chose: {', '.join(sorted(set(chosen)))})")

    # ---- MLP 512 x 6, batch 256 -----------------------------------------------------------------
    learner = mlp_learner(device)
    cb = learner.LossLandscape
    resolution = 6 if args.quick else 12
    points = 8 * resolution**2
    chosen = []
    fs = {
        "landscape": lambda: auto(cb, chosen, resolution=resolution),
        "plain": lambda: plain_forwards(learner, points),
    }
    if not args.quick:
        fs["vmap"] = lambda: cb.compute(resolution=resolution, engine="vmap")
    med = alternate(fs, repeats)
    ratio = med["landscape"] / med["plain"]
    print(f"\nMLP 512 x 6, batch 256, 8 surfaces of {resolution} x {resolution} = {points} points (median s)")
    print(f"  plain forward passes {med['plain']:8.3f} s")
    engines = ", ".join(sorted(set(chosen)))
    print(f"  compute() (auto)     {med['landscape']:8.3f} s   {ratio:5.3f}x plain (auto chose: {engines})")
    if "vmap" in med:
        print(f"  compute(engine=vmap) {med['vmap']:8.3f} s   {med['vmap'] / med['plain']:5.3f}x plain")
    print(f"  goal <= 1.1x: {'PASS' if ratio <= 1.1 else 'FAIL'}")


if __name__ == "__main__":
    main()
