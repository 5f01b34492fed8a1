"""The training loop: optimizers, schedules, losses and ``train``. Knows nothing about Optuna.

Data arrive as whole tensors on the training device; each epoch draws one random permutation
and slices mini-batches out of it, so there is no per-sample Python work.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_type_hints

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hpsearch.augment import Affine, random_affine
from hpsearch.errors import HpsearchError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOG_2PI = math.log(2 * math.pi)


def gaussian_nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood of ``target`` under ``output = (mean, log_var)``.

    With ``log_var = 0`` (sigma = 1) this is half the squared error plus a constant.
    """
    mean, log_var = output[:, 0], output[:, 1]
    return 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var) + LOG_2PI).mean()


def _onehot_mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The lab report's classification loss: MSE between softmax outputs and one-hot labels.
    probs = logits.softmax(dim=-1)
    return F.mse_loss(probs, F.one_hot(target, probs.shape[-1]).to(probs.dtype))


def _mean_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # A Gaussian regressor trained with sigma fixed to 1: only its mean head learns.
    return F.mse_loss(output[:, 0], target)


def _smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Label smoothing (Szegedy et al. 2016): the target puts 0.9 on the label and spreads
    # 0.1 over all classes, so the net is not pushed to ever larger logits.
    return F.cross_entropy(logits, target, label_smoothing=0.1)


CLASSIFICATION_LOSSES: dict[str, LossFn] = {
    "cross_entropy": F.cross_entropy,
    "smoothed_cross_entropy": _smoothed_cross_entropy,
    "mse": _onehot_mse,
}
REGRESSION_LOSSES: dict[str, LossFn] = {
    "mse": F.mse_loss,
    # Squared error within one standard deviation of the target, absolute error beyond:
    # a few mispriced houses pull the fit less.
    "huber": F.huber_loss,
}
GAUSSIAN_LOSSES: dict[str, LossFn] = {"gaussian_nll": gaussian_nll, "mse": _mean_mse}

Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
LrSchedule = Literal["none", "step", "cosine", "onecycle"]
# What a trial group's members share besides the model's shapes: steps per epoch, epochs,
# and how a step runs (hpsearch.groups).
GROUP_PARAMS = frozenset({"batch_size", "epochs", "bf16", "channels_last"})
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
PER_BATCH_SCHEDULES = frozenset({"onecycle"})


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (a diverging run, such as SGD in the lab report)."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"non-finite training loss ({loss}) in epoch {epoch}")
        self.epoch = epoch
        self.loss = loss


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
    # Random affine and elastic distortion of each training image (hpsearch.augment); 0
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


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    metrics: dict[str, float]
    seconds: float  # since training started


@dataclass
class TrainResult:
    epochs_run: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    history: list[EpochResult] = field(default_factory=list)


@dataclass
class TrainState:
    """A checkpoint: everything needed to continue training after ``epoch``."""

    epoch: int
    train_loss: float
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    generator: torch.Tensor  # the batch-order generator
    rng: torch.Tensor  # the global CPU generator (dropout, on the CPU)
    cuda_rng: torch.Tensor | None = None


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam and AdamW use PyTorch's fused kernels (one kernel for all parameters): a small
    model's step is dominated by per-tensor overhead (benchmarks/step_overhead.py)."""
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer in ("adam", "adamw"):
        adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        fused = config.fused and all(p.device.type in ("cpu", "cuda") for p in params)
        return adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, with each per-parameter tensor (Adam's moments)
    laid out like its parameter: fused kernels walk both in memory order, so moments saved
    in another layout (NCHW from a trial group, NHWC from ``channels_last``) would be
    applied to the wrong weights."""
    optimizer.load_state_dict(state)
    for param, values in optimizer.state.items():
        for key, value in values.items():
            if (
                isinstance(value, torch.Tensor)
                and value.shape == param.shape
                and value.stride() != param.stride()
            ):
                values[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, batches_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule of ``config.lr_schedule``; ``onecycle`` steps every batch, the others
    every epoch (``PER_BATCH_SCHEDULES``)."""
    if config.lr_schedule == "none":
        return None
    if config.lr_schedule == "step":  # the lab report's lr / 10 every 10 epochs
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma
        )
    if config.lr_schedule == "cosine":  # from lr down to 0 over the trial's epochs
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_schedule == "onecycle":
        # Smith's one-cycle, stepped every batch: up from lr / 25 to lr over the first 30% of
        # the steps, then down to lr / 2.5e5 (momentum is not cycled).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=config.epochs * batches_per_epoch,
            cycle_momentum=False,
        )
    raise ValueError(
        f"unknown lr_schedule {config.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}"
    )


