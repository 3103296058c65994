"""What checkpoint integrity costs: ``l.save`` / ``Autosave.save`` / ``l.load`` against a bare
``torch.save`` / ``torch.load`` of the same checkpoint dict, in the same run.

    python benchmarks/bench_checkpoint.py [--params M] [--tensors N] [--repeats R]

The model is N linear layers holding about M million float32 parameters, trained one step
with Adam (so the file holds 3 x M x 4 bytes). The bare save is flushed to disk (``fsync``),
as ours is: on this machine the fsync of 600 MB takes 0.1 to 1.5 s, which dominates the noise.
``l.save`` adds the digest (SHA-256 of every tensor's bytes, about 1.5 GB/s here) and the
atomic rename; ``l.load`` adds the zip's CRC check, the digest check and the checks against
the learner (keys, shapes, the optimizer state). Medians of R alternated runs, in a temporary
folder. Goal (issue 12): <= 2x the bare save and <= 3x the bare load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import k1lib
from k1lib._checkpoint import checkpoint_of, digest_of


def build(params_m: float, tensors: int) -> k1lib.Learner:
    width = max(2, int((params_m * 1e6 / max(1, tensors // 2)) ** 0.5))
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(max(1, tensors // 2))])
    learner = k1lib.Learner()
    learner.model = model
    learner.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    learner.opt.step()
    learner.cbs.remove("ProgressBar")
    return learner


def durable_save(checkpoint: object, path: Path) -> None:
    """torch.save, flushed to disk (as any save that survives a power cut must be)."""
    with open(path, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


def timed(f: object) -> float:
    start = time.perf_counter()
    f()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=25.0, help="millions of parameters")
    parser.add_argument("--tensors", type=int, default=200, help="parameter tensors")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    lrn = build(args.params, args.tensors)
    params = sum(p.numel() for p in lrn.model.parameters())
    keys = ("bare save", "l.save", "Autosave", "digest", "bare load", "l.load")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        lrn.cbs.Autosave.directory = where
        for _ in range(args.repeats):
            checkpoint = checkpoint_of(lrn)
            rows["bare save"].append(timed(lambda c=checkpoint: durable_save(c, where / "bare.pth")))
            rows["l.save"].append(timed(lambda: lrn.save(where / "ck.pth")))
            rows["Autosave"].append(timed(lambda: lrn.cbs.Autosave.save()))
            rows["digest"].append(timed(lambda c=checkpoint: digest_of(c)))
            rows["bare load"].append(timed(lambda: torch.load(where / "bare.pth", weights_only=True)))
            rows["l.load"].append(timed(lambda: lrn.load(where / "ck.pth")))
        size = (where / "ck.pth").stat().st_size
    median = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{params / 1e6:.1f}M parameters in {args.tensors} tensors, file {size / 1e6:.0f} MB")
    for key, value in median.items():
        base = median["bare load"] if "load" in key else median["bare save"]
        print(f"  {key:10s} {value:7.3f} s  {value / base:5.2f}x")
    save_ok = median["l.save"] <= 2 * median["bare save"]
    load_ok = median["l.load"] <= 3 * median["bare load"]
    print(
        f"goal l.save <= 2x: {'PASS' if save_ok else 'FAIL'}; l.load <= 3x: {'PASS' if load_ok else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
