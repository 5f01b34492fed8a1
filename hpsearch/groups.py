"""Training a group of same-shape models as one: ``train_group``. Knows nothing about Optuna.

A small model's training step is bound by kernel launches and Python, not arithmetic
(docs/performance.md). K models of one architecture run as one model over parameters
stacked along a new first axis: a convolution becomes one grouped convolution, a linear
layer one batched matmul, batch norm, activations and pooling one call over K times the
channels, so one step trains K models for about the launches of one.

Each member stays the model it would be alone (``training.train``):

- its own parameters, optimizer (any of ``training.OPTIMIZERS``, with its own state, lr and
  schedule, built by ``training.make_optimizer`` and ``make_scheduler``), loss, batch order
  (its own seeded generator), augmentation and dropout masks, drawn from its own random
  stream in the order ``train`` draws them;
- its own epochs, reports and checkpoints (a ``TrainState`` like ``train``'s, so a trial
  checkpointed in a group resumes alone and the other way round);
- a member whose ``on_epoch`` raises (pruned) or whose loss diverges leaves the group, and
  the stacks shrink to the members left.

The member's ``nn.Module`` keeps working throughout: its parameters and buffers are views
into the group's stacks, so ``evaluate(member.model)`` and ``state_dict()`` see its current
weights. What differs from ``train`` is the kernels of the fused passes (a grouped
convolution sums in another order), so results match a solo run to float32 rounding, not
bit for bit; tests/test_groups.py states the tolerance. On CUDA, dropout masks are drawn with
``bernoulli_`` where ``F.dropout`` uses a fused kernel with its own stream: same
distribution, other masks.

Why by hand rather than ``torch.func.vmap`` over ``functional_call`` (PyTorch's
model-ensembling recipe): vmap's batching rules move the member axis into channels and back
at every layer, and the strided copies that leaves made its first version here slower than
this one on the CPU; dropout under vmap also cannot draw each member's masks from that
member's own stream. The layer types hpsearch's builders use are few, and each has a
one-line grouped form.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.augment import random_affine
from hpsearch.models import GaussianRegressor, MLPRegressor
from hpsearch.training import (
    PER_BATCH_SCHEDULES,
    EpochResult,
    LossFn,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    TrainState,
    batch_indices,
    load_optimizer_state,
    make_optimizer,
    make_scheduler,
    n_batches,
)

Outcome = TrainResult | BaseException


@dataclass
class GroupMember:
    """One model of a group and what ``train`` would take for it alone.

    ``rng`` is the state of the global CPU generator right after the model was built (as
    ``train`` would find it): the member's dropout and augmentation draw from it. The
    ``seeded`` helper builds a model and captures it.
    """

    model: nn.Module
    loss_fn: LossFn
    config: TrainConfig
    rng: torch.Tensor
    evaluate: Callable[[nn.Module], dict[str, float]]
    on_epoch: Callable[[EpochResult], None] | None = None
    on_checkpoint: Callable[[TrainState], None] | None = None
    resume: TrainState | None = None
    cuda_rng: torch.Tensor | None = None
    # Filled in while training.
    epoch: int = 0
    train_loss: float = math.nan
    history: list[EpochResult] = field(default_factory=list)


def seeded(build: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, torch.Tensor]:
    """``build()`` under ``torch.manual_seed(seed)``, as a solo trial builds its model, and
    the global generator's state after it (``GroupMember.rng``)."""
    torch.manual_seed(seed)
    model = build()
    return model, torch.random.get_rng_state()


# Layers whose grouped form is the layer itself: elementwise, or per channel on (B, K*C, H, W).
_AS_IS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Identity,
          nn.MaxPool2d)  # fmt: skip
_LAYERS = {*_AS_IS, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Flatten, nn.Dropout}


def _fusable(module: nn.Module) -> bool:
    """Whether ``_GroupedForward`` has this exact layer's grouped form (a subclass may
    override ``forward``, so types match exactly)."""
    kind = type(module)
    if kind in _GROUPED_MODELS:
        return True
    if kind not in _LAYERS:
        return False
    if isinstance(module, nn.BatchNorm2d):
        return module.momentum is not None and module.track_running_stats
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros"
    if isinstance(module, nn.Flatten):
        return (module.start_dim, module.end_dim) == (1, -1)
    return True


