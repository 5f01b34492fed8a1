"""The training loop: ``train_stack`` trains one model, or a stack of K models of one shape as
one, epoch by epoch; ``train`` is the one-model form. Knows nothing about Optuna.

Data arrive as whole tensors on the training device; each epoch draws one random permutation
per model and slices mini-batches out of it, so there is no per-sample Python work. How one
step runs (one module alone, or K stacked) is ``training.stack``'s; everything else, from
resume to the last epoch, is here once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpsearch.training.config import (
    EpochResult,
    NonFiniteLossError,
    Outcome,
    TrainConfig,
    TrainResult,
    TrainState,
)
from hpsearch.training.losses import LossFn
from hpsearch.training.optim import (
    PER_BATCH_SCHEDULES,
    Scheduler,
    load_optimizer_state,
    make_optimizer,
    make_scheduler,
)
from hpsearch.training.stack import (
    RandomStream,
    Stack,
    Trainee,
    make_stack,
    stack_chunks,
    stack_key,
)

Evaluate = Callable[[nn.Module], dict[str, float]]


@dataclass
class Member:
    """One model to train and what the loop takes for it.

    Args:
        evaluate: validation metrics of the model; called every ``eval_every`` epochs and
            after the last one.
        on_epoch: called with each evaluated epoch's result; may raise to stop this model's
            training (the objective raises ``optuna.TrialPruned`` there).
        on_checkpoint: called with the full training state after each evaluated epoch that
            ``on_epoch`` let pass.
        resume: a checkpoint to continue from; training goes on with its next epoch.
        rng: the CPU generator's state its dropout and augmentation start from (the state
            right after its model was built: ``seeded``); None: the state it finds.
    """

    model: nn.Module
    loss_fn: LossFn
    config: TrainConfig
    evaluate: Evaluate
    on_epoch: Callable[[EpochResult], None] | None = None
    on_checkpoint: Callable[[TrainState], None] | None = None
    resume: TrainState | None = None
    rng: torch.Tensor | None = None
    eval_every: int = 1


def seeded(build: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, torch.Tensor]:
    """``build()`` under ``torch.manual_seed(seed)``, and the global generator's state right
    after it (``Member.rng``): a model trains on the same stream however many models were
    built since."""
    torch.manual_seed(seed)
    model = build()
    return model, torch.random.get_rng_state()


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
    evaluate: Evaluate,
    on_epoch: Callable[[EpochResult], None] | None = None,
    eval_every: int = 1,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs: ``train_stack`` of one
    ``Member`` (its arguments are the member's).

    Raises:
        NonFiniteLossError: the epoch's mean training loss is NaN or infinite.
        Exception: what ``on_epoch`` raised.
    """
    member = Member(
        model, loss_fn, config, evaluate, on_epoch, on_checkpoint, resume, eval_every=eval_every
    )
    [(_, outcome)] = train_stack([member], x_train, y_train)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def train_stack(
    members: Sequence[Member], x_train: torch.Tensor, y_train: torch.Tensor
) -> Iterator[tuple[int, Outcome]]:
    """Train ``members`` as one stack: one model alone, or several of one ``stack_key``
    (architecture, batch size, epochs) as one model (``training.stack.Fused``).

    Each member trains, is evaluated, reported (``on_epoch``) and checkpointed as it would
    be alone, and leaves when its training ends: finished (a ``TrainResult``), stopped by its
    ``on_epoch`` (the exception it raised, such as ``optuna.TrialPruned``) or diverged
    (``NonFiniteLossError``). The rest train on in a stack of the members left.

    Yields:
        ``(index, outcome)`` of each member as it leaves, so a caller can record it while
        the rest train on.

    Raises:
        ValueError: members whose ``stack_key`` differs or is None.
        Exception: what training itself raised (out of memory, a bug in a model).
    """
    if len(members) > 1:
        keys = {stack_key(member.model, member.config) for member in members}
        if None in keys or len(keys) > 1:
            raise ValueError(
                "a stack's members share one architecture, batch size and epoch count, "
                "without bf16 (see training.stack.stack_key)"
            )
    if not members:
        return
    first = members[0].config
    if first.channels_last and x_train.dim() == 4:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    steps = n_batches(len(x_train), first.batch_size)
    started = time.perf_counter()
    runs = [_Run(member, x_train, steps) for member in members]
    active = []
    for index, run in enumerate(runs):
        if run.epoch >= run.config.epochs:  # resumed after its last epoch: evaluate, report
            yield index, run.finish_without_training()
        else:
            active.append(index)
    while active:
        stack = make_stack([runs[i].trainee for i in active], x_train, y_train)
        for k, i in enumerate(active):
            runs[i].enter(stack.parameters(k))
        ended: dict[int, Outcome] = {}
        while not ended:
            losses = _epoch(stack, [runs[i] for i in active], len(x_train), steps)
            for k, i in enumerate(active):
                outcome = runs[i].end_epoch(losses[k], stack, k, started)
                if outcome is not None:
                    ended[i] = outcome
        for k, i in enumerate(active):
            stack.sync(k)  # a leaving member takes its weights; the rest restack from theirs
            if i not in ended:
                runs[i].leave_stack()
        for i, outcome in ended.items():
            yield i, outcome
        active = [i for i in active if i not in ended]