def _batch_starts(n: int, batch_size: int) -> list[int]:
    """Where each batch of an epoch starts; a batch of one row is dropped (batch norm cannot
    train on it) unless it is the whole data set."""
    return [start for start in range(0, n, batch_size) if min(batch_size, n - start) > 1 or n == 1]


def n_batches(n: int, batch_size: int) -> int:
    """How many batches ``batch_indices`` yields per epoch."""
    return len(_batch_starts(n, batch_size))


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Slices of one random permutation of ``range(n)``; a trailing batch of one is dropped
    (batch norm cannot train on it)."""
    order = torch.randperm(n, generator=generator).to(device)
    for start in _batch_starts(n, batch_size):
        yield order[start : start + batch_size]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Raises:
        HpsearchError: ``cuda`` asked for where no CUDA device is available.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise HpsearchError("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Model outputs for all of ``x`` in eval mode; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def train(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]],
    on_epoch: Callable[[EpochResult], None] | None = None,
    eval_every: int = 1,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs.

    Args:
        evaluate: validation metrics of the model; called every ``eval_every`` epochs and
            after the last one.
        on_epoch: called with each evaluated epoch's result; may raise to stop training
            (the objective raises ``optuna.TrialPruned`` there).
        resume: a checkpoint to continue from; training goes on with its next epoch.
        on_checkpoint: called with the full training state after each evaluated epoch
            that ``on_epoch`` let pass.

    Raises:
        NonFiniteLossError: the epoch's mean training loss is NaN or infinite.
    """
    device = x_train.device
    if config.channels_last and x_train.dim() == 4:
        model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(
        optimizer, config, batches_per_epoch=n_batches(len(x_train), config.batch_size)
    )
    per_batch = config.lr_schedule in PER_BATCH_SCHEDULES
    history: list[EpochResult] = []
    started = time.perf_counter()
    train_loss = math.nan
    metrics: dict[str, float] = {}
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume.model)
        load_optimizer_state(optimizer, resume.optimizer)
        if scheduler is not None and resume.scheduler is not None:
            scheduler.load_state_dict(resume.scheduler)
        generator.set_state(resume.generator)
        torch.random.set_rng_state(resume.rng)
        if resume.cuda_rng is not None and device.type == "cuda":
            torch.cuda.set_rng_state(resume.cuda_rng, device)
        first_epoch, train_loss = resume.epoch + 1, resume.train_loss
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if config.bf16
        else contextlib.nullcontext()
    )
    augmentation = config.augmentation if x_train.dim() == 4 else Affine()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.train()
    for epoch in range(first_epoch, config.epochs + 1):
        # Summed on the device: one host sync per epoch instead of one per batch.
        loss_sum = torch.zeros((), device=device)
        batches = 0
        for idx in batch_indices(len(x_train), config.batch_size, generator, device):
            optimizer.zero_grad(set_to_none=True)
            batch = x_train[idx]
            if augmentation.active:
                batch = random_affine(batch, augmentation).contiguous(memory_format=memory_format)
            with autocast:
                loss = loss_fn(model(batch), y_train[idx])
            loss.backward()
            optimizer.step()
            if per_batch and scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()
            batches += 1
        if not per_batch and scheduler is not None:
            scheduler.step()
        train_loss = float(loss_sum) / max(batches, 1)
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(epoch, train_loss)
        if epoch % eval_every == 0 or epoch == config.epochs:
            metrics = evaluate(model)
            result = EpochResult(epoch, train_loss, metrics, time.perf_counter() - started)
            history.append(result)
            if on_epoch is not None:
                on_epoch(result)
            if on_checkpoint is not None:
                on_checkpoint(
                    TrainState(
                        epoch=epoch,
                        train_loss=train_loss,
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        scheduler=None if scheduler is None else scheduler.state_dict(),
                        generator=generator.get_state(),
                        rng=torch.random.get_rng_state(),
                        cuda_rng=torch.cuda.get_rng_state(device)
                        if device.type == "cuda"
                        else None,
                    )
                )
    if not history:  # resumed from a checkpoint taken after the last epoch
        metrics = evaluate(model)
        history.append(EpochResult(config.epochs, train_loss, metrics, 0.0))
        if on_epoch is not None:
            on_epoch(history[-1])
    return TrainResult(
        epochs_run=config.epochs,
        train_loss=train_loss,
        metrics=metrics,
        seconds=time.perf_counter() - started,
        history=history,
    )