def group_key(model: nn.Module, config: TrainConfig | None = None) -> tuple[Any, ...] | None:
    """What must match for models to train as one group: every layer's type and settings
    (activation, pooling, kernel, ...) and the parameter and buffer shapes, in order, and
    with ``config`` the steps (batch size, epochs) and layout; dropout layers are left out, so
    members may differ in dropout. None for a model ``train_group`` cannot fuse, or a
    ``bf16`` config (autocast is ``train``'s alone): it trains alone."""
    if not all(_fusable(module) for module in model.modules()):
        return None
    if config is not None and config.bf16:
        return None
    layers = tuple(
        (type(m).__name__, m.extra_repr()) for m in model.modules() if not isinstance(m, nn.Dropout)
    )
    shapes = tuple(tuple(t.shape) for t in (*model.parameters(), *model.buffers()))
    steps = None if config is None else (config.batch_size, config.epochs, config.channels_last)
    return (type(model).__name__, layers, shapes, steps)


class _Stacks:
    """The group's parameters and buffers stacked along a new first axis (member), keyed by
    the template's names, with each member's own tensors turned into views of its slice
    (matched by position: a member without dropout layers numbers its layers differently)."""

    def __init__(self, template: nn.Module, members: Sequence[GroupMember]) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.member_params = [list(m.model.parameters()) for m in members]
        member_buffers = [_buffer_slots(m.model) for m in members]
        for i, (name, _) in enumerate(template.named_parameters()):
            stack = torch.stack([params[i].detach() for params in self.member_params])
            self.params[name] = stack.requires_grad_()
            for k, params in enumerate(self.member_params):
                params[i].data = stack.data[k]
        for i, (name, _) in enumerate(template.named_buffers()):
            stack = torch.stack([module._buffers[key] for module, key in  # type: ignore[misc]
                                 (slots[i] for slots in member_buffers)])  # fmt: skip
            self.buffers[name] = stack
            for k, slots in enumerate(member_buffers):
                module, key = slots[i]
                module._buffers[key] = stack[k]

    def gradients_to_members(self) -> None:
        """Hand each member its slice of the stacked gradients (views, no copy)."""
        for i, stack in enumerate(self.params.values()):
            grad = stack.grad
            for k, params in enumerate(self.member_params):
                params[i].grad = None if grad is None else grad[k]
            stack.grad = None


