"""The problem registry, hpsearch's one extension point.

A ``Problem`` entry carries everything that differs between problems: the data loader, the
model builder and the hyperparameters it reads, the losses, the validation and test metrics,
the lab report's defaults, how an ensemble averages, the classic baseline and an optional
calibration. Every other module reads problems only through these fields. A new problem is
one entry, registered with ``register_problem`` (or from another package through the
``hpsearch.problems`` entry-point group), plus a study file with ``problem = "<name>"``.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from hpsearch import baselines, data, groups, metrics, models, training
from hpsearch.data import Splits
from hpsearch.errors import HpsearchError
from hpsearch.metrics import Metrics

Evaluate = Callable[[nn.Module, torch.Tensor, torch.Tensor, Splits], Metrics]
ENTRY_POINT_GROUP = "hpsearch.problems"


@dataclass(frozen=True)
class Calibration:
    """A scale fitted on validation after training (the Gaussian regressor's sigma):
    ``statistic`` of each validation fit, ``scale`` from those, ``apply`` to the model."""

    statistic: Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
    scale: Callable[[Sequence[float]], float]
    apply: Callable[[nn.Module, float], nn.Module]


@dataclass(frozen=True)
class Problem:
    """A named search problem: ``problem = "usps"`` in a study file looks one of these up."""

    name: str
    description: str
    # (data_dir or None for the packaged copy, **the study file's [data]) -> Splits
    load_data: Callable[..., Splits]
    # (params, shape of one input example) -> an untrained model
    build_model: Callable[[Mapping[str, Any], Sequence[int]], nn.Module]
    # The builder's hyperparameters -> pydantic types of their valid values
    model_hyperparameters: Mapping[str, Any]
    losses: Mapping[str, training.LossFn]
    # Metrics of a model on validation rows, every evaluated epoch (names without "val_")
    evaluate: Evaluate
    # Validation metric -> study direction; the first is the default objective.
    metrics: Mapping[str, Literal["maximize", "minimize"]]
    # The lab report's best configuration: any hyperparameter a study neither fixes nor
    # searches takes this value.
    defaults: Mapping[str, Any]
    # Stacked member outputs (M, B, ...) -> the ensemble's output, in the members' format
    combine: Callable[[torch.Tensor], torch.Tensor] = models.mean_prediction
    # Metrics of the one look at the test split; default: ``evaluate``'s
    test_metrics: Evaluate | None = None
    # Fits a classic model on train + validation and scores it on test: {"name", "test"}
    baseline: Callable[[Splits], dict[str, Any]] | None = None
    calibration: Calibration | None = None
    # Width key -> depth key: ``per_layer = true`` samples ``{width}_{i}`` for each layer
    per_layer: Mapping[str, str] = field(default_factory=dict)
    # The model hyperparameters that set tensor shapes: a trial group's members share them
    # (and their per-layer ``{width}_{i}`` forms).
    shape_params: frozenset[str] = frozenset()

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter a study may fix or search -> the pydantic type of its values."""
        losses: Any = Literal[tuple(self.losses)]
        return {**self.model_hyperparameters, **training.HYPERPARAMETERS, "loss": losses}

    @property
    def group_params(self) -> frozenset[str]:
        """What the members of a trial group share: the shapes, batch size and epochs."""
        return self.shape_params | training.GROUP_PARAMS

    def fit(
        self,
        params: Mapping[str, Any],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        seed: int,
        evaluate: Callable[[nn.Module], Metrics] = lambda model: {},
    ) -> tuple[nn.Module, Metrics]:
        """Train a fresh model of ``params`` on ``(x, y)`` with ``seed`` for all its epochs;
        the model and ``evaluate``'s metrics after the last one."""
        torch.manual_seed(seed)
        model = self.build_model(params, tuple(x.shape[1:])).to(x.device)
        result = training.train(
            model,
            x,
            y,
            self.losses[params["loss"]],
            training.TrainConfig.from_params(params, seed=seed),
            evaluate=evaluate,
            eval_every=max(1, int(params["epochs"])),
        )
        return model, result.metrics

    def fit_many(
        self,
        jobs: Sequence[tuple[Mapping[str, Any], int]],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        group_size: int,
        evaluate: Callable[[nn.Module], Metrics] = lambda model: {},
    ) -> list[tuple[nn.Module, Metrics] | training.NonFiniteLossError]:
        """``fit`` of each ``(params, seed)``, trained ``group_size`` at a time where they
        share a shape (``groups.train_group``); a diverged job's ``NonFiniteLossError`` in
        its place.

        Raises:
            Exception: what training raised other than divergence.
        """
        shape = tuple(x.shape[1:])
        members: list[groups.GroupMember] = []
        for params, seed in jobs:
            model, rng = groups.seeded(functools.partial(self.build_model, params, shape), seed)
            config = training.TrainConfig.from_params(params, seed=seed)
            loss = self.losses[params["loss"]]
            members.append(groups.GroupMember(model.to(x.device), loss, config, rng, evaluate))
        by_shape: dict[Any, list[int]] = {}
        for index, member in enumerate(members):
            key = groups.group_key(member.model, member.config)
            by_shape.setdefault(index if key is None else key, []).append(index)  # None: alone
        results: dict[int, tuple[nn.Module, Metrics] | training.NonFiniteLossError] = {}
        for indices in by_shape.values():
            first = members[indices[0]]
            size = groups.group_capacity(first.model, first.config, x[:1], group_size)
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                if len(chunk) == 1:  # alone: exactly ``fit``
                    params, seed = jobs[chunk[0]]
                    try:
                        results[chunk[0]] = self.fit(params, x, y, seed=seed, evaluate=evaluate)
                    except training.NonFiniteLossError as error:
                        results[chunk[0]] = error
                    continue
                epochs = members[chunk[0]].config.epochs
                trained = groups.train_group([members[i] for i in chunk], x, y, eval_every=epochs)
                for index, outcome in zip(chunk, trained, strict=True):
                    if isinstance(outcome, training.NonFiniteLossError):
                        results[index] = outcome
                    elif isinstance(outcome, BaseException):
                        raise outcome
                    else:
                        results[index] = (members[index].model, outcome.metrics)
        return [results[index] for index in range(len(jobs))]


PROBLEMS: dict[str, Problem] = {}


def register_problem(problem: Problem) -> Problem:
    """Add ``problem`` to the registry under its name (replacing one of the same name)."""
    PROBLEMS[problem.name] = problem
    return problem


def get_problem(name: str) -> Problem:
    """Look a problem up by name: registered here, else from an installed package's
    ``hpsearch.problems`` entry point of that name.

    Raises:
        HpsearchError: unknown name; the message lists the known ones.
    """
    if name not in PROBLEMS:
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP, name=name):
            register_problem(entry.load())
    try:
        return PROBLEMS[name]
    except KeyError:
        raise HpsearchError(
            f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)}"
        ) from None


