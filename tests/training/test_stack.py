"""Stacks (hpsearch.training.stack): a model trained in a stack of K ends where it would alone.

What is the same code on the same random streams is bit-identical: batch order, dropout
masks, augmentation and the optimizer and schedule (each member has its own, built as
a solo run builds them). What differs is the fused kernels (a grouped convolution, batched
matmuls) summing in another order, float32 rounding of about 1e-7 relative per operation
that training carries on. The tolerances below are measured bounds of that drift over a
few steps, with a margin; a wrong mask, batch or learning rate moves results by orders of
magnitude more (a wrong dropout mask gives a difference of 1 to 2, relative).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from hpsearch import training
from hpsearch.problems import get_problem
from hpsearch.training import EpochResult, TrainConfig, Trainee, TrainState, seeded, train
from hpsearch.training.stack import (
    CPU_STACK_FLOATS,
    activation_floats,
    stack_capacity,
    stack_key,
)

CONV = {
    "n_conv_layers": 2,
    "channels": 8,
    "activation": "relu",
    "batch_norm": False,
    "dropout": 0.2,
    "batch_size": 16,
    "epochs": 2,
    "loss": "cross_entropy",
    "aug_rotate": 10.0,
    "aug_translate": 0.1,
    "n_classes": 10,
}
MLP = {
    "n_hidden_layers": 2,
    "hidden_units": 16,
    "activation": "tanh",
    "dropout": 0.1,
    "batch_size": 16,
    "epochs": 2,
}


def data(problem: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if problem == "usps":
        x = torch.rand(64, 1, 16, 16, generator=generator)
        return x, torch.randint(0, 10, (64,), generator=generator)
    x = torch.randn(64, 5, generator=generator)
    return x, x.sum(dim=1) + 0.1 * torch.randn(64, generator=generator)


def alone(problem: str, params: Mapping[str, Any], seed: int, x: Any, y: Any) -> nn.Module:
    spec = get_problem(problem)
    torch.manual_seed(seed)
    model = spec.build_model(params, x.shape[1:])
    config = TrainConfig.from_params(params, seed=seed)
    train(model, x, y, spec.losses[params["loss"]], config, evaluate=lambda m: {})
    return model


def member(problem: str, params: Mapping[str, Any], seed: int, x: Any, **kw: Any) -> Trainee:
    spec = get_problem(problem)
    model, rng = seeded(lambda: spec.build_model(params, x.shape[1:]), seed)
    config = TrainConfig.from_params(params, seed=seed)
    return Trainee(model, spec.losses[params["loss"]], config, lambda m: {}, rng=rng, **kw)


def train_stack(
    members: list[Trainee], x: torch.Tensor, y: torch.Tensor, ended: list[Any] | None = None
) -> list[training.TrainResult | training.Diverged]:
    """``training.train_stack`` to the end: each member's outcome, in order; ``ended``
    collects (index, outcome) in the order members left."""
    left = list(training.train_stack(members, x, y))
    if ended is not None:
        ended.extend(left)
    return [outcome for _, outcome in sorted(left, key=lambda pair: pair[0])]


def relative_difference(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max(
        float((u - v).abs().max() / u.abs().max().clamp_min(1e-12))
        for u, v in pairs
        if u.is_floating_point()
    )


def output_difference(a: nn.Module, b: nn.Module, x: torch.Tensor, train: bool = False) -> float:
    """Largest output difference relative to the largest output; with ``train``, in train
    mode (batch norm from the batch's statistics, not the running ones)."""
    if train:
        a, b = copy.deepcopy(a).train(), copy.deepcopy(b).train()
        with torch.no_grad():
            out_a, out_b = a(x), b(x)
    else:
        out_a, out_b = training.predict(a, x), training.predict(b, x)
    return float((out_a - out_b).abs().max() / out_a.abs().max())


CASES = [
    ("usps", {**CONV, "loss": "cross_entropy"}),
    ("usps", {**CONV, "loss": "smoothed_cross_entropy", "batch_norm": True, "dropout": 0.0}),
    ("usps", {**CONV, "loss": "mse", "pool": "end", "head_units": 8, "dropout": 0.0}),
    ("house-prices", {**MLP, "loss": "mse"}),
    ("house-prices", {**MLP, "loss": "huber", "dropout": 0.0}),
    ("house-prices-gaussian", {**MLP, "loss": "gaussian_nll"}),
]


@pytest.mark.parametrize("optimizer", training.OPTIMIZERS)
@pytest.mark.parametrize("schedule", training.LR_SCHEDULES)
@pytest.mark.parametrize(("problem", "params"), CASES)
def test_a_member_ends_where_it_would_alone(
    problem: str, params: dict[str, Any], optimizer: str, schedule: str
) -> None:
    x, y = data(problem)
    # Two members of different learning rates, dropout and seeds: nothing shared but shape.
    configs = [
        {
            **params,
            "optimizer": optimizer,
            "lr_schedule": schedule,
            "lr": 1e-3,
            "lr_step_epochs": 1,
        },
        {**params, "optimizer": optimizer, "lr_schedule": schedule, "lr": 3e-3, "dropout": 0.0},
    ]
    solo = [alone(problem, p, seed, x, y) for seed, p in enumerate(configs)]
    members = [member(problem, p, seed, x) for seed, p in enumerate(configs)]
    outcomes = train_stack(members, x, y)
    assert all(isinstance(o, training.TrainResult) for o in outcomes)
    for model, group_member in zip(solo, members, strict=True):
        # Adam and RMSprop divide by the root of tiny second moments, so a rounding-level
        # change in a near-zero gradient can move that weight by up to lr a step. The bias
        # of a conv before batch norm has a gradient of pure rounding (batch norm cancels
        # it): under Adam it walks randomly, by lr a step, in each run, and the running
        # mean follows it, so eval-mode outputs move by up to 2e-2. In train mode batch
        # norm cancels that bias again: outputs agree to 1e-5 (measured), as elsewhere.
        batch_norm = bool(params.get("batch_norm"))
        assert output_difference(model, group_member.model, x, train=batch_norm) < 1e-3
        if optimizer == "sgd":
            assert relative_difference(model, group_member.model) < 1e-4


def test_members_draw_their_own_dropout_masks_and_augmentation() -> None:
    # Plain SGD, one step: the only differences left are rounding (1e-6); a member given
    # another member's random stream differs by far more.
    x, y = data("usps")
    params = {**CONV, "optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 64}
    solo = alone("usps", params, 7, x, y)
    mine, other = member("usps", params, 7, x), member("usps", params, 8, x)
    train_stack([mine, other], x, y)
    assert relative_difference(solo, mine.model) < 1e-4
    swapped = member("usps", params, 7, x)  # seed 7's weights, seed 8's random stream
    _, swapped.rng = seeded(lambda: get_problem("usps").build_model(params, x.shape[1:]), 8)
    train_stack([swapped, member("usps", params, 8, x)], x, y)
    assert relative_difference(solo, swapped.model) > 1e-2


def test_a_pruned_member_leaves_and_the_rest_go_on() -> None:
    x, y = data("house-prices")
    params = {**MLP, "loss": "mse", "optimizer": "sgd", "lr": 1e-2, "epochs": 4}
    ended: list[tuple[int, Any]] = []

    def prune_after_one(result: EpochResult) -> str | None:
        return "pruned after epoch 1" if result.epoch == 1 else None

    members = [
        member("house-prices", params, 0, x, on_epoch=prune_after_one),
        member("house-prices", params, 1, x),
        member("house-prices", {**params, "lr": 1e6}, 2, x),  # diverges
    ]
    outcomes = train_stack(members, x, y, ended)
    pruned, survivor, diverged = outcomes
    assert isinstance(pruned, training.TrainResult)
    assert (pruned.stopped, pruned.epochs_run) == ("pruned after epoch 1", 1)
    assert isinstance(diverged, training.Diverged) and diverged.epoch == 1
    assert isinstance(survivor, training.TrainResult) and survivor.epochs_run == 4
    assert survivor.stopped is None
    assert [i for i, _ in ended][-1] == 1  # the survivor ends last, after the stack shrank
    # The survivor trained on, in a stack of one, as it would have alone.
    solo = alone("house-prices", params, 1, x, y)
    assert relative_difference(solo, members[1].model) < 1e-4


def test_a_checkpoint_from_a_group_resumes_alone() -> None:
    x, y = data("usps")
    params = {**CONV, "optimizer": "adam", "lr": 1e-3, "epochs": 2}
    states: list[TrainState] = []
    members = [
        # Copied: a checkpoint is written at once, the live optimizer state moves on.
        member("usps", params, 0, x, on_checkpoint=lambda s: states.append(copy.deepcopy(s))),
        member("usps", params, 1, x),
    ]
    train_stack(members, x, y)
    assert [s.epoch for s in states] == [1, 2]
    # Resumed alone from the group's epoch-1 checkpoint, it ends where the group did.
    spec = get_problem("usps")
    resumed = spec.build_model(params, x.shape[1:])
    config = TrainConfig.from_params(params, seed=0)
    train(resumed, x, y, spec.losses["cross_entropy"], config, evaluate=lambda m: {},
          resume=states[0])  # fmt: skip
    assert output_difference(members[0].model, resumed, x) < 1e-3
    # And the other way: a solo run's checkpoint (NHWC weights and Adam moments) resumes
    # in a group (NCHW stacks).
    solo_states: list[TrainState] = []
    torch.manual_seed(0)
    solo = spec.build_model(params, x.shape[1:])
    train(solo, x, y, spec.losses["cross_entropy"], config, evaluate=lambda m: {},
          on_checkpoint=lambda s: solo_states.append(copy.deepcopy(s)))  # fmt: skip
    again = member("usps", params, 0, x, resume=solo_states[0])
    train_stack([again, member("usps", params, 1, x)], x, y)
    assert output_difference(solo, again.model, x) < 1e-3
    # The checkpoint holds this member's weights only, not the group's stacks.
    weight = next(iter(states[0].model.values()))
    assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()


def test_only_models_of_one_shape_group() -> None:
    x, _ = data("usps")
    spec = get_problem("usps")
    small = spec.build_model({**CONV, "channels": 8}, x.shape[1:])
    wider = spec.build_model({**CONV, "channels": 16}, x.shape[1:])
    no_dropout = spec.build_model({**CONV, "channels": 8, "dropout": 0.0}, x.shape[1:])
    assert stack_key(small) == stack_key(no_dropout) != stack_key(wider)
    # Same shapes, other layers: an activation or pooling of its own trains apart.
    tanh = spec.build_model({**CONV, "channels": 8, "activation": "tanh"}, x.shape[1:])
    pool_end = spec.build_model({**CONV, "channels": 8, "pool": "end"}, x.shape[1:])
    assert len({stack_key(small), stack_key(tanh), stack_key(pool_end)}) == 3
    assert {"activation", "pool"} <= spec.group_params
    assert stack_key(nn.Sequential(nn.Conv1d(1, 1, 3))) is None  # no grouped form: alone
    with pytest.raises(ValueError, match="one architecture"):
        train_stack(
            [member("usps", CONV, 0, x), member("usps", {**CONV, "channels": 16}, 1, x)],
            x,
            torch.zeros(64, dtype=torch.long),
        )


def test_group_params_are_what_sets_shapes_and_steps() -> None:
    conv = get_problem("usps").group_params
    assert {"n_conv_layers", "channels", "batch_size", "epochs"} <= conv
    assert not {"lr", "optimizer", "dropout", "lr_schedule", "aug_rotate"} & conv


def test_on_a_cpu_groups_stay_within_the_activation_budget() -> None:
    spec = get_problem("usps")
    example = torch.zeros(1, 1, 16, 16)
    report = spec.build_model(spec.defaults, (1, 16, 16))  # 3.8M floats a step at batch 50
    small = spec.build_model({**CONV, "channels": 16, "n_conv_layers": 1}, (1, 16, 16))

    def batch(size: int) -> TrainConfig:
        return TrainConfig(epochs=1, batch_size=size)

    assert stack_capacity(report, batch(50), example, limit=8) == 1
    assert stack_capacity(small, batch(32), example, limit=8) == 8
    assert stack_capacity(small, batch(32), example, limit=1) == 1
    per_model = activation_floats(small, example) * 256
    assert stack_capacity(small, batch(256), example, limit=8) == CPU_STACK_FLOATS // per_model
    assert stack_capacity(nn.Sequential(nn.Conv1d(1, 1, 3)), batch(2), example, limit=8) == 1
    bf16 = TrainConfig(epochs=1, batch_size=32, bf16=True)  # autocast is Solo's alone
    assert stack_capacity(small, bf16, example, limit=8) == 1


def test_members_leave_with_their_own_weights() -> None:
    x, y = data("house-prices")
    params = {**MLP, "loss": "mse", "optimizer": "sgd", "lr": 1e-2}
    members = [member("house-prices", params, seed, x) for seed in range(3)]
    train_stack(members, x, y)
    for m in members:  # a saved state dict holds this model only, not the group's stacks
        for tensor in m.model.state_dict().values():
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_a_flatten_on_flat_inputs_groups_too() -> None:
    # A plugin's Sequential(Flatten, Linear, ...) over (B, F) rows: activations stay (K, B, F).
    x, y = data("house-prices")
    config = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=1e-2, seed=0)

    def build() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output[:, 0], target)

    torch.manual_seed(0)
    solo = build()
    train(solo, x, y, loss, config, evaluate=lambda m: {})
    members = []
    for seed in (0, 1):
        model, rng = seeded(build, seed)
        members.append(Trainee(model, loss, replace(config, seed=seed), lambda m: {}, rng=rng))
    train_stack(members, x, y)
    assert relative_difference(solo, members[0].model) < 1e-4
    # A flatten of other dimensions has no grouped form: such a model trains alone.
    assert stack_key(nn.Sequential(nn.Linear(5, 1), nn.Flatten(0))) is None