def train_members(
    members: Sequence[Member], x_train: torch.Tensor, y_train: torch.Tensor, *, group_size: int
) -> Iterator[tuple[int, Outcome]]:
    """Train ``members``, up to ``group_size`` at a time as one stack where they share a
    ``stack_key`` (``training.stack.stack_chunks``), the rest alone.

    Yields:
        ``(index, outcome)`` of each member as it ends; a stack whose training failed (out
        of memory, a bug) ends each of its members not yet ended with that error.
    """
    shapes = [(member.model, member.config) for member in members]
    for chunk in stack_chunks(shapes, x_train[:1], group_size):
        ended: set[int] = set()
        try:
            for k, outcome in train_stack([members[i] for i in chunk], x_train, y_train):
                ended.add(k)
                yield chunk[k], outcome
        except Exception as error:
            for k, index in enumerate(chunk):
                if k not in ended:
                    yield index, error


def _epoch(stack: Stack, runs: Sequence[_Run], n: int, steps: int) -> list[float]:
    """One epoch of every member of ``stack``: the members' mean training losses."""
    device = runs[0].device
    orders = [list(batch_indices(n, run.config.batch_size, run.generator, device)) for run in runs]
    # Summed on the device: one host sync per epoch instead of one per batch.
    loss_sums = torch.zeros(len(runs), device=device)
    for step in range(steps):
        for run in runs:
            run.optimizer.zero_grad(set_to_none=True)
        loss_sums += stack.step([order[step] for order in orders])
        for run in runs:
            run.optimizer.step()
            if run.per_batch and run.scheduler is not None:
                run.scheduler.step()
    return [total / max(steps, 1) for total in loss_sums.tolist()]


class _Run:
    """One member's training while it lasts: its epoch, random streams, optimizer and
    schedule (rebuilt on the tensors of each stack it trains in, from their saved state)."""

    def __init__(self, member: Member, x_train: torch.Tensor, steps: int) -> None:
        self.member, self.config, self.steps = member, member.config, steps
        self.device = x_train.device
        model, config = member.model, member.config
        if config.channels_last and x_train.dim() == 4:
            model.to(memory_format=torch.channels_last)
        model.train()
        self.generator = torch.Generator().manual_seed(config.seed)
        rng = member.rng if member.rng is not None else torch.random.get_rng_state()
        self.stream = RandomStream(rng)
        self.epoch, self.train_loss = 0, math.nan
        self.history: list[EpochResult] = []
        self.per_batch = config.lr_schedule in PER_BATCH_SCHEDULES
        self.optimizer_state: dict[str, Any] | None = None
        self.scheduler_state: dict[str, Any] | None = None
        resume = member.resume
        if resume is not None:
            model.load_state_dict(resume.model)
            self.optimizer_state, self.scheduler_state = resume.optimizer, resume.scheduler
            self.generator.set_state(resume.generator)
            cuda_rng = resume.cuda_rng if self.device.type == "cuda" else None
            self.stream = RandomStream(resume.rng, cuda_rng)
            self.epoch, self.train_loss = resume.epoch, resume.train_loss
        if self.device.type == "cuda" and self.stream.cuda is None:
            with torch.cuda.device(self.device):  # manual_seed seeds the current device
                torch.cuda.manual_seed(config.seed)
            self.stream.cuda = torch.cuda.get_rng_state(self.device)
        self.trainee = Trainee(model, member.loss_fn, config, self.stream)

    def enter(self, params: list[torch.Tensor]) -> None:
        """Build the optimizer and schedule over ``params`` (this member's tensors in a new
        stack) and load their saved state, as a resumed run does."""
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

    def end_epoch(self, train_loss: float, stack: Stack, k: int, started: float) -> Outcome | None:
        """The end of an epoch: step the schedule, check the loss, evaluate, report and
        checkpoint when due; the outcome if training ends here."""
        member, config = self.member, self.config
        if not self.per_batch and self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        self.train_loss = train_loss
        if not math.isfinite(train_loss):
            return NonFiniteLossError(self.epoch, train_loss)
        if self.epoch % member.eval_every == 0 or self.epoch == config.epochs:
            stack.sync(k)
            metrics = member.evaluate(member.model)
            result = EpochResult(self.epoch, train_loss, metrics, time.perf_counter() - started)
            self.history.append(result)
            try:
                if member.on_epoch is not None:
                    member.on_epoch(result)
            except Exception as stop:  # the caller stopped it (pruned)
                return stop
            if member.on_checkpoint is not None:
                member.on_checkpoint(self.state())
        if self.epoch < config.epochs:
            return None
        return TrainResult(
            epochs_run=config.epochs,
            train_loss=train_loss,
            metrics=self.history[-1].metrics,
            seconds=time.perf_counter() - started,
            history=self.history,
        )

    def finish_without_training(self) -> Outcome:
        """A member resumed from a checkpoint taken after its last epoch: evaluate, report."""
        member = self.member
        metrics = member.evaluate(member.model)
        result = EpochResult(self.config.epochs, self.train_loss, metrics, 0.0)
        self.history.append(result)
        try:
            if member.on_epoch is not None:
                member.on_epoch(result)
        except Exception as stop:
            return stop
        return TrainResult(self.config.epochs, self.train_loss, metrics, 0.0, self.history)

    def state(self) -> TrainState:
        """The checkpoint of this member now (its module and stream synced)."""
        return TrainState(
            epoch=self.epoch,
            train_loss=self.train_loss,
            model=self.member.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            generator=self.generator.get_state(),
            rng=self.stream.cpu,
            cuda_rng=self.stream.cuda,
        )
