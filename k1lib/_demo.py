"""The main job: train the seed README's network with the default callbacks and write what
they saw as PNG files.

    python -m k1lib [FOLDER]     (default folder: k1lib-demo)
    torchrun --standalone --nproc_per_node=2 -m k1lib [FOLDER]     (the same on 2 processes)
    torchrun --standalone --nproc_per_node=2 -m k1lib --strategy fsdp [FOLDER]   (sharded: FSDP2)

It prints the annotated module tree, trains (the README's ``newL()``: Adam, CancelOnLowLoss),
then writes loss.png, HookModule.png, HookParam.png, ParamFinder.png and LossLandscape.png,
and the run's checkpoints (Autosave), into FOLDER. Under torchrun every rank finds the rate
and trains (DDP); rank 0 alone prints, draws and writes. With ``--strategy fsdp`` each
SkipBlock is a shard unit (``SkipBlock: shard``), every rank writes its shards of the
checkpoints, and the loss landscape is drawn by rank 0 on the whole model, written to one
file from the last checkpoint (``k1lib.consolidate``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib
import torch
from torch import nn, optim

import k1lib


class SkipBlock(nn.Module):
    """The README's residual block: three Linear + LeakyReLU pairs and a skip connection."""

    def __init__(self, hiddenDim: int = 10) -> None:  # noqa: N803 - the README's name
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Linear(hiddenDim, hiddenDim), nn.LeakyReLU()]
        self.seq = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x) + x  # type: ignore[no-any-return]


class Network(nn.Module):
    """The README's network: Linear, LeakyReLU, ``blocks`` SkipBlocks, Linear."""

    def __init__(self, hiddenDim: int = 10, blocks: int = 3) -> None:  # noqa: N803
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(1, hiddenDim), nn.LeakyReLU()]
        layers += [SkipBlock(hiddenDim) for _ in range(blocks)]
        layers += [nn.Linear(hiddenDim, 1)]
        self.bulk = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bulk(x)  # type: ignore[no-any-return]


def newL(folder: Path) -> k1lib.Learner:  # noqa: N802 - the README's name
    """The README's learner: y = exp(x) on [-5, 5], stopping at a valid loss under 1."""
    l = k1lib.Learner()  # noqa: E741
    l.model = Network()
    l.data = k1lib.data.Data.fromDataset(k1lib.data.FunctionDataset.exp, batchSize=64)
    l.opt = optim.Adam(l.model.parameters(), lr=1e-2)
    l.lossF = lambda x, y: ((x.squeeze() - y) ** 2).mean()
    l.cbs.withModifyBatch(lambda x, y: (x[:, None], y))
    l.cbs.withDType(torch.float32)
    l.cbs.withCancelOnLowLoss(1, epochMode=True)
    l.cbs.remove("Autosave")
    l.cbs.withAutosave(str(folder))
    l.css = "SkipBlock #0: HookParam\nSkipBlock: HookModule"
    return l


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m k1lib", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="k1lib-demo", help="where the PNGs go")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="under torchrun")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    torch.set_num_threads(1)  # the README network is tiny: more threads only add overhead
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(0)

    l = newL(folder)  # noqa: E741
    if args.strategy == "fsdp":
        l.strategy = "fsdp"
        l.css += "\nSkipBlock: shard"
    main = l.rank == 0  # under torchrun: rank 0 prints and writes, every rank trains
    say = print if main else _quiet
    say(l.moduleSelector, end="\n\n")
    say("Finding a learning rate (ParamFinder):")
    finder = l.ParamFinder.plot(samples=1000)[:0.99]
    if main:
        finder.save(os.fspath(folder / "ParamFinder.png"))
    ranks = f" on {l.worldSize} processes" if l.worldSize > 1 else ""
    say(f"\nTraining {args.epochs} epochs{ranks}:")
    l.run(args.epochs)
    whole = l
    if k1lib._fsdp.is_sharded(l.model):  # the landscape needs the whole model: one file of it
        l.save(folder / "final")  # every rank writes its shards
        if main:
            k1lib.consolidate(folder / "final", folder / "weights.pt")
            whole = newL(folder)
            assert whole.model is not None
            whole.model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    if not main:
        return 0
    l.Loss.plot().save(os.fspath(folder / "loss.png"))
    l.HookModule.plot().save(os.fspath(folder / "HookModule.png"))
    l.HookParam.plot().save(os.fspath(folder / "HookParam.png"))
    print("Loss landscape:")
    landscape = whole.LossLandscape.plot()
    _save_figure(landscape, folder / "LossLandscape.png")
    print(f"\nlast epoch: train loss {l.Loss.epoch.train[-1]:.3f}, valid loss {l.Loss.epoch.valid[-1]:.3f}")
    written = sorted(p.name for p in folder.iterdir())
    print(f"wrote {', '.join(written)} to {folder}/ in {time.perf_counter() - start:.1f}s")
    return 0


def _quiet(*args: object, **kwargs: object) -> None:
    """``print`` on ranks other than 0: nothing."""


def _save_figure(result: object, path: Path) -> None:
    """Save what LossLandscape.plot() returned (a Figure or an object that draws one)."""
    for method in ("savefig", "save"):
        save = getattr(result, method, None)
        if callable(save):
            save(os.fspath(path))
            return
    raise TypeError(f"cannot save a {type(result).__name__} as a PNG")


if __name__ == "__main__":
    sys.exit(main())
