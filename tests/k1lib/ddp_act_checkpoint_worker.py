"""One rank of the 2-process activation-checkpointing test (``test_act_checkpoint.py`` launches
it with torchrun): the same DDP run with and without ``l.css = "Block: checkpoint"``.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_act_checkpoint_worker.py OUT

Each rank saves what it saw to ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import k1lib


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim)
        self.drop = nn.Dropout(0.2)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.drop(torch.tanh(self.up(x))))


class Net(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(1, dim)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x[:, None])))[:, 0]  # type: ignore[no-any-return]


def run(rank: int, css: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Net()
    l = k1lib.Learner()
    l.model = model
    x = torch.linspace(-2, 2, 160)
    l.data = k1lib.data.Data.fromDataset((x, torch.sin(2 * x)), batchSize=20)
    l.opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    l.lossF = lambda y, yb: ((y - yb) ** 2).mean()
    for name in ("ProgressBar", "Autosave", "LossLandscape", "ParamFinder"):
        l.cbs.remove(name)
    l.css = css
    calls = {True: 0, False: 0}  # by the module's mode: training, validation

    def count(module: nn.Module, *_: Any) -> None:
        calls[module.training] += 1

    model.blocks[0].up.register_forward_hook(count)
    torch.manual_seed(1 + rank)  # the dropout masks: each rank its own
    l.run(2)
    return {
        "final": {k: v.clone() for k, v in model.state_dict().items()},
        "calls": calls,
        "batches": l.batches,
        "HookModule": l.HookModule.state_dict(),
        "own_forwards": [n for n, m in model.named_modules() if "forward" in m.__dict__],
        "model_type": type(l.model).__name__,
        "world": l.worldSize,
    }


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    os.chdir(out)
    torch.set_num_threads(1)
    results = {"plain": run(rank, "*"), "checkpoint": run(rank, "*\nBlock: checkpoint")}
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
