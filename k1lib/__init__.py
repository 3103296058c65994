"""k1lib: a PyTorch training loop with callbacks for looking inside models while they train.

``Learner`` runs the loop; ``Callbacks`` hook into its events; ``watch`` records HookModule's
and HookParam's statistics in a plain training loop; ``k1lib.data`` holds data helpers and
``k1lib.viz`` the sliceable plots. Modules are targeted with CSS (``l.css``,
through ``modsel``).
"""

from . import callbacks, data, viz
from ._checkpoint import CheckpointError
from ._css_optimizer import cssOptimizer
from ._learner import Learner
from ._watch import Watch, watch
from .callbacks import (
    Callback,
    Callbacks,
    CancelBatchException,
    CancelEpochException,
    CancelRunException,
)

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
    "cssOptimizer",
    "data",
    "viz",
    "watch",
]
