"""GPU check of the Learner against a raw PyTorch loop under bf16 autocast: step cost and host syncs.

    python benchmarks/gpu_learner.py [--device cuda] [--quick] [--repeats N] [--explosion-every N] [--strict]
    python benchmarks/gpu_learner.py --device cpu --quick     # smoke run without a GPU (< 1 min)

Two cases, from gpu_hooks.py: the seed README network (batch 64) and a transformer encoder
(d512, 6 layers, batch 64 x 128 tokens), their batches already on the device. Each is trained
three ways, one epoch a run, timed alternately (bench_learner's ``alternate``: raw, learner,
raw, learner, ...; then raw, hooks, ...) with one shared model and Adam optimizer:

- **raw**: bench_learner's ``raw_loop`` plus what the Learner's device and autocast
  callbacks add: each batch ``.to(device)`` (a no-op here), forward and loss under
  ``torch.autocast(device, torch.bfloat16)``, backward, ``opt.step()``, ``opt.zero_grad()``;
  validation batches under ``torch.no_grad()``.
- **learner**: ``k1lib.Learner`` with its default callbacks minus HookModule, HookParam and
  Autosave, plus ``cbs.withDevice(device)`` and ``cbs.withAutocast(torch.bfloat16)``.
  Goal (issue 5): at most 1.03x raw.
- **hooks**: the same plus HookModule and HookParam on every module (css ``*``).
  Goal: at most 1.25x raw.

Host syncs (CUDA only) are counted with ``torch.cuda.set_sync_debug_mode("warn")``, per
training batch: the syncs of a full run minus those of a run of 2 batches per loader, over
the training batches between them, so that once-a-run and once-an-epoch copies (Loss,
HookModule and HookParam flush an epoch's records) cancel out. A callback is named as a source
when suspending it lowers the count. Goal: none beyond the raw loop. CancelOnExplosion, a
default callback, reads a non-blocking copy of the loss on CUDA (it should add none); the
line also gives the count without it. ``--explosion-every N`` sets its ``every`` in both
learners.

Prints the GPU and torch version, one line per timed comparison (per-batch medians, ratio,
goal, PASS/FAIL; ratio = median of the alternated pairs' ratios), the sync lines, and a
summary line per goal. Exit status 0 unless ``--strict`` and a goal failed.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from benchmarks.bench_learner import alternate, loss_f, report
from benchmarks.gpu_hooks import count_syncs, encoder_case, readme_case
from k1lib.callbacks import CancelOnExplosion
from tests.k1lib.helpers import Batches

Case = Callable[[str, bool], tuple[nn.Module, Batches]]
CASES: list[tuple[str, str, Case]] = [  # name, name with --quick, case
    ("README network, batch 64", "README network, batch 64", readme_case),
    ("encoder d512x6, 64x128", "encoder quick d64x2 8x16", encoder_case),
]
GOALS = {"learner": 1.03, "hooks": 1.25}
FEW = 2  # batches per loader of the short run that the sync count subtracts


@dataclass
class Outcome:
    """One checked goal, for the summary."""

    case: str
    what: str
    value: float
    goal: str
    ok: bool


# ---- the three ways to train ------------------------------------------------------------------------
def raw_loop(
    model: nn.Module,
    data: Batches,
    opt: torch.optim.Optimizer,
    device: torch.device,
    limit: int | None = None,
) -> None:
    """One epoch by hand (``limit``: at most this many batches per loader): what the Learner
    with withDevice and withAutocast(bf16) does."""
    model.train()
    for xb, yb in data.train[:limit]:
        xb, yb = xb.to(device), yb.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_f(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        for xb, yb in data.valid[:limit]:
            xb, yb = xb.to(device), yb.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss_f(model(xb), yb)


def make_learner(
    model: nn.Module,
    data: Batches,
    opt: torch.optim.Optimizer,
    device: torch.device,
    hooks: bool,
    explosion_every: int | None,
) -> k1lib.Learner:
    """The Learner with its default callbacks (Autosave removed; HookModule and HookParam
    removed unless ``hooks``), on ``device`` under bf16 autocast."""
    l = k1lib.Learner()  # noqa: E741
    l.model, l.data, l.opt, l.lossF = model, data, opt, loss_f
    l.cbs.ProgressBar.stream = io.StringIO()  # measure the callback, not the terminal
    l.cbs.remove("Autosave")  # a file per run
    if hooks:
        l.css = "*"  # every module (the default, said here)
    else:
        l.cbs.remove("HookModule")
        l.cbs.remove("HookParam")
    l.cbs.withDevice(device).withAutocast(torch.bfloat16)
    if explosion_every is not None:
        explosion = l.cbs.CancelOnExplosion
        assert isinstance(explosion, CancelOnExplosion)
        explosion.every = explosion_every
    return l


# ---- timing -----------------------------------------------------------------------------------------
def clock_for(device: torch.device) -> Callable[[], float]:
    """A clock that waits for the device first, so a run's time includes its queued kernels;
    on CPU the process time (steadier on a shared machine, one thread)."""
    if device.type != "cuda":
        return time.process_time

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def timed(
    name: str,
    label: str,
    raw: Callable[[], object],
    other: Callable[[], object],
    batches: int,
    repeats: int,
    device: torch.device,
) -> Outcome:
    """Time ``raw`` and ``other`` alternately, print the report line, return the verdict."""
    times = alternate(raw, other, repeats, clock=clock_for(device))
    goal = GOALS[label]
    ok = report(f"{name}: {label}", ("raw", label), times, batches, goal)
    ratio = statistics.median(o / r for o, r in zip(times[1], times[0], strict=True))  # as report's
    return Outcome(name, f"{label} / raw", ratio, f"<= {goal}x", ok)


# ---- host syncs -------------------------------------------------------------------------------------
def syncs_per_batch(run: Callable[[int | None], object], train_batches: int, device: str) -> float:
    """Host syncs per training batch: a full run's count minus that of a run of ``FEW``
    batches per loader, over the training batches between them."""
    full = count_syncs(lambda: run(None), device)
    short = count_syncs(lambda: run(FEW), device)
    return (full - short) / (train_batches - FEW)


def sync_sources(learner: k1lib.Learner, base: float, train_batches: int, device: str) -> dict[str, float]:
    """Syncs per training batch that go away when each callback in turn is suspended."""
    found: dict[str, float] = {}
    for name in learner.cbs.names():
        with learner.cbs.suspend([name]):
            without = syncs_per_batch(partial(learner.run, 1), train_batches, device)
        if base - without > 0.005:
            found[name] = base - without
    return found


def sync_line(name: str, label: str, count: float, raw: float, sources: dict[str, float]) -> list[Outcome]:
    """Print the sync line of one learner; the outcomes: all callbacks, and CancelOnExplosion
    aside."""
    extra = count - raw
    aside = extra - sources.get("CancelOnExplosion", 0.0)
    named = ", ".join(f"{k} {v:.2f}" for k, v in sources.items()) or "none"
    ok, ok_aside = extra <= 0.005, aside <= 0.005
    print(
        f"{name + ': ' + label:34s} syncs/training batch {count:5.2f} (raw {raw:.2f}; from: {named})  "
        f"goal 0 beyond raw: {'PASS' if ok else 'FAIL'}; "
        f"without CancelOnExplosion {aside + raw:.2f}: {'PASS' if ok_aside else 'FAIL'}",
        flush=True,
    )
    return [
        Outcome(name, f"{label} syncs/batch beyond raw", extra, "0", ok),
        Outcome(name, f"{label} syncs/batch beyond raw, CancelOnExplosion aside", aside, "0", ok_aside),
    ]


def count_all(
    name: str,
    data: Batches,
    raw: Callable[[int | None], object],
    learners: dict[str, k1lib.Learner],
    device: str,
) -> list[Outcome]:
    """The sync lines of one case (CUDA only)."""
    train = len(data.train)
    raw_count = syncs_per_batch(raw, train, device)
    outcomes: list[Outcome] = []
    for label, learner in learners.items():
        count = syncs_per_batch(partial(learner.run, 1), train, device)
        sources = sync_sources(learner, count, train, device)
        outcomes += sync_line(name, label, count, raw_count, sources)
    return outcomes


# ---- one case -----------------------------------------------------------------------------------------
def compare(name: str, case: Case, args: argparse.Namespace, repeats: int) -> list[Outcome]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, data = case(args.device, args.quick)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    learners = {
        label: make_learner(model, data, opt, device, label == "hooks", args.explosion_every)
        for label in GOALS
    }

    raw = partial(raw_loop, model, data, opt, device)  # raw(limit): batches per loader, None for all
    runs = {label: partial(learner.run, 1) for label, learner in learners.items()}
    for _ in range(2):  # warm up: kernels, allocator, optimizer state, the hooks' buffers
        raw()
        for run in runs.values():
            run()
    batches = len(data.train) + len(data.valid)
    outcomes = [timed(name, label, raw, run, batches, repeats, device) for label, run in runs.items()]
    hooked = learners["hooks"]
    print(f"{'':34s} hooks record {len(hooked.HookModule)} modules, {len(hooked.HookParam)} parameters")
    if device.type == "cuda":
        outcomes += count_all(name, data, raw, learners, args.device)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny encoder, 3 repeats: to check the script")
    parser.add_argument("--repeats", type=int, default=None, help="alternated pairs (default 15, --quick 3)")
    parser.add_argument("--explosion-every", type=int, default=None, help="CancelOnExplosion.every")
    parser.add_argument("--strict", action="store_true", help="exit status 1 when a goal fails")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the CPU side: launches on a GPU; steadier times on a shared CPU
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; for a smoke run without one: --device cpu --quick")
    repeats = args.repeats or (3 if args.quick else 15)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    platform = f"{where}, torch {torch.__version__}"
    print(f"k1lib {k1lib.__version__}, {platform}, bf16 autocast, {repeats} alternated repeats, 1 thread")
    if device.type != "cuda":
        print("note: not CUDA: syncs not counted (needs torch.cuda's sync debug mode); goals are for a GPU")
    outcomes: list[Outcome] = []
    for name, quick_name, case in CASES:
        outcomes += compare(quick_name if args.quick else name, case, args, repeats)
    print("summary:")
    for o in outcomes:
        verdict = "PASS" if o.ok else "FAIL"
        print(f"  {verdict}  {o.case}: {o.what} {o.value:.3f} (goal {o.goal}; {platform})")
    return 1 if args.strict and not all(o.ok for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
