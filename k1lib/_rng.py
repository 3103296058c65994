"""Random generators a run draws from: torch's global ones and those a data loader holds.

Checkpoints save them; ParamFinder and LossLandscape put them back after their own runs, so
that the next training run is the one it would have been.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["RngSnapshot", "loader_generators"]

# where loaders keep their generators (k1lib's DataLoader, torch's DataLoader and its sampler)
_GENERATOR_PLACES = ("generator", "_generator", "sampler.generator", "batch_sampler.sampler.generator")


def loader_generators(loader: Any) -> Iterator[tuple[str, torch.Generator]]:
    """The generators a loader draws its order from, by where they sit (each once)."""
    seen: set[int] = set()
    for place in _GENERATOR_PLACES:
        obj = loader
        for part in place.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Generator) and id(obj) not in seen:
            seen.add(id(obj))
            yield place, obj


class RngSnapshot:
    """torch's global generators (CPU, and CUDA when initialized) and, with ``data``, the
    generators its ``train`` and ``valid`` loaders hold; ``restore()`` puts them back."""

    def __init__(self, data: Any = None) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
        self.generators = [
            (generator, generator.get_state())
            for loader in (getattr(data, "train", None), getattr(data, "valid", None))
            for _, generator in loader_generators(loader)
        ]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for generator, state in self.generators:
            generator.set_state(state)
