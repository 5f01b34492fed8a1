"""The classic baselines (hpsearch.problems.baselines) on scikit-learn's bundled data sets: fitted
on train + validation, scored on test, in the problem's units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import train_test_split

from hpsearch.problems.baselines import gradient_boosting, rbf_svm
from hpsearch.problems.splits import Splits


def _digits(validation_only: int) -> Splits:
    """8x8 digits as (N, 1, 8, 8) images; class ``validation_only`` is kept out of the
    training rows, so only a baseline that also fits the validation rows can tell it."""
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    labels = torch.tensor(y)
    rest, test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=y)
    train = rest[y[rest] != validation_only][: len(rest) // 2]
    val = np.setdiff1d(rest, train)
    return Splits(
        images[train], labels[train], images[val], labels[val], images[test], labels[test]
    )


def test_svm_fits_train_and_validation_and_scores_test() -> None:
    splits = _digits(validation_only=9)
    result = rbf_svm(splits)
    assert result["name"] == "RBF SVM (C=10)" and result["seconds"] >= 0
    assert result["test"]["accuracy"] > 0.95
    # Class 9 is in no training row: only the validation rows taught it.
    assert not (splits.y_train == 9).any() and (splits.y_val == 9).any()
    assert result["test"]["accuracy"] > 1 - (splits.y_test == 9).float().mean() + 0.01


def _diabetes(mean: float, std: float) -> Splits:
    """scikit-learn's diabetes table, its target normalized with ``mean`` and ``std``."""
    x, y = load_diabetes(return_X_y=True)
    features = torch.tensor(x, dtype=torch.float32)
    target = torch.tensor((y - mean) / std, dtype=torch.float32)
    rows = np.random.default_rng(0).permutation(len(y))
    train, val, test = rows[:250], rows[250:340], rows[340:]
    return Splits(
        features[train],
        target[train],
        features[val],
        target[val],
        features[test],
        target[test],
        target_mean=mean,
        target_std=std,
    )


def test_gradient_boosting_reports_errors_in_the_targets_units() -> None:
    plain = gradient_boosting(_diabetes(0.0, 1.0))
    assert plain["name"] == "gradient boosting"
    assert 0.2 < plain["test"]["r2"] < 1.0
    assert plain["test"]["mse"] == pytest.approx(plain["test"]["rmse"] ** 2)
    # Fitted on a target normalized otherwise, it reports the same errors in the target's
    # units (to_dollars undoes the normalization); a baseline left in normalized units
    # would be 10 times smaller.
    scaled = gradient_boosting(_diabetes(150.0, 10.0))
    assert scaled["test"]["rmse"] == pytest.approx(plain["test"]["rmse"], rel=1e-3)
    assert scaled["test"]["r2"] == pytest.approx(plain["test"]["r2"], rel=1e-3)
    assert math.isfinite(scaled["test"]["mae"])
