"""The training loop: ``train_stack`` trains one model, or a stack of K models of one shape as
one, epoch by epoch; ``train`` is the one-model form and ``train_many`` cuts many models into
stacks. Knows nothing about Optuna.

Data arrive as whole tensors on the training device; each epoch draws one random permutation
per model and slices mini-batches out of it, so there is no per-sample Python work. How one
step runs (one module alone, or K stacked) is ``training.stack``'s; what one model keeps while
it trains is its ``Trainee``'s; everything else, from resume to the last epoch, is here once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from hpsearch.training.config import (
    Crashed,
    Diverged,
    NonFiniteLossError,
    Outcome,
    TrainConfig,
    TrainResult,
    TrainState,
)
from hpsearch.training.losses import LossFn
from hpsearch.training.stack import Stack, make_stack, stack_chunks, stack_key
from hpsearch.training.trainee import Evaluate, OnEpoch, Trainee


def seeded(build: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, torch.Tensor]:
    """``build()`` under ``torch.manual_seed(seed)``, and the global generator's state right
    after it (``Trainee.rng``): a model trains on the same stream however many models were
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
    on_epoch: OnEpoch | None = None,
    eval_every: int = 1,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs, or until ``on_epoch`` stops it:
    ``train_stack`` of one ``Trainee`` (its arguments are the trainee's).

    Raises:
        NonFiniteLossError: the epoch's mean training loss is NaN or infinite.
        Exception: what training raised (out of memory, a bug in a model).
    """
    trainee = Trainee(
        model, loss_fn, config, evaluate, on_epoch, on_checkpoint, resume, eval_every=eval_every
    )
    [(_, outcome)] = train_stack([trainee], x_train, y_train)
    if isinstance(outcome, Diverged):
        raise NonFiniteLossError(outcome.epoch, outcome.loss)
    if isinstance(outcome, Crashed):
        raise outcome.error
    return outcome


def train_stack(
    trainees: Sequence[Trainee], x_train: torch.Tensor, y_train: torch.Tensor
) -> Iterator[tuple[int, TrainResult | Diverged]]:
    """Train ``trainees`` as one stack: one model alone, or several of one ``stack_key``
    (architecture, batch size, epochs) as one model (``training.stack.Fused``).

    Each trains, is evaluated, reported (``on_epoch``) and checkpointed as it would be
    alone, and leaves when its training ends: after its last epoch or where its
    ``on_epoch`` stopped it (a ``TrainResult``), or diverged (``Diverged``). The rest train
    on in a stack of those left.

    Yields:
        ``(index, outcome)`` of each trainee as it leaves, so a caller can record it while
        the rest train on.

    Raises:
        ValueError: trainees whose ``stack_key`` differs or is None.
        Exception: what training itself raised (out of memory, a bug in a model).
    """
    if len(trainees) > 1:
        keys = {stack_key(trainee.model, trainee.config) for trainee in trainees}
        if None in keys or len(keys) > 1:
            raise ValueError(
                "a stack's models share one architecture, batch size and epoch count, "
                "without bf16 (see training.stack.stack_key)"
            )
    if not trainees:
        return
    first = trainees[0].config
    if first.channels_last and x_train.dim() == 4:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    steps = n_batches(len(x_train), first.batch_size)
    started = time.perf_counter()
    for trainee in trainees:
        trainee.begin(x_train, steps)
    active = []
    for index, trainee in enumerate(trainees):
        if trainee.epoch >= trainee.config.epochs:  # resumed after its last epoch
            yield index, trainee.finish_without_training()
        else:
            active.append(index)
    while active:
        stack = make_stack([trainees[i] for i in active], x_train, y_train)
        for k, i in enumerate(active):
            trainees[i].enter(stack.parameters(k))
        ended: dict[int, TrainResult | Diverged] = {}
        while not ended:
            losses = _epoch(stack, [trainees[i] for i in active], len(x_train), steps)
            for k, i in enumerate(active):
                sync = functools.partial(stack.sync, k)
                outcome = trainees[i].end_epoch(losses[k], sync, started)
                if outcome is not None:
                    ended[i] = outcome
        for k, i in enumerate(active):
            stack.sync(k)  # a leaving model takes its weights; the rest restack from theirs
            if i not in ended:
                trainees[i].leave_stack()
        for i, outcome in ended.items():
            yield i, outcome
        active = [i for i in active if i not in ended]


def train_many(
    trainees: Sequence[Trainee], x_train: torch.Tensor, y_train: torch.Tensor, *, group_size: int
) -> Iterator[tuple[int, Outcome]]:
    """Train ``trainees``, up to ``group_size`` at a time as one stack where they share a
    ``stack_key`` (``training.stack.stack_chunks``), the rest alone.

    Yields:
        ``(index, outcome)`` of each trainee as it ends; a stack whose training raised (out
        of memory, a bug) ends each of its trainees not yet ended ``Crashed``.
    """
    shapes = [(trainee.model, trainee.config) for trainee in trainees]
    for chunk in stack_chunks(shapes, x_train[:1], group_size):
        ended: set[int] = set()
        try:
            for k, outcome in train_stack([trainees[i] for i in chunk], x_train, y_train):
                ended.add(k)
                yield chunk[k], outcome
        except Exception as error:
            for k, index in enumerate(chunk):
                if k not in ended:
                    yield index, Crashed(error)


def _epoch(stack: Stack, trainees: Sequence[Trainee], n: int, steps: int) -> list[float]:
    """One epoch of every model of ``stack``: their mean training losses."""
    device = trainees[0].device
    orders = [list(batch_indices(n, t.config.batch_size, t.generator, device)) for t in trainees]
    # Summed on the device: one host sync per epoch instead of one per batch.
    loss_sums = torch.zeros(len(trainees), device=device)
    for step in range(steps):
        for trainee in trainees:
            trainee.optimizer.zero_grad(set_to_none=True)
        loss_sums += stack.step([order[step] for order in orders])
        for trainee in trainees:
            trainee.optimizer.step()
            if trainee.per_batch and trainee.scheduler is not None:
                trainee.scheduler.step()
    return [total / max(steps, 1) for total in loss_sums.tolist()]
