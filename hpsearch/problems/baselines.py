"""Classic baselines, trained on the same train + validation rows as the finalized network and
scored on the same test rows, so a user sees what the search bought. A problem names its
baselines in its registry entry: a linear model and a stronger classic one, so the figure to beat
is the better of them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from hpsearch.problems.metrics import dollar_errors, r2_score
from hpsearch.problems.splits import Splits


def _rows(splits: Splits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train + validation rows (flattened inputs, targets) and the flattened test inputs."""
    x = np.concatenate([splits.x_train.cpu().numpy(), splits.x_val.cpu().numpy()])
    y = np.concatenate([splits.y_train.cpu().numpy(), splits.y_val.cpu().numpy()])
    x_test = splits.x_test.cpu().numpy()
    return x.reshape(len(x), -1), y, x_test.reshape(len(x_test), -1)


def rbf_svm(splits: Splits) -> dict[str, Any]:
    """An RBF support-vector machine on the normalized pixels (scikit-learn's SVC, C = 10,
    gamma "scale"), the classic strong non-neural result on small digit images."""
    from sklearn.svm import SVC

    return _classifier("RBF SVM (C=10)", SVC(C=10.0, kernel="rbf", gamma="scale"), splits)


def logistic_regression(splits: Splits) -> dict[str, Any]:
    """Logistic regression (scikit-learn's, L2, C = 1) on the same encoded features."""
    from sklearn.linear_model import LogisticRegression

    return _classifier("logistic regression", LogisticRegression(max_iter=2000), splits)


def _classifier(name: str, estimator: Any, splits: Splits) -> dict[str, Any]:
    """``estimator`` fitted on train + validation, its test accuracy."""
    x, y, x_test = _rows(splits)
    started = time.perf_counter()
    predicted = estimator.fit(x, y).predict(x_test)
    accuracy = float((predicted == splits.y_test.cpu().numpy()).mean())
    return {
        "name": name,
        "test": {"accuracy": accuracy},
        "seconds": round(time.perf_counter() - started, 1),
    }


def gradient_boosting_classifier(splits: Splits) -> dict[str, Any]:
    """Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier, default
    settings) on the same encoded features."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=0)
    return _classifier("gradient boosting", model, splits)


def gradient_boosting(splits: Splits) -> dict[str, Any]:
    """Gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor, default
    settings) on the same features, predicting the same normalized target."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return _regressor("gradient boosting", HistGradientBoostingRegressor(random_state=0), splits)


def ridge(splits: Splits) -> dict[str, Any]:
    """Ridge regression on the same features and normalized target, its penalty chosen from
    1e-3 to 1e3 by leave-one-out error on train + validation (scikit-learn's RidgeCV)."""
    from sklearn.linear_model import RidgeCV

    return _regressor("ridge regression", RidgeCV(alphas=np.logspace(-3, 3, 13)), splits)


def _regressor(name: str, estimator: Any, splits: Splits) -> dict[str, Any]:
    """``estimator`` fitted on train + validation, its test errors in the target's units."""
    x, y, x_test = _rows(splits)
    started = time.perf_counter()
    mean = torch.as_tensor(estimator.fit(x, y).predict(x_test))
    y_test = splits.y_test.cpu()
    return {
        "name": name,
        "test": {**dollar_errors(mean, y_test, splits), "r2": r2_score(mean, y_test, splits)},
        "seconds": round(time.perf_counter() - started, 1),
    }
