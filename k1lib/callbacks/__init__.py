"""Callbacks: the base class, the container and the built-in callbacks (one per file)."""

from .autocast import Autocast
from .autosave import Autosave
from .batch_limit import BatchLimit
from .best_checkpoint import BestCheckpoint
from .callback import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelRunException,
)
from .callbacks import Callbacks, Timings
from .cancel_on_explosion import CancelOnExplosion
from .cancel_on_low_loss import CancelOnLowLoss
from .csv_logger import CSVLogger
from .device import Device
from .dont_train import DontTrain
from .dont_train_valid import DontTrainValid
from .dtype import DType
from .early_stopping import EarlyStopping
from .epoch_limit import EpochLimit
from .grad_accumulation import GradAccumulation
from .grad_clipping import GradClipping
from .hook_module import HookModule
from .hook_param import HookParam
from .inspect_batch import InspectBatch
from .inspect_loss import InspectLoss
from .inspect_output import InspectOutput
from .loss import Loss
from .loss_landscape import LossLandscape
from .metrics import Accuracy, Metric
from .modify_batch import ModifyBatch
from .modify_output import ModifyOutput
from .one_cycle import OneCycle
from .param_finder import ParamFinder
from .progress_bar import ProgressBar
from .scheduler import Scheduler
from .tensorboard import TensorBoard

__all__ = [
    "EVENTS",
    "Accuracy",
    "Autocast",
    "Autosave",
    "BatchLimit",
    "BestCheckpoint",
    "CSVLogger",
    "Callback",
    "Callbacks",
    "CancelBatchException",
    "CancelEpochException",
    "CancelException",
    "CancelOnExplosion",
    "CancelOnLowLoss",
    "CancelRunException",
    "DType",
    "Device",
    "DontTrain",
    "DontTrainValid",
    "EarlyStopping",
    "EpochLimit",
    "GradAccumulation",
    "GradClipping",
    "HookModule",
    "HookParam",
    "InspectBatch",
    "InspectLoss",
    "InspectOutput",
    "Loss",
    "LossLandscape",
    "Metric",
    "ModifyBatch",
    "ModifyOutput",
    "OneCycle",
    "ParamFinder",
    "ProgressBar",
    "Scheduler",
    "TensorBoard",
    "Timings",
]
