"""Optimizers and learning-rate schedules of a ``TrainConfig``, and loading their state
from a checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from hpsearch.training.config import LR_SCHEDULES, OPTIMIZERS, TrainConfig

Scheduler = torch.optim.lr_scheduler.LRScheduler
PER_BATCH_SCHEDULES = frozenset({"onecycle"})


def make_optimizer(params: Iterable[torch.Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``params``. Adam and AdamW use PyTorch's fused kernels
    (one kernel for all parameters): a small model's step is dominated by per-tensor overhead
    (benchmarks/step_overhead.py)."""
    params = list(params)
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
    in another layout (NCHW from a stack, NHWC from ``channels_last``) would be applied to
    the wrong weights."""
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
) -> Scheduler | None:
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
