"""GPU check for HookModule + HookParam: step cost and host syncs, on a CUDA machine.

    python benchmarks/gpu_hooks.py [--device cuda] [--quick]

A transformer encoder (d512, 6 layers, batch 64 x 128 tokens) and the seed README network,
trained by the Learner with its default callbacks (Autosave removed) against the same Learner
with HookModule and HookParam recording every module (css ``*``), in float32 and under bf16
autocast (``cbs.withAutocast(torch.bfloat16)``). Goals (issue 17, goal 4): on the encoder at
most 1.10x a step in float32 and 1.25x under bf16 autocast, and zero host syncs per batch from
the hook callbacks (counted with torch.cuda's sync debug mode: the syncs of the run with hooks
minus those without). Prints one line per case, with PASS/FAIL for the encoder.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k1lib
from tests.k1lib.helpers import Batches
from tests.modsel.models import Network


class Encoder(nn.Module):
    """Embedding-free encoder: inputs are (batch, tokens, d) already."""

    def __init__(self, d: int = 512, layers: int = 6) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 8, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # type: ignore[no-any-return]


def encoder_case(device: str, quick: bool) -> tuple[nn.Module, Batches]:
    batch, tokens, d = (8, 16, 64) if quick else (64, 128, 512)
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(batch, tokens, d, generator=g), torch.randn(batch, tokens, 1, generator=g))
        for _ in range(12)
    ]
    to = [(x.to(device), y.to(device)) for x, y in data]
    model = Encoder(d, 6) if not quick else Encoder(d, 2)
    return model.to(device), Batches(to[:10], to[10:])


def readme_case(device: str, quick: bool) -> tuple[nn.Module, Batches]:
    x = torch.rand(8_000, 1) * 10 - 5
    y = torch.exp(x)
    batches = [(x[i : i + 64].to(device), y[i : i + 64].to(device)) for i in range(0, 8_000, 64)]
    return Network().to(device), Batches(batches[:100], batches[100:])


def learner(model: nn.Module, data: Batches, hooks: bool, bf16: bool) -> Any:
    l = k1lib.Learner()  # noqa: E741
    l.model, l.data = model, data
    l.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    l.lossF = lambda y, yb: ((y.float() - yb) ** 2).mean()
    l.cbs.ProgressBar.stream = io.StringIO()
    l.cbs.remove("Autosave")
    if not hooks:
        l.cbs.remove("HookModule")
        l.cbs.remove("HookParam")
    if bf16:
        l.cbs.withAutocast(torch.bfloat16)
    return l


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def count_syncs(fn: Callable[[], object], device: str) -> int:
    """Host syncs during ``fn()`` (here one run of a learner), from torch.cuda's sync debug
    mode; -1 off CUDA, where there is nothing to count."""
    if not device.startswith("cuda"):
        return -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def compare(name: str, case: Callable[[str, bool], tuple[nn.Module, Batches]], args: Any, bf16: bool) -> None:
    torch.manual_seed(0)
    model, data = case(args.device, args.quick)
    plain, hooked = learner(model, data, False, bf16), learner(model, data, True, bf16)
    for each in (plain, hooked):  # warm up
        each.run(1)
    times: dict[str, list[float]] = {"plain": [], "hooked": []}
    for _ in range(args.repeats):
        for key, each in (("plain", plain), ("hooked", hooked)):
            synchronize(args.device)
            start = time.perf_counter()
            each.run(1)
            synchronize(args.device)
            times[key].append(time.perf_counter() - start)
    ratio = statistics.median(h / p for h, p in zip(times["hooked"], times["plain"], strict=True))
    goal = 1.25 if bf16 else 1.10
    verdict = "" if "encoder" not in name else ", PASS" if ratio <= goal else ", FAIL"
    batches = len(data.train) + len(data.valid)
    syncs = count_syncs(lambda: hooked.run(1), args.device) - count_syncs(lambda: plain.run(1), args.device)
    train = len(data.train)
    print(
        f"{name:28s} {'bf16' if bf16 else 'fp32'}  "
        f"without {statistics.median(times['plain']) / batches * 1e3:7.2f} ms/batch  "
        f"with hooks {statistics.median(times['hooked']) / batches * 1e3:7.2f} ms/batch  "
        f"ratio {ratio:5.3f}x (goal <= {goal}x{verdict})  "
        f"extra syncs per run {syncs} over {train} training batches"
        f" ({len(hooked.HookModule)} modules, {len(hooked.HookParam)} params)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"k1lib {k1lib.__version__}, torch {torch.__version__}, {gpu}, {args.repeats} alternated repeats")
    compare("encoder d512 x 6, 64 x 128", encoder_case, args, bf16=False)
    if args.device.startswith("cuda"):
        compare("encoder d512 x 6, 64 x 128", encoder_case, args, bf16=True)
    compare("README network, batch 64", readme_case, args, bf16=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
