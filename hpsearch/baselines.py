"""Classic baselines, trained on the same train + validation rows as the finalized network
and scored on the same test rows, so a user sees what the search bought.

- ``usps``: an RBF support-vector machine on the normalized pixels (scikit-learn's SVC,
  C = 10, gamma "scale"), the classic strong non-neural result on these digits.
- house prices: gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor,
  default settings) on the same features, predicting the normalized price.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from hpsearch.data import Splits
from hpsearch.problems import Problem, dollar_errors, r2_score


def _numpy(splits: Splits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train + validation rows (flattened inputs, targets) and the flattened test inputs."""
    x = np.concatenate([splits.x_train.cpu().numpy(), splits.x_val.cpu().numpy()])
    y = np.concatenate([splits.y_train.cpu().numpy(), splits.y_val.cpu().numpy()])
    x_test = splits.x_test.cpu().numpy()
    return x.reshape(len(x), -1), y, x_test.reshape(len(x_test), -1)


def baseline(problem: Problem, splits: Splits) -> dict[str, Any]:
    """Fit the problem's baseline on train + validation; its test metrics, name and seconds."""
    x, y, x_test = _numpy(splits)
    y_test = splits.y_test.cpu()
    started = time.perf_counter()
    metrics: dict[str, Any]
    if problem.model == "conv":
        from sklearn.svm import SVC

        model = SVC(C=10.0, kernel="rbf", gamma="scale").fit(x, y)
        predicted = model.predict(x_test)
        name = "RBF SVM (C=10)"
        metrics = {"accuracy": float((predicted == y_test.numpy()).mean())}
    else:
        from sklearn.ensemble import HistGradientBoostingRegressor

        model = HistGradientBoostingRegressor(random_state=0).fit(x, y)
        mean = torch.as_tensor(model.predict(x_test))
        name = "gradient boosting (HistGradientBoostingRegressor)"
        metrics = {**dollar_errors(mean, y_test, splits), "r2": r2_score(mean, y_test, splits)}
    return {"name": name, "test": metrics, "seconds": round(time.perf_counter() - started, 1)}
