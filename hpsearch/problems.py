"""The problem registry: what data, model, losses and metrics each named problem uses."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch import data, models, training
from hpsearch.data import Splits
from hpsearch.errors import HpsearchError

Metrics = dict[str, float]


def classification_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits
) -> Metrics:
    """Accuracy and mean cross-entropy over ``(x, y)``."""
    logits = training.predict(model, x)
    return {
        "accuracy": float((logits.argmax(dim=-1) == y).float().mean()),
        "cross_entropy": float(F.cross_entropy(logits, y)),
    }


def dollar_errors(mean: torch.Tensor, y: torch.Tensor, splits: Splits) -> Metrics:
    """RMSE, MSE and MAE in dollars of normalized predictions ``mean`` against ``y``
    (with a log-price target, ``exp`` of the predicted log price, i.e. its median)."""
    error = splits.to_dollars(mean) - splits.to_dollars(y)
    mse = float((error**2).mean())
    return {"rmse": math.sqrt(mse), "mse": mse, "mae": float(error.abs().mean())}


def r2_score(mean: torch.Tensor, y: torch.Tensor, splits: Splits) -> float:
    """Coefficient of determination of ``mean`` against ``y``, on prices in dollars."""
    y64, mean64 = splits.to_dollars(y), splits.to_dollars(mean)
    residual = float(((y64 - mean64) ** 2).sum())
    total = float(((y64 - y64.mean()) ** 2).sum())
    return 1.0 - residual / total if total > 0 else math.nan


def dollar_nll(normalized_nll: float, y: torch.Tensor, splits: Splits) -> float:
    """Mean Gaussian NLL per house of prices in dollars, from the NLL of normalized targets:
    plus ``log(target_std)``, and with a log-price target plus the mean log price (the
    change of variables from log(price) to price)."""
    nll = normalized_nll + math.log(splits.target_std)
    if splits.log_target:
        nll += float(torch.log(splits.to_dollars(y)).mean())
    return nll


def regression_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits
) -> Metrics:
    """RMSE, MSE and MAE of the prediction, in dollars."""
    return dollar_errors(training.predict(model, x), y, splits)


def gaussian_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits) -> Metrics:
    """Dollar errors of the mean, and the mean Gaussian NLL per house in dollar units."""
    output = training.predict(model, x)
    metrics = dollar_errors(output[:, 0], y, splits)
    nll = float(training.gaussian_nll(output.double(), y.double()))
    metrics["nll"] = dollar_nll(nll, y, splits)
    return metrics


@dataclass(frozen=True)
class Problem:
    """A named search problem: ``run usps`` looks one of these up."""

    name: str
    description: str
    model: str  # a key of models.MODELS
    load_data: Callable[..., Splits]
    losses: Mapping[str, training.LossFn]
    evaluate: Callable[[nn.Module, torch.Tensor, torch.Tensor, Splits], Metrics]
    # Validation metric -> study direction; the first is the default objective.
    metrics: Mapping[str, str]
    # The lab report's best configuration: any hyperparameter a study neither fixes nor
    # searches takes this value.
    defaults: Mapping[str, Any]

    def build_model(self, params: Mapping[str, Any], splits: Splits) -> nn.Module:
        kwargs = {} if self.model == "conv" else {"n_features": splits.x_train.shape[1]}
        return models.build_model(self.model, params, **kwargs)

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))


_TRAINING_DEFAULTS = {
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_step_epochs": 10,
    "lr_gamma": 0.1,
}

_REPORT_MLP = {
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

PROBLEMS: dict[str, Problem] = {
    "usps": Problem(
        name="usps",
        description="USPS handwritten digits, conv classifier",
        model="conv",
        load_data=data.load_usps,
        losses=training.CLASSIFICATION_LOSSES,
        evaluate=classification_metrics,
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
    ),
    "house-prices": Problem(
        name="house-prices",
        description="Ames house prices, MLP regressor",
        model="mlp",
        load_data=data.load_house_prices,
        losses=training.REGRESSION_LOSSES,
        evaluate=regression_metrics,
        metrics={"val_rmse": "minimize", "val_mse": "minimize", "val_mae": "minimize"},
        defaults={**_REPORT_MLP, "loss": "mse"},
    ),
    "house-prices-gaussian": Problem(
        name="house-prices-gaussian",
        description="Ames house prices, Gaussian regressor (mean and log variance)",
        model="gaussian",
        load_data=data.load_house_prices,
        losses=training.GAUSSIAN_LOSSES,
        evaluate=gaussian_metrics,
        metrics={
            "val_nll": "minimize",
            "val_rmse": "minimize",
            "val_mse": "minimize",
            "val_mae": "minimize",
        },
        defaults={**_REPORT_MLP, "loss": "gaussian_nll"},
    ),
}


def get_problem(name: str) -> Problem:
    """Look a problem up by name.

    Raises:
        HpsearchError: unknown name; the message lists the valid ones.
    """
    try:
        return PROBLEMS[name]
    except KeyError:
        raise HpsearchError(
            f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)} or give a study .toml"
        ) from None
