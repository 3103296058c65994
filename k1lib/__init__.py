"""k1lib: a PyTorch training loop with callbacks for looking inside models while they train.

``Learner`` runs the loop; ``Callbacks`` hook into its events; ``watch`` records HookModule's
and HookParam's statistics in a plain training loop; ``checkpointed`` recomputes the forward of
the modules a css gives the prop ``checkpoint`` in backward (activation checkpointing), as
``l.css`` does during a run; ``consolidate`` writes one file of a model's weights from a
sharded (FSDP) checkpoint; ``find_lr`` and ``loss_landscape`` are
ParamFinder's range test and LossLandscape's surfaces without a Learner; ``k1lib.data`` holds
data helpers and ``k1lib.viz`` the sliceable plots. Modules are targeted with CSS (``l.css``,
through ``modsel``).
"""

from . import callbacks, data, viz
from ._act_checkpoint import checkpointed
from ._checkpoint import CheckpointError
from ._css_optimizer import cssOptimizer
from ._learner import Learner
from ._sharded_checkpoint import consolidate
from ._watch import Watch, watch
from .callbacks import (
    Callback,
    Callbacks,
    CancelBatchException,
    CancelEpochException,
    CancelRunException,
)
from .callbacks.loss_landscape import loss_landscape
from .callbacks.param_finder import find_lr

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "Callbacks",
    "CancelBatchException",
    "CancelEpochException",
    "CancelRunException",
    "CheckpointError",
    "Learner",
    "Watch",
    "callbacks",
    "checkpointed",
    "consolidate",
    "cssOptimizer",
    "data",
    "find_lr",
    "loss_landscape",
    "viz",
    "watch",
]
