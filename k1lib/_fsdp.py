"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``): ``l.strategy = "fsdp"``.

(Work in progress: sharding by the css prop ``shard`` is being written.)
"""

from __future__ import annotations

from torch import nn

from ._unwrap import unwrap

__all__ = ["is_sharded"]


def is_sharded(model: nn.Module | None) -> bool:
    """Whether ``model`` (seen through ``torch.compile``) was sharded by ``fully_shard``: its
    parameters are then ``DTensor`` shards, and its forward and backward make collectives."""
    if model is None:
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)
