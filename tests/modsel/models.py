"""Small fixture models shared by the modsel tests (one place, as the style guide asks)."""

from __future__ import annotations

import torch
from torch import nn


class SkipBlock(nn.Module):
    """The seed README's block."""

    def __init__(self, hiddenDim: int = 10) -> None:  # the seed README's name
        super().__init__()

        def gen() -> tuple[nn.Module, nn.Module]:
            return nn.Linear(hiddenDim, hiddenDim), nn.LeakyReLU()

        self.seq = nn.Sequential(*gen(), *gen(), *gen())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x) + x


class Network(nn.Module):
    """The seed README's network: bulk = Linear, LeakyReLU, 3 SkipBlocks, Linear."""

    def __init__(self, hiddenDim: int = 10, blocks: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(1, hiddenDim), nn.LeakyReLU()]
        layers += [SkipBlock(hiddenDim) for _ in range(blocks)]
        layers += [nn.Linear(hiddenDim, 1)]
        self.bulk = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bulk(x)


def network() -> Network:
    torch.manual_seed(0)
    return Network()


class Shared(nn.Module):
    """One Linear registered at two places (``a`` and ``b.inner``), plus a None child."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Sequential()
        self.b.add_module("inner", self.a)
        self.b.add_module("relu", nn.ReLU())
        self.missing = None  # registered below as a None submodule
        self.register_module("nothing", None)
        self.c = nn.Linear(2, 3, bias=False)


class Weird(nn.Module):
    """ModuleDict keys with dashes, spaces, non-ASCII and leading digits."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                "my-head": nn.Linear(2, 2),
                "with space": nn.ReLU(),
                "ünïcode": nn.Linear(2, 1),
                "3d": nn.Conv3d(1, 1, 3),
            }
        )


def wide(n: int = 7000) -> nn.ModuleList:
    """A ModuleList of ``n`` alternating Linear / ReLU children."""
    return nn.ModuleList([nn.Linear(1, 1) if i % 2 == 0 else nn.ReLU() for i in range(n)])
