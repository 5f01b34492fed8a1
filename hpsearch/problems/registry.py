"""The problem registry, hpsearch's one extension point.

A ``Problem`` entry carries everything that differs between problems: the data loader, the
model builder and the hyperparameters it reads, the losses, the validation and test metrics,
the lab report's defaults, how an ensemble averages, the classic baselines and an optional
calibration. Every other module reads problems only through these fields. A new problem is
one entry, registered with ``register_problem`` (or from another package through the
``hpsearch.problems`` entry-point group), plus a study file with ``problem = "<name>"``.

The tasks (``tabular-regression``, ``tabular-gaussian``, ``tabular-classification``,
``image-classification``) take a user's data; the shipped problems are presets of them
(``preset``: a task with a packaged data set's loader and defaults, as in ``problems/usps.py``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.problems.metrics import Metrics, mean_z2
from hpsearch.problems.splits import Splits
from hpsearch.training import (
    HYPERPARAMETERS,
    LossFn,
    models,
)
from hpsearch.training.costs import COST_METRICS

Evaluate = Callable[[nn.Module, torch.Tensor, torch.Tensor, Splits], Metrics]
ENTRY_POINT_GROUP = "hpsearch.problems"


@dataclass(frozen=True)
class Calibration:
    """A scale fitted on validation after training (the Gaussian regressor's sigma):
    ``statistic`` of each validation fit, ``scale`` from those, ``apply`` to the model."""

    statistic: Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
    scale: Callable[[Sequence[float]], float]
    apply: Callable[[nn.Module, float], nn.Module]


# The Gaussian regressors' calibration: sigma x scale makes the validation z-scores of the
# chosen configuration's seeds unit variance.
GAUSSIAN_CALIBRATION = Calibration(
    statistic=mean_z2,
    scale=lambda stats: math.sqrt(statistics.fmean(stats)),
    apply=models.ScaledVariance,
)


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
    losses: Mapping[str, LossFn]
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
    # Each fits a classic model on train + validation and scores it on test: {"name", "test"}
    baselines: Sequence[Callable[[Splits], dict[str, Any]]] = ()
    calibration: Calibration | None = None
    # Width key -> depth key: ``per_layer = true`` samples ``{width}_{i}`` for each layer
    per_layer: Mapping[str, str] = field(default_factory=dict)
    # The hyperparameters a trial group's members share (and their per-layer ``{width}_{i}``
    # forms): the builder's that set the layers and tensor shapes, and training's that set
    # the steps (``training.GROUP_PARAMS``). Models that differ in these train apart anyway
    # (``training.stack.stack_key``); sharing them is what lets a group's trials stack.
    group_params: frozenset[str] = frozenset()
    # The task this entry is (its own name) or is a preset of; empty for a plugin's own.
    task: str = ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by its registry name: its fields hold functions (lambdas among them) that
        # do not pickle, and a worker process finds the same entry in its own registry.
        return (get_problem, (self.name,))

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))

    @property
    def recorded_metrics(self) -> dict[str, str]:
        """Every metric a trial records -> its direction: the validation metrics, then the
        model's costs (``training.costs``), each minimized."""
        return {**self.metrics, **COST_METRICS}

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter a study may fix or search -> the pydantic type of its values."""
        losses: Any = Literal[tuple(self.losses)]
        return {**self.model_hyperparameters, **HYPERPARAMETERS, "loss": losses}


# The training defaults the lab report did not vary (TrainConfig's own), listed so that a
# trial's stored configuration is complete.
TRAINING_DEFAULTS = {"momentum": 0.9, "weight_decay": 0.0, "lr_step_epochs": 10, "lr_gamma": 0.1}


PROBLEMS: dict[str, Problem] = {}


def preset(
    task: Problem,
    *,
    name: str,
    description: str,
    load_data: Callable[..., Splits],
    defaults: Mapping[str, Any],
) -> Problem:
    """``task`` on a packaged data set: its model, losses, metrics, baselines and ensemble,
    with the data set's loader and the defaults found for it (``usps`` is the
    ``image-classification`` task on the USPS digits)."""
    return replace(task, name=name, description=description, load_data=load_data, defaults=defaults)


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
