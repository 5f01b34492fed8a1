"""Training small models, knowing nothing about Optuna: model builders (``models``), the
training loop for one model or a stack of several (``loop``, ``stack``; one model under
training is a ``Trainee``), losses, optimizers and schedules, augmentation, and the training
device.

The names below are the public surface; each lives in the module named beside it.
"""

from hpsearch.training.config import (
    GROUP_PARAMS,
    HYPERPARAMETERS,
    LR_SCHEDULES,
    OPTIMIZERS,
    Crashed,
    Diverged,
    EpochResult,
    NonFiniteLossError,
    Outcome,
    TrainConfig,
    TrainResult,
    TrainState,
)
from hpsearch.training.devices import resolve_device
from hpsearch.training.loop import (
    batch_indices,
    n_batches,
    predict,
    seeded,
    train,
    train_many,
    train_stack,
)
from hpsearch.training.losses import (
    CLASSIFICATION_LOSSES,
    GAUSSIAN_LOSSES,
    REGRESSION_LOSSES,
    LossFn,
    gaussian_nll,
)
from hpsearch.training.optim import make_optimizer, make_scheduler
from hpsearch.training.trainee import Evaluate, OnEpoch, Trainee

__all__ = [
    "CLASSIFICATION_LOSSES",
    "GAUSSIAN_LOSSES",
    "GROUP_PARAMS",
    "HYPERPARAMETERS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "REGRESSION_LOSSES",
    "Crashed",
    "Diverged",
    "EpochResult",
    "Evaluate",
    "LossFn",
    "NonFiniteLossError",
    "OnEpoch",
    "Outcome",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainee",
    "batch_indices",
    "gaussian_nll",
    "make_optimizer",
    "make_scheduler",
    "n_batches",
    "predict",
    "resolve_device",
    "seeded",
    "train",
    "train_many",
    "train_stack",
]
