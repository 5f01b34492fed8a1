"""What one model's training is told and what it reports: ``TrainConfig`` (the training
hyperparameters, which double as the study-file check of each), the per-epoch and final
results, and ``TrainState``, the checkpoint a retried trial resumes from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_type_hints

import torch
from pydantic import Field

from hpsearch.training.augment import Affine

Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
LrSchedule = Literal["none", "step", "cosine", "onecycle"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
# The training hyperparameters that the models of one stack share (training.stack): steps
# per epoch, epochs, and how a step runs. With a builder's layer-setting hyperparameters they
# make a problem's ``group_params``.
GROUP_PARAMS = frozenset({"batch_size", "epochs", "bf16", "channels_last"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything the loop needs besides the model and the data. The annotations double as
    the study-file check of each training hyperparameter (``HYPERPARAMETERS``)."""

    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=2)]  # batch norm cannot train on one row
    optimizer: Optimizer = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    momentum: Annotated[float, Field(ge=0, le=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    lr_schedule: LrSchedule = "none"
    lr_step_epochs: Annotated[int, Field(ge=1)] = 10
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    fused: bool = True  # fused Adam/AdamW kernels; off gives PyTorch's default (foreach)
    # Image batches and conv weights in NHWC order: shorter epochs on the CPU for conv nets
    # (docs/performance.md); no effect on MLPs.
    channels_last: bool = True
    # bfloat16 autocast of forward passes: faster on CPUs with bf16 units (AMX), slower
    # elsewhere and different numerics, so off unless a study switches it on.
    bf16: bool = False
    # Random affine and elastic distortion of each training image (training.augment); 0
    # turns each off.
    aug_translate: Annotated[float, Field(ge=0, le=0.5)] = 0.0  # fraction of the image size
    aug_rotate: Annotated[float, Field(ge=0, le=180)] = 0.0  # degrees
    aug_scale: Annotated[float, Field(ge=0, le=0.9)] = 0.0  # relative size change
    aug_shear: Annotated[float, Field(ge=0, le=60)] = 0.0  # degrees
    aug_elastic: Annotated[float, Field(ge=0, le=4)] = 0.0  # pixels, root-mean-square
    seed: int = 0

    @property
    def augmentation(self) -> Affine:
        return Affine(
            self.aug_translate, self.aug_rotate, self.aug_scale, self.aug_shear, self.aug_elastic
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, seed: int = 0) -> TrainConfig:
        """Pick the training keys out of a trial's full params."""
        known = {key: params[key] for key in HYPERPARAMETERS if key in params}
        return cls(**known, seed=seed)


# Training hyperparameter -> its pydantic type (the valid values a study file may give).
HYPERPARAMETERS: dict[str, Any] = {
    name: kind
    for name, kind in get_type_hints(TrainConfig, include_extras=True).items()
    if name != "seed"
}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: what ``train`` raises for a ``Diverged``
    model (a diverging run, such as SGD in the lab report)."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(str(Diverged(epoch, loss)))
        self.epoch = epoch
        self.loss = loss


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    metrics: dict[str, float]
    seconds: float  # since training started


@dataclass
class TrainResult:
    """A model's training that ran to its end: every epoch, or until its ``on_epoch``
    stopped it (``stopped``, the reason it gave)."""

    epochs_run: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    history: list[EpochResult] = field(default_factory=list)
    stopped: str | None = None


@dataclass(frozen=True)
class Diverged:
    """The training loss became NaN or infinite in ``epoch``."""

    epoch: int
    loss: float

    def __str__(self) -> str:
        return f"non-finite training loss ({self.loss}) in epoch {self.epoch}"


@dataclass(frozen=True)
class Crashed:
    """Training raised ``error`` (out of memory, a bug in a model): the model did not end."""

    error: Exception


# How a model's training ended; the loop yields one per model, and raises nothing of a
# model's own.
Outcome = TrainResult | Diverged | Crashed


@dataclass
class TrainState:
    """A checkpoint: everything needed to continue training after ``epoch``."""

    epoch: int
    train_loss: float
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    generator: torch.Tensor  # the batch-order generator
    rng: torch.Tensor  # the global CPU generator (dropout and augmentation, on the CPU)
    cuda_rng: torch.Tensor | None = None