def _buffer_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, key) of each buffer, in ``named_buffers`` order."""
    return [
        (module, key)
        for module in model.modules()
        for key, buffer in module._buffers.items()
        if buffer is not None
    ]


class _GroupedForward:
    """The template's forward pass for K members at once.

    Image activations are (B, K*C, H, W): member k owns channels k*C..(k+1)*C, so a grouped
    convolution, batch norm, pooling and activations work on them unchanged. Flat ones are
    (K, B, F), for batched matmuls. Dropout multiplies by masks drawn per member outside.
    """

    def __init__(self, template: nn.Module, stacks: _Stacks, k: int) -> None:
        self.template, self.stacks, self.k = template, stacks, k
        self.masks: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        self.masks = list(reversed(masks))
        return self.run(self.template, "", x)

    def run(self, module: nn.Module, prefix: str, x: torch.Tensor) -> torch.Tensor:
        grouped = _GROUPED_MODELS.get(type(module))
        if grouped is not None:
            return grouped(self, module, prefix, x)
        p, b = self.stacks.params, self.stacks.buffers
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                x = self.run(child, f"{prefix}{name}.", x)
            return x
        if isinstance(module, _AS_IS):
            return module(x)
        if isinstance(module, nn.Dropout):
            return x * self.masks.pop()
        if isinstance(module, nn.Conv2d):
            bias = p.get(prefix + "bias")
            return F.conv2d(
                x,
                p[prefix + "weight"].flatten(0, 1),  # (K*O, C, kh, kw)
                None if bias is None else bias.flatten(),
                module.stride,
                module.padding,
                module.dilation,
                self.k * module.groups,
            )
        if isinstance(module, nn.BatchNorm2d):
            if module.training and module.track_running_stats:
                b[prefix + "num_batches_tracked"].add_(1)
            return F.batch_norm(
                x,
                b[prefix + "running_mean"].view(-1),  # views: updated in place, per member
                b[prefix + "running_var"].view(-1),
                p[prefix + "weight"].flatten() if module.affine else None,
                p[prefix + "bias"].flatten() if module.affine else None,
                module.training,
                float(module.momentum or 0.0),
                module.eps,
            )
        if isinstance(module, nn.Flatten):  # (B, K*C, H, W) -> (K, B, C*H*W)
            if x.dim() == 4:
                return x.reshape(x.shape[0], self.k, -1).transpose(0, 1)
            return x.flatten(2)  # (K, B, ...) -> (K, B, F)
        if isinstance(module, nn.Linear):  # (K, B, I) -> (K, B, O)
            weight = p[prefix + "weight"].transpose(1, 2)
            bias = p.get(prefix + "bias")
            return x @ weight if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
        raise TypeError(f"no grouped form for {type(module).__name__}")


def _mlp_regressor(g: _GroupedForward, model: Any, prefix: str, x: torch.Tensor) -> Any:
    return g.run(model.net, prefix + "net.", x).squeeze(-1)  # (K, B)


def _gaussian_regressor(g: _GroupedForward, model: Any, prefix: str, x: Any) -> Any:
    hidden = g.run(model.trunk, prefix + "trunk.", x)
    mean = g.run(model.mean, prefix + "mean.", hidden)
    log_var = g.run(model.log_var, prefix + "log_var.", hidden)
    return torch.cat([mean, log_var], dim=-1)  # (K, B, 2)


# hpsearch's model classes whose forward is more than a Sequential: their grouped forward.
_GROUPED_MODELS: dict[type, Callable[[_GroupedForward, Any, str, torch.Tensor], Any]] = {
    MLPRegressor: _mlp_regressor,
    GaussianRegressor: _gaussian_regressor,
}


# Trials per group when --group-size is not given. On the 2-core CPU, small models gained
# 10-16% in groups of 4 and the grouped search did worse on the same budget
# (docs/performance.md#trial-groups); on CUDA a small trial uses under 1% of the GPU, which
# groups are built to fill (the group size there is not measured yet).
DEFAULT_GROUP_SIZE = {"cpu": 1, "cuda": 8}


def default_group_size(device: str) -> int:
    """``DEFAULT_GROUP_SIZE`` of the device ``--device`` resolves to."""
    from hpsearch.training import resolve_device

    return DEFAULT_GROUP_SIZE.get(resolve_device(device).type, 1)


# On a CPU a group pays only while one step's activations stay in cache: beyond, the
# element-wise passes (batch norm, activations, pooling) run from memory and the group trains
# slower than its members one by one. On the 2-core AMD EPYC (1 MiB L2 per core, 32 MiB L3),
# groups of small nets (1-1.4M floats a step) gained, groups of 2 of the lab report's
# (3.8M) lost 17% (docs/performance.md#trial-groups). No such cap on GPUs (not measured).
CPU_GROUP_FLOATS = 5_000_000


def _probe(model: nn.Module, example: torch.Tensor, hooks: list[Any]) -> None:
    """One eval-mode forward pass of ``example`` (no dropout draws, no running-statistics
    updates) with ``hooks`` (handles) registered; they are removed after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def activation_floats(model: nn.Module, example: torch.Tensor) -> int:
    """Floats the model's layers output for one example ``example`` (1, ...)."""
    outputs: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda _, a, out: outputs.append(out.numel())) for m in leaves]
    _probe(model, example, hooks)
    return sum(outputs)


def group_capacity(model: nn.Module, config: TrainConfig, example: torch.Tensor, limit: int) -> int:
    """How many models like ``model``, trained with ``config``, to train as one, at most
    ``limit``: on a CPU, as many as keep a step's activations within ``CPU_GROUP_FLOATS``;
    1 for one that cannot be fused (``group_key``)."""
    if limit <= 1 or group_key(model, config) is None:
        return 1
    if example.device.type != "cpu":
        return limit
    per_model = activation_floats(model, example) * config.batch_size
    return max(1, min(limit, CPU_GROUP_FLOATS // max(per_model, 1)))


def _dropout_layers(model: nn.Module) -> list[nn.Dropout]:
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


def _feature_shapes(model: nn.Module, x: torch.Tensor) -> list[torch.Size]:
    """Shape of each dropout layer's input for one example ``x`` (1, ...), in call order."""
    shapes: list[torch.Size] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape[1:]))
        for layer in _dropout_layers(model)
    ]
    _probe(model, x, hooks)
    return shapes