# The training defaults the lab report did not vary.
_TRAINING_DEFAULTS = {"momentum": 0.9, "weight_decay": 0.0, "lr_step_epochs": 10, "lr_gamma": 0.1}
_LAB_REPORT_MLP = {
    **_TRAINING_DEFAULTS,
    "n_hidden_layers": 3,
    "hidden_units": 128,
    "activation": "relu",
    "dropout": 0.0,
    "optimizer": "adam",
    "lr": 3e-4,
    "lr_schedule": "none",
    "batch_size": 100,
    "epochs": 2000,
}

register_problem(
    Problem(
        name="usps",
        description="USPS handwritten digits, conv classifier",
        load_data=data.load_usps,
        build_model=models.build_conv_classifier,
        model_hyperparameters=models.CONV_HYPERPARAMETERS,
        per_layer=models.CONV_PER_LAYER,
        shape_params=models.CONV_SHAPE_PARAMS,
        losses=training.CLASSIFICATION_LOSSES,
        evaluate=metrics.classification_metrics,
        test_metrics=metrics.classification_test_metrics,
        metrics={"val_accuracy": "maximize", "val_cross_entropy": "minimize"},
        defaults={
            **_TRAINING_DEFAULTS,
            "n_conv_layers": 3,
            "channels": 64,
            "activation": "relu",
            "batch_norm": True,
            "dropout": 0.1,
            "optimizer": "adam",
            "lr": 0.01,
            "lr_schedule": "step",
            "batch_size": 50,
            "epochs": 30,
            "loss": "mse",
        },
        combine=models.mean_softmax,
        baseline=baselines.rbf_svm,
    )
)
register_problem(
    Problem(
        name="house-prices",
        description="Ames house prices, MLP regressor",
        load_data=data.load_house_prices,
        build_model=models.build_mlp_regressor,
        model_hyperparameters=models.MLP_HYPERPARAMETERS,
        per_layer=models.MLP_PER_LAYER,
        shape_params=models.MLP_SHAPE_PARAMS,
        losses=training.REGRESSION_LOSSES,
        evaluate=metrics.regression_metrics,
        test_metrics=metrics.regression_test_metrics,
        metrics={"val_rmse": "minimize", "val_mse": "minimize", "val_mae": "minimize"},
        defaults={**_LAB_REPORT_MLP, "loss": "mse"},
        baseline=baselines.gradient_boosting,
    )
)
register_problem(
    Problem(
        name="house-prices-gaussian",
        description="Ames house prices, Gaussian regressor (mean and log variance)",
        load_data=data.load_house_prices,
        build_model=models.build_gaussian_regressor,
        model_hyperparameters=models.MLP_HYPERPARAMETERS,
        per_layer=models.MLP_PER_LAYER,
        shape_params=models.MLP_SHAPE_PARAMS,
        losses=training.GAUSSIAN_LOSSES,
        evaluate=metrics.gaussian_metrics,
        test_metrics=metrics.gaussian_test_metrics,
        metrics={
            "val_nll": "minimize",
            "val_rmse": "minimize",
            "val_mse": "minimize",
            "val_mae": "minimize",
        },
        defaults={**_LAB_REPORT_MLP, "loss": "gaussian_nll"},
        combine=models.gaussian_mixture,
        baseline=baselines.gradient_boosting,
        # sigma x scale makes the validation z-scores of the chosen configuration's seeds
        # unit variance.
        calibration=Calibration(
            statistic=metrics.mean_z2,
            scale=lambda stats: math.sqrt(statistics.fmean(stats)),
            apply=models.ScaledVariance,
        ),
    )
)
