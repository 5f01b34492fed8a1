"""How one training step runs for a stack of models: one model alone (``Solo``) or K models of
one architecture as one (``Fused``, a trial group). Knows nothing about Optuna.

``training.loop.train_stack`` trains both through one loop (epochs, optimizers, schedules,
evaluation, checkpoints, resume); a stack answers three questions for it: which tensors
member ``k``'s optimizer updates (``parameters``), one step's forward and backward pass for
every member (``step``), and bringing member ``k``'s own module and random stream up to date
before it is evaluated, checkpointed or leaves (``sync``).

A small model's training step is bound by kernel launches and Python, not arithmetic
(docs/performance.md). ``Fused`` runs K models over parameters stacked along a new first axis:
a convolution becomes one grouped convolution, a linear layer one batched matmul, batch norm,
activations and pooling one call over K times the channels, so one step trains K models for
about the launches of one. Each member keeps what it would have alone: its own optimizer
(over its slice of the stacks), batch order, augmentation and dropout masks, drawn from its
own random stream in the order a solo step draws them. Results match a solo run to float32
rounding, not bit for bit (a grouped convolution sums in another order); tests/training/
test_stack.py states the tolerances. On CUDA, dropout masks are drawn with ``bernoulli_``
where ``F.dropout`` uses a fused kernel with its own stream: same distribution, other masks.

The fused forward pass is written by hand, not PyTorch's model-ensembling recipe
(``torch.func.stack_module_state``, ``functional_call``, ``vmap``): on the 2-core CPU vmap ran
1.2x (MLPs) and 1.6-2.6x (conv nets) the time of these grouped layers (benchmarks/
stack_forward.py, docs/performance.md#trial-groups), and it cannot draw each member's dropout
from that member's own stream. Stacks are built by position, not by name (which
``stack_module_state`` matches): a member without dropout layers numbers its layers
differently.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.training.augment import random_affine
from hpsearch.training.config import TrainConfig
from hpsearch.training.models import GaussianRegressor, MLPRegressor
from hpsearch.training.trainee import Trainee


class Stack(Protocol):
    """What the training loop asks of a stack of K >= 1 models."""

    def parameters(self, k: int) -> list[torch.Tensor]:
        """The tensors member ``k``'s optimizer updates."""
        ...

    def step(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Forward and backward pass of one batch per member (row indices); gradients land on
        each member's ``parameters``. The members' losses, detached, (K,) or ()."""
        ...

    def sync(self, k: int) -> None:
        """Bring member ``k``'s own module and random stream up to date."""
        ...


class Solo:
    """One model trained alone, through its own module and autograd, as plain PyTorch trains
    it; the global generators are its random stream while it trains."""

    def __init__(self, trainee: Trainee, x_train: torch.Tensor, y_train: torch.Tensor) -> None:
        self.trainee, self.x_train, self.y_train = trainee, x_train, y_train
        self.device = x_train.device
        config = trainee.config
        self.augmentation = config.augmentation if x_train.dim() == 4 else None
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if config.bf16
            else contextlib.nullcontext()
        )
        trainee.use_rng()

    def parameters(self, k: int) -> list[torch.Tensor]:
        return list(self.trainee.model.parameters())

    def step(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Forward and backward pass of one batch; the loss, detached."""
        (idx,) = indices
        trainee = self.trainee
        batch = self.x_train[idx]
        if self.augmentation is not None and self.augmentation.active:
            batch = random_affine(batch, self.augmentation).contiguous(
                memory_format=self.memory_format
            )
        with self.autocast:
            loss = trainee.loss_fn(trainee.model(batch), self.y_train[idx])
        loss.backward()
        return loss.detach()

    def sync(self, k: int) -> None:
        self.trainee.keep_rng()


class Fused:
    """K models of one architecture (``stack_key``) trained as one over stacked parameters.

    The members' own modules are not touched while they train: each member's optimizer
    updates its slice of the stacks, and ``sync`` copies the slice back into its module.
    """

    def __init__(
        self, trainees: Sequence[Trainee], x_train: torch.Tensor, y_train: torch.Tensor
    ) -> None:
        self.trainees, self.x_train, self.y_train = trainees, x_train, y_train
        self.device = x_train.device
        models = [t.model for t in trainees]
        # The template: a member with dropout layers, if any (the others' masks are all ones).
        template = next((m for m in models if _dropout_layers(m)), models[0])
        self.feature_shapes = _dropout_input_shapes(template, x_train[:1])
        self.template = copy.deepcopy(template).train()
        self.params = {
            # Contiguous whatever the members' layout (NHWC weights): grouped kernels take them so.
            name: torch.stack([p.detach() for p in column]).contiguous().requires_grad_()
            for (name, _), column in zip(
                self.template.named_parameters(),
                zip(*(m.parameters() for m in models), strict=True),
                strict=True,
            )
        }
        self.buffers = {
            name: torch.stack([b.detach() for b in column])
            for (name, _), column in zip(
                self.template.named_buffers(),
                zip(*(m.buffers() for m in models), strict=True),
                strict=True,
            )
        }
        # What member k's optimizer updates: its slices of the stacks (views, no copy).
        self.slices = [
            [stack.detach()[k] for stack in self.params.values()] for k in range(len(models))
        ]
        self.images = x_train.dim() == 4
        config = trainees[0].config
        self.memory_format = (
            torch.channels_last if self.images and config.channels_last else torch.contiguous_format
        )
        self.dropout = [_dropout_p(m) for m in models]
        self.augment = [self.images and t.config.augmentation.active for t in trainees]
        self.forward = _GroupedForward(self.template, self.params, self.buffers, len(models))

    def parameters(self, k: int) -> list[torch.Tensor]:
        return self.slices[k]

    def step(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Forward and backward pass of one batch per member, each drawing from its own
        stream; each member's gradients land on its slices. The losses, detached, (K,)."""
        inputs, targets, masks = [], [], []
        for k, (trainee, idx) in enumerate(zip(self.trainees, indices, strict=True)):
            p = self.dropout[k]
            draws = self.augment[k] or (p > 0 and bool(self.feature_shapes))
            if draws:
                trainee.use_rng()
            batch = self.x_train[idx]
            if self.augment[k]:
                batch = random_affine(batch, trainee.config.augmentation)
            member_masks: list[torch.Tensor] = []
            for shape in self.feature_shapes:  # as F.dropout draws them, in layer order
                # In the layout a solo step's activation has there: draws follow memory order.
                mask = torch.empty((len(idx), *shape), device=self.device, dtype=batch.dtype)
                if len(shape) == 3:
                    mask = mask.contiguous(memory_format=self.memory_format)
                member_masks.append(
                    mask.bernoulli_(1 - p).div_(1 - p) if p > 0 else mask.fill_(1.0)
                )
            if draws:
                trainee.keep_rng()
            inputs.append(batch)
            targets.append(self.y_train[idx])
            masks.append(member_masks)
        if self.images:  # (B, K*C, H, W); masks likewise, or (K, B, F) after a flatten
            x = torch.cat(inputs, dim=1).contiguous(memory_format=self.memory_format)
        else:
            x = torch.stack(inputs)
        layer_masks = [
            torch.cat(layer, dim=1) if len(shape) == 3 else torch.stack(layer)
            for layer, shape in zip(zip(*masks, strict=True), self.feature_shapes, strict=True)
        ]
        outputs = self.forward(x, layer_masks)  # (K, B, ...)
        losses = torch.stack(
            [t.loss_fn(outputs[k], targets[k]) for k, t in enumerate(self.trainees)]
        )
        losses.sum().backward()
        for i, stack in enumerate(self.params.values()):
            grad = stack.grad
            for k, slices in enumerate(self.slices):
                slices[i].grad = None if grad is None else grad[k]
            stack.grad = None
        return losses.detach()

    def sync(self, k: int) -> None:
        """Copy member ``k``'s slices into its own module (its own tensors and layout)."""
        model = self.trainees[k].model
        with torch.no_grad():
            for param, stack in zip(model.parameters(), self.params.values(), strict=True):
                param.copy_(stack[k])
            for buffer, stack in zip(model.buffers(), self.buffers.values(), strict=True):
                buffer.copy_(stack[k])


def make_stack(trainees: Sequence[Trainee], x_train: torch.Tensor, y_train: torch.Tensor) -> Stack:
    """``Solo`` for one model, ``Fused`` for several."""
    if len(trainees) == 1:
        return Solo(trainees[0], x_train, y_train)
    return Fused(trainees, x_train, y_train)


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


def stack_key(model: nn.Module, config: TrainConfig | None = None) -> tuple[Any, ...] | None:
    """What must match for models to train as one stack: every layer's type and settings
    (activation, pooling, kernel, ...) and the parameter and buffer shapes, in order, and
    with ``config`` the steps (batch size, epochs) and layout; dropout layers are left out, so
    members may differ in dropout. None for a model ``Fused`` cannot run, or a ``bf16``
    config (autocast is ``Solo``'s alone): it trains alone."""
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


# On a CPU a stack pays only while one step's activations stay in cache: beyond, the
# element-wise passes (batch norm, activations, pooling) run from memory and the stack trains
# slower than its members one by one. On the 2-core AMD EPYC (1 MiB L2 per core, 32 MiB L3),
# stacks of small nets (1-1.4M floats a step) gained, stacks of 2 of the lab report's
# (3.8M) lost 17% (docs/performance.md#trial-groups). No such cap on GPUs (not measured).
CPU_STACK_FLOATS = 5_000_000


def stack_capacity(model: nn.Module, config: TrainConfig, example: torch.Tensor, limit: int) -> int:
    """How many models like ``model``, trained with ``config``, to train as one stack, at most
    ``limit``: on a CPU, as many as keep a step's activations within ``CPU_STACK_FLOATS``;
    1 for one that cannot be fused (``stack_key``)."""
    if limit <= 1 or stack_key(model, config) is None:
        return 1
    if example.device.type != "cpu":
        return limit
    per_model = activation_floats(model, example) * config.batch_size
    return max(1, min(limit, CPU_STACK_FLOATS // max(per_model, 1)))


def stack_chunks(
    models: Sequence[tuple[nn.Module, TrainConfig]], example: torch.Tensor, limit: int
) -> list[list[int]]:
    """Which of ``models`` train together: indices grouped by ``stack_key`` (a model that
    cannot be fused alone), each group cut into stacks of ``stack_capacity``; in first-seen
    order."""
    if limit <= 1:
        return [[i] for i in range(len(models))]
    by_key: dict[Any, list[int]] = {}
    for index, (model, config) in enumerate(models):
        key = stack_key(model, config)
        by_key.setdefault(("alone", index) if key is None else key, []).append(index)
    chunks = []
    for indices in by_key.values():
        model, config = models[indices[0]]
        size = stack_capacity(model, config, example, limit)
        chunks += [indices[start : start + size] for start in range(0, len(indices), size)]
    return chunks


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


def _dropout_layers(model: nn.Module) -> list[nn.Dropout]:
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


def _dropout_p(model: nn.Module) -> float:
    layers = _dropout_layers(model)
    return float(layers[0].p) if layers else 0.0


def _dropout_input_shapes(model: nn.Module, x: torch.Tensor) -> list[torch.Size]:
    """Shape of each dropout layer's input for one example ``x`` (1, ...), in call order."""
    shapes: list[torch.Size] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape[1:]))
        for layer in _dropout_layers(model)
    ]
    _probe(model, x, hooks)
    return shapes


class _GroupedForward:
    """The template's forward pass for K members at once, over stacked ``params`` and
    ``buffers`` (keyed by the template's names).

    Image activations are (B, K*C, H, W): member k owns channels k*C..(k+1)*C, so a grouped
    convolution, batch norm, pooling and activations work on them unchanged. Flat ones are
    (K, B, F), for batched matmuls. Dropout multiplies by masks drawn per member outside.
    """

    def __init__(
        self,
        template: nn.Module,
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        k: int,
    ) -> None:
        self.template, self.params, self.buffers, self.k = template, params, buffers, k
        self.masks: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        self.masks = list(reversed(masks))
        return self.run(self.template, "", x)

    def run(self, module: nn.Module, prefix: str, x: torch.Tensor) -> torch.Tensor:
        grouped = _GROUPED_MODELS.get(type(module))
        if grouped is not None:
            return grouped(self, module, prefix, x)
        p, b = self.params, self.buffers
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
