"""Training losses by name, per kind of output: classification logits, a regression value,
a Gaussian's mean and log variance."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOG_2PI = math.log(2 * math.pi)


def gaussian_nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood of ``target`` under ``output = (mean, log_var)``.

    With ``log_var = 0`` (sigma = 1) this is half the squared error plus a constant.
    """
    mean, log_var = output[:, 0], output[:, 1]
    return 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var) + LOG_2PI).mean()


def _onehot_mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The lab report's classification loss: MSE between softmax outputs and one-hot labels.
    probs = logits.softmax(dim=-1)
    return F.mse_loss(probs, F.one_hot(target, probs.shape[-1]).to(probs.dtype))


def _mean_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # A Gaussian regressor trained with sigma fixed to 1: only its mean head learns.
    return F.mse_loss(output[:, 0], target)


def _smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Label smoothing (Szegedy et al. 2016): the target puts 0.9 on the label and spreads
    # 0.1 over all classes, so the net is not pushed to ever larger logits.
    return F.cross_entropy(logits, target, label_smoothing=0.1)


CLASSIFICATION_LOSSES: dict[str, LossFn] = {
    "cross_entropy": F.cross_entropy,
    "smoothed_cross_entropy": _smoothed_cross_entropy,
    "mse": _onehot_mse,
}
REGRESSION_LOSSES: dict[str, LossFn] = {
    "mse": F.mse_loss,
    # Squared error within one standard deviation of the target, absolute error beyond:
    # a few mispriced houses pull the fit less.
    "huber": F.huber_loss,
}
GAUSSIAN_LOSSES: dict[str, LossFn] = {"gaussian_nll": gaussian_nll, "mse": _mean_mse}
