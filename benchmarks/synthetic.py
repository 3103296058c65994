"""The synthetic ~100k-module, transformer-shaped model the benchmarks share."""

from __future__ import annotations

from torch import nn

__all__ = ["Synthetic"]


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(1, 1)
        self.k = nn.Linear(1, 1)
        self.v = nn.Linear(1, 1)
        self.o = nn.Linear(1, 1)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(1, 1), nn.GELU(), nn.Linear(1, 1), nn.Dropout())
        self.ln1 = nn.LayerNorm(1)
        self.ln2 = nn.LayerNorm(1)


class Synthetic(nn.Module):
    """A transformer-like tree: ``layers`` is a ModuleList of ``blocks`` blocks of 13 modules."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(blocks))