def train_group(
    members: Sequence[GroupMember],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    eval_every: int = 1,
    on_done: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Train ``members`` (same architecture, batch size and epochs) as one model.

    Each member is trained, evaluated, reported (``on_epoch``) and checkpointed as
    ``training.train`` would train it alone. A member leaves the group when its training
    ends: finished (a ``TrainResult``), stopped by its ``on_epoch`` (the exception it raised,
    such as ``optuna.TrialPruned``) or diverged (``NonFiniteLossError``); ``on_done(index,
    outcome)`` is called then, so a caller can record it while the rest train on.

    Returns:
        Each member's outcome, in order.

    Raises:
        ValueError: members whose ``group_key`` differs or is None (other shapes, batch
            sizes or epoch counts, or ``bf16``).
    """
    if not members:
        return []
    first = members[0].config
    keys = {group_key(member.model, member.config) for member in members}
    if None in keys or len(keys) > 1:
        raise ValueError(
            "a group's members share one architecture, batch size and epoch count, "
            "without bf16 (see groups.group_key)"
        )
    device = x_train.device
    n, batch_size = len(x_train), first.batch_size
    steps = n_batches(n, batch_size)
    outcomes: dict[int, Outcome] = {}
    started = time.perf_counter()

    # The template: a member with dropout layers, if any (the others' masks are all ones).
    template = next((m.model for m in members if _dropout_layers(m.model)), members[0].model)
    feature_shapes = _feature_shapes(template, x_train[:1])
    template = copy.deepcopy(template)
    images = x_train.dim() == 4
    memory_format = (
        torch.channels_last if images and first.channels_last else torch.contiguous_format
    )

    # Per member: optimizer, schedule, batch-order generator, random streams; resume.
    optimizers, schedulers, generators = [], [], []
    for member in members:
        config = member.config
        optimizer = make_optimizer(member.model, config)
        scheduler = make_scheduler(optimizer, config, batches_per_epoch=steps)
        generator = torch.Generator().manual_seed(config.seed)
        if member.resume is not None:
            state = member.resume
            member.model.load_state_dict(state.model)
            load_optimizer_state(optimizer, state.optimizer)
            if scheduler is not None and state.scheduler is not None:
                scheduler.load_state_dict(state.scheduler)
            generator.set_state(state.generator)
            member.rng = state.rng
            if state.cuda_rng is not None:
                member.cuda_rng = state.cuda_rng
            member.epoch, member.train_loss = state.epoch, state.train_loss
        optimizers.append(optimizer)
        schedulers.append(scheduler)
        generators.append(generator)
        if device.type == "cuda" and member.cuda_rng is None:
            with torch.cuda.device(device):  # manual_seed seeds the current device
                torch.cuda.manual_seed(config.seed)
            member.cuda_rng = torch.cuda.get_rng_state(device)

    active = list(range(len(members)))

    def leave(index: int, outcome: Outcome) -> None:
        _own_storage(members[index].model)
        outcomes[index] = outcome
        if on_done is not None:
            on_done(index, outcome)

    # Members resumed after their last epoch only need their final evaluation.
    for index in list(active):
        member = members[index]
        if member.epoch >= member.config.epochs:
            active.remove(index)
            leave(index, _finish_without_training(member))

    stacks: _Stacks | None = None
    forward: _GroupedForward | None = None
    for member in members:
        member.model.train()
    template.train()

    while active:
        if stacks is None or forward is None:  # rebuilt when members leave: cost is per member
            stacks = _Stacks(template, [members[i] for i in active])
            forward = _GroupedForward(template, stacks, len(active))
        group = [members[i] for i in active]
        dropout = [_dropout_p(member) for member in group]
        augment = [images and member.config.augmentation.active for member in group]
        loss_sums = torch.zeros(len(active), device=device)
        orders = [list(batch_indices(n, batch_size, generators[i], device)) for i in active]
        for step in range(steps):
            inputs, targets, masks = [], [], []
            for j, member in enumerate(group):
                idx, p = orders[j][step], dropout[j]
                draws = augment[j] or (p > 0 and bool(feature_shapes))
                if draws:
                    _set_rng(member, device)
                batch = x_train[idx]
                if augment[j]:
                    batch = random_affine(batch, member.config.augmentation)
                member_masks: list[torch.Tensor] = []
                for shape in feature_shapes:  # as F.dropout draws them, in layer order
                    # In the layout train's activation has there: the draws follow memory order.
                    mask = torch.empty((len(idx), *shape), device=device, dtype=batch.dtype)
                    mask = mask.contiguous(memory_format=memory_format) if len(shape) == 3 else mask
                    member_masks.append(
                        mask.bernoulli_(1 - p).div_(1 - p) if p > 0 else mask.fill_(1.0)
                    )
                if draws:
                    _save_rng(member, device)
                inputs.append(batch)
                targets.append(y_train[idx])
                masks.append(member_masks)
            for i in active:
                optimizers[i].zero_grad(set_to_none=True)
            if images:  # (B, K*C, H, W); masks likewise, or (K, B, F) after a flatten
                x = torch.cat(inputs, dim=1).contiguous(memory_format=memory_format)
            else:
                x = torch.stack(inputs)
            layer_masks = [
                torch.cat(layer, dim=1) if len(shape) == 3 else torch.stack(layer)
                for layer, shape in zip(zip(*masks, strict=True), feature_shapes, strict=True)
            ]
            outputs = forward(x, layer_masks)  # (K, B, ...)
            losses = torch.stack(
                [member.loss_fn(outputs[j], targets[j]) for j, member in enumerate(group)]
            )
            losses.sum().backward()
            stacks.gradients_to_members()
            for i in active:
                optimizers[i].step()
                scheduler = schedulers[i]
                if scheduler is not None and members[i].config.lr_schedule in PER_BATCH_SCHEDULES:
                    scheduler.step()
            loss_sums += losses.detach()
        epoch_losses = (loss_sums / max(steps, 1)).tolist()
        leaving: list[tuple[int, Outcome]] = []
        for j, i in enumerate(list(active)):
            member = members[i]
            scheduler = schedulers[i]
            if scheduler is not None and member.config.lr_schedule not in PER_BATCH_SCHEDULES:
                scheduler.step()
            member.epoch += 1
            member.train_loss = epoch_losses[j]
            outcome = _after_epoch(
                member, optimizers[i], scheduler, generators[i], device, eval_every, started
            )
            if outcome is not None:
                leaving.append((i, outcome))
        for i, outcome in leaving:
            active.remove(i)
            leave(i, outcome)
        if leaving:
            stacks = None
    return [outcomes[i] for i in range(len(members))]


def _own_storage(model: nn.Module) -> None:
    """Give a member that leaves its own tensors back, so the group's stacks can go and a
    saved state dict holds this model's weights only."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
        for module, key in _buffer_slots(model):
            module._buffers[key] = module._buffers[key].clone()  # type: ignore[union-attr]


def _dropout_p(member: GroupMember) -> float:
    layers = _dropout_layers(member.model)
    return float(layers[0].p) if layers else 0.0


def _set_rng(member: GroupMember, device: torch.device) -> None:
    torch.random.set_rng_state(member.rng)
    if device.type == "cuda" and member.cuda_rng is not None:
        torch.cuda.set_rng_state(member.cuda_rng, device)


def _save_rng(member: GroupMember, device: torch.device) -> None:
    member.rng = torch.random.get_rng_state()
    if device.type == "cuda":
        member.cuda_rng = torch.cuda.get_rng_state(device)


def _after_epoch(
    member: GroupMember,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    device: torch.device,
    eval_every: int,
    started: float,
) -> Outcome | None:
    """A member's end of epoch as ``train`` has it; its outcome if it leaves the group."""
    config, epoch = member.config, member.epoch
    if not math.isfinite(member.train_loss):
        return NonFiniteLossError(epoch, member.train_loss)
    if epoch % eval_every == 0 or epoch == config.epochs:
        result = EpochResult(
            epoch,
            member.train_loss,
            member.evaluate(member.model),
            time.perf_counter() - started,
        )
        member.history.append(result)
        try:
            if member.on_epoch is not None:
                member.on_epoch(result)
        except Exception as stop:  # the member's caller stopped it (pruned)
            return stop
        if member.on_checkpoint is not None:
            member.on_checkpoint(
                TrainState(
                    epoch=epoch,
                    train_loss=member.train_loss,
                    # Clones: the live tensors are views of the whole group's stacks.
                    model={k: v.clone() for k, v in member.model.state_dict().items()},
                    optimizer=optimizer.state_dict(),
                    scheduler=None if scheduler is None else scheduler.state_dict(),
                    generator=generator.get_state(),
                    rng=member.rng.clone(),
                    cuda_rng=None if member.cuda_rng is None else member.cuda_rng.clone(),
                )
            )
    if epoch < config.epochs:
        return None
    last = member.history[-1]
    return TrainResult(
        epochs_run=config.epochs,
        train_loss=member.train_loss,
        metrics=last.metrics,
        seconds=time.perf_counter() - started,
        history=member.history,
    )


def _finish_without_training(member: GroupMember) -> Outcome:
    """A member resumed from a checkpoint taken after its last epoch: evaluate, report."""
    metrics = member.evaluate(member.model)
    result = EpochResult(member.config.epochs, member.train_loss, metrics, 0.0)
    member.history.append(result)
    try:
        if member.on_epoch is not None:
            member.on_epoch(result)
    except Exception as stop:
        return stop
    return TrainResult(member.config.epochs, member.train_loss, metrics, 0.0, member.history)
