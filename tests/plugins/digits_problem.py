"""A problem defined outside hpsearch: scikit-learn's bundled 8x8 digits (1,797 images), an MLP
classifier, a logistic-regression baseline. Installed with an entry point in the
``hpsearch.problems`` group (tests/test_registry.py does it), it is ``problem = "digits"``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn

from hpsearch.problems import metrics
from hpsearch.problems.registry import Problem
from hpsearch.problems.splits import Splits
from hpsearch.training import models


def load_digits(
    data_dir: str | Path | None = None, *, test_fraction: float = 0.2, seed: int = 0
) -> Splits:
    """Train / validation / test splits of the 8x8 digits, stratified; pixels / 16."""
    x, y = sklearn_digits(return_X_y=True)
    rows = np.arange(len(y))
    rest, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=y)
    train, val = train_test_split(rest, test_size=0.25, random_state=seed, stratify=y[rest])

    def split(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(x[idx] / 16.0, dtype=torch.float32), torch.tensor(y[idx])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = map(split, (train, val, test))
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, rows={"train": train, "val": val})


def build_mlp_classifier(params: Mapping[str, Any], input_shape: Sequence[int]) -> nn.Module:
    """``(B, 64) -> (B, 10)`` logits through one hidden layer."""
    hidden = int(params["hidden_units"])
    return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, 10))


def logistic_regression(splits: Splits) -> dict[str, Any]:
    started = time.perf_counter()
    x = torch.cat([splits.x_train, splits.x_val]).numpy()
    y = torch.cat([splits.y_train, splits.y_val]).numpy()
    model = LogisticRegression(max_iter=2000).fit(x, y)
    accuracy = float((model.predict(splits.x_test.numpy()) == splits.y_test.numpy()).mean())
    seconds = round(time.perf_counter() - started, 1)
    return {"name": "logistic regression", "test": {"accuracy": accuracy}, "seconds": seconds}


DIGITS = Problem(
    name="digits",
    description="scikit-learn's 8x8 digits, MLP classifier",
    load_data=load_digits,
    build_model=build_mlp_classifier,
    model_hyperparameters={"hidden_units": Annotated[int, Field(ge=1)]},
    losses={"cross_entropy": F.cross_entropy},
    evaluate=metrics.classification_metrics,
    test_metrics=metrics.classification_test_metrics,
    metrics={"val_accuracy": "maximize", "val_cross_entropy": "minimize"},
    defaults={
        "hidden_units": 32,
        "optimizer": "adam",
        "lr": 0.01,
        "batch_size": 64,
        "epochs": 10,
        "loss": "cross_entropy",
    },
    combine=models.mean_softmax,
    baselines=(logistic_regression,),
)
