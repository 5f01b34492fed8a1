"""Metrics of a model on some rows, shared by the registered problems (and usable by new ones):
classification accuracy and cross-entropy, regression errors in dollars, Gaussian NLL and
interval coverage."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch import training
from hpsearch.problems.splits import Splits

Metrics = dict[str, Any]


def classification_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits
) -> Metrics:
    """Accuracy and mean cross-entropy over ``(x, y)``."""
    logits = training.predict(model, x)
    return {
        "accuracy": float((logits.argmax(dim=-1) == y).float().mean()),
        "cross_entropy": float(F.cross_entropy(logits, y)),
    }


def classification_test_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits
) -> Metrics:
    """``classification_metrics`` plus the accuracy of each class (by name, where the data
    name their classes)."""
    metrics = classification_metrics(model, x, y, splits)
    hits = training.predict(model, x).argmax(dim=-1) == y
    names = splits.classes or tuple(str(c) for c in range(int(y.max()) + 1))
    metrics["per_class_accuracy"] = {
        names[c]: float(hits[y == c].float().mean()) for c in torch.unique(y).tolist()
    }
    return metrics


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


def regression_test_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits
) -> Metrics:
    """``regression_metrics`` plus R2."""
    mean = training.predict(model, x)
    return {**dollar_errors(mean, y, splits), "r2": r2_score(mean, y, splits)}


def gaussian_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits) -> Metrics:
    """Dollar errors of the mean, and the mean Gaussian NLL per house in dollar units."""
    output = training.predict(model, x)
    metrics = dollar_errors(output[:, 0], y, splits)
    nll = float(training.gaussian_nll(output.double(), y.double()))
    metrics["nll"] = dollar_nll(nll, y, splits)
    return metrics


def gaussian_test_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Splits
) -> Metrics:
    """``gaussian_metrics`` plus R2 of the mean, how many targets fall inside the predicted
    68% and 95% intervals, and the NLL of the normalized targets."""
    output = training.predict(model, x).double()
    y64 = y.double()
    z = ((y64 - output[:, 0]) / torch.exp(0.5 * output[:, 1])).abs()
    return {
        **gaussian_metrics(model, x, y, splits),
        "r2": r2_score(output[:, 0], y, splits),
        "coverage_68": float((z <= 1.0).double().mean()),
        "coverage_95": float((z <= 1.959964).double().mean()),
        "nll_normalized": float(training.gaussian_nll(output, y64)),
    }


def mean_z2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared z-score of ``y`` under a Gaussian regressor's predictions: 1 when its
    intervals are calibrated, above 1 when they are too narrow."""
    output = training.predict(model, x).double()
    return float(((y.double() - output[:, 0]) ** 2 / output[:, 1].exp()).mean())
