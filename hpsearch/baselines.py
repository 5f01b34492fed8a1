"""Classic baselines, trained on the same train + validation rows as the finalized network
and scored on the same test rows, so a user sees what the search bought.

- ``usps``: an RBF support-vector machine on the normalized pixels (scikit-learn's SVC,
  C = 10, gamma "scale"), the classic strong non-neural result on these digits.
- house prices: gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor,
  default settings) on the same features, predicting the normalized price.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from hpsearch.data import Splits
from hpsearch.problems import Problem


def _numpy(splits: Splits) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.concatenate([splits.x_train.cpu().numpy(), splits.x_val.cpu().numpy()])
    y = np.concatenate([splits.y_train.cpu().numpy(), splits.y_val.cpu().numpy()])
    return (
        x.reshape(len(x), -1),
        y,
        splits.x_test.cpu().numpy().reshape(len(splits.x_test), -1),
        (splits.y_test.cpu().numpy()),
    )


def baseline(problem: Problem, splits: Splits) -> dict[str, Any]:
    """Fit the problem's baseline on train + validation; its test metrics, name and seconds."""
    x, y, x_test, y_test = _numpy(splits)
    started = time.perf_counter()
    metrics: dict[str, Any]
    if problem.model == "conv":
        from sklearn.svm import SVC

        model = SVC(C=10.0, kernel="rbf", gamma="scale").fit(x, y)
        predicted = model.predict(x_test)
        name = "RBF SVM (C=10)"
        metrics = {"accuracy": float((predicted == y_test).mean())}
    else:
        from sklearn.ensemble import HistGradientBoostingRegressor

        model = HistGradientBoostingRegressor(random_state=0).fit(x, y)
        predicted = model.predict(x_test)
        name = "gradient boosting (HistGradientBoostingRegressor)"
        error = (predicted - y_test).astype(np.float64) * splits.target_std
        mse = float((error**2).mean())
        centered = (y_test - y_test.mean()).astype(np.float64) * splits.target_std
        metrics = {
            "rmse": math.sqrt(mse),
            "mse": mse,
            "mae": float(np.abs(error).mean()),
            "r2": 1.0 - float((error**2).sum()) / float((centered**2).sum()),
        }
    return {"name": name, "test": metrics, "seconds": round(time.perf_counter() - started, 1)}
