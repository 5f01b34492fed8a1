"""``Trainee``: one model under training, what it trains with and its state while it trains.
The training loop (``training.loop``) and a step's stack (``training.stack``) both work on
it. Knows nothing about Optuna.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hpsearch.training.config import Diverged, EpochResult, TrainConfig, TrainResult, TrainState
from hpsearch.training.losses import LossFn
from hpsearch.training.optim import (
    PER_BATCH_SCHEDULES,
    Scheduler,
    load_optimizer_state,
    make_optimizer,
    make_scheduler,
)

Evaluate = Callable[[nn.Module], dict[str, float]]
# Called with each evaluated epoch's result: why to stop this model's training there, or None
# to go on (the objective's pruner answers here).
OnEpoch = Callable[[EpochResult], str | None]


@dataclass(eq=False)
class Trainee:
    """One model under training.

    Given by the caller:
        model, loss_fn, config: what trains, on what loss, with which hyperparameters.
        evaluate: validation metrics of the model; called every ``eval_every`` epochs and
            after the last one.
        on_epoch: called with each evaluated epoch's result (``OnEpoch``).
        on_checkpoint: called with the full training state after each evaluated epoch that
            ``on_epoch`` let pass.
        resume: a checkpoint to continue from; training goes on with its next epoch.
        rng: the CPU generator's state its dropout and augmentation start from (the state
            right after its model was built: ``loop.seeded``); None: the state it finds.

    Kept by the loop while it trains: the epoch reached, the batch order's generator, its
    own random streams (``rng``, ``cuda_rng``: the global generators' states, which it
    draws from while other models of its stack draw from theirs), and its optimizer and
    schedule, rebuilt on its tensors in each stack it trains in, from their saved state.
    """

    model: nn.Module
    loss_fn: LossFn
    config: TrainConfig
    evaluate: Evaluate
    on_epoch: OnEpoch | None = None
    on_checkpoint: Callable[[TrainState], None] | None = None
    resume: TrainState | None = None
    rng: torch.Tensor | None = None
    eval_every: int = 1
    cuda_rng: torch.Tensor | None = field(default=None, init=False)
    epoch: int = field(default=0, init=False)
    train_loss: float = field(default=math.nan, init=False)
    history: list[EpochResult] = field(default_factory=list, init=False)

    def begin(self, x_train: torch.Tensor, steps: int) -> None:
        """Get ready to train on ``x_train`` in ``steps`` batches an epoch: the model's
        layout and mode, the generators, and the checkpoint's state if it resumes."""
        self.device, self.steps = x_train.device, steps
        model, config = self.model, self.config
        if config.channels_last and x_train.dim() == 4:
            model.to(memory_format=torch.channels_last)
        model.train()
        self.generator = torch.Generator().manual_seed(config.seed)
        if self.rng is None:
            self.rng = torch.random.get_rng_state()
        self.per_batch = config.lr_schedule in PER_BATCH_SCHEDULES
        self.optimizer_state: dict[str, Any] | None = None
        self.scheduler_state: dict[str, Any] | None = None
        resume = self.resume
        if resume is not None:
            model.load_state_dict(resume.model)
            self.optimizer_state, self.scheduler_state = resume.optimizer, resume.scheduler
            self.generator.set_state(resume.generator)
            self.rng = resume.rng
            self.cuda_rng = resume.cuda_rng if self.device.type == "cuda" else None
            self.epoch, self.train_loss = resume.epoch, resume.train_loss
        if self.device.type == "cuda" and self.cuda_rng is None:
            with torch.cuda.device(self.device):  # manual_seed seeds the current device
                torch.cuda.manual_seed(config.seed)
            self.cuda_rng = torch.cuda.get_rng_state(self.device)

    def use_rng(self) -> None:
        """Make its streams the global generators' state, to draw from them."""
        assert self.rng is not None  # set by begin
        torch.random.set_rng_state(self.rng)
        if self.device.type == "cuda" and self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)

    def keep_rng(self) -> None:
        """Keep the global generators' state as its streams, after drawing."""
        self.rng = torch.random.get_rng_state()
        if self.device.type == "cuda":
            self.cuda_rng = torch.cuda.get_rng_state(self.device)

    def enter(self, params: list[torch.Tensor]) -> None:
        """Build the optimizer and schedule over ``params`` (its tensors in a new stack) and
        load their saved state, as a resumed model does."""
        self.optimizer = make_optimizer(params, self.config)
        self.scheduler: Scheduler | None = make_scheduler(
            self.optimizer, self.config, batches_per_epoch=self.steps
        )
        if self.optimizer_state is not None:
            load_optimizer_state(self.optimizer, self.optimizer_state)
        if self.scheduler is not None and self.scheduler_state is not None:
            self.scheduler.load_state_dict(self.scheduler_state)

    def leave_stack(self) -> None:
        """Keep the optimizer's and schedule's state for the next stack (others left)."""
        self.optimizer_state = self.optimizer.state_dict()
        self.scheduler_state = None if self.scheduler is None else self.scheduler.state_dict()

    def end_epoch(
        self, train_loss: float, sync: Callable[[], None], started: float
    ) -> TrainResult | Diverged | None:
        """The end of an epoch: step the schedule, check the loss, evaluate, report and
        checkpoint when due (``sync`` first brings its module up to date); how its training
        ended, if it ended here."""
        config = self.config
        if not self.per_batch and self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        self.train_loss = train_loss
        if not math.isfinite(train_loss):
            return Diverged(self.epoch, train_loss)
        if self.epoch % self.eval_every == 0 or self.epoch == config.epochs:
            sync()
            stop = self._evaluate(time.perf_counter() - started)
            if stop is not None:
                return self._result(started, stopped=stop)
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.state())
        if self.epoch < config.epochs:
            return None
        return self._result(started)

    def finish_without_training(self) -> TrainResult:
        """A model resumed from a checkpoint taken after its last epoch: evaluate, report."""
        stop = self._evaluate(0.0)
        return TrainResult(
            self.epoch, self.train_loss, self.history[-1].metrics, 0.0, self.history, stop
        )

    def _evaluate(self, seconds: float) -> str | None:
        """Evaluate and report this epoch; why ``on_epoch`` stops it here, or None."""
        metrics = self.evaluate(self.model)
        result = EpochResult(self.epoch, self.train_loss, metrics, seconds)
        self.history.append(result)
        return None if self.on_epoch is None else self.on_epoch(result)

    def _result(self, started: float, stopped: str | None = None) -> TrainResult:
        return TrainResult(
            epochs_run=self.epoch,
            train_loss=self.train_loss,
            metrics=self.history[-1].metrics,
            seconds=time.perf_counter() - started,
            history=self.history,
            stopped=stopped,
        )

    def state(self) -> TrainState:
        """Its checkpoint now (its module and streams synced)."""
        assert self.rng is not None  # set by begin
        return TrainState(
            epoch=self.epoch,
            train_loss=self.train_loss,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            generator=self.generator.get_state(),
            rng=self.rng,
            cuda_rng=self.cuda_rng,
        )
