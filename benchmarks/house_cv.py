"""House-price data options, cross-validated on the rows the search may see.

    hpsearch run house-prices --trials 200
    python benchmarks/house_cv.py --study house-prices --storage sqlite:///hpsearch.db

A 60-second search compares data options on one validation split of 292 houses, which may hold
none of the houses a network finds hard (the few very large ones). This benchmark takes the
study's top-k configurations and retrains each with and without every option on K folds of
the study's train + validation rows (the held-out test rows are left out of the table before
the folds are cut: nothing here reads them), so every non-test house is predicted once by a
model that never saw it. It prints the out-of-fold RMSE in dollars (mean and spread over
configurations x seeds), the ratio to the study's own data options, each option's
prediction for the largest house and its RMSE over all the other houses, side by side in one
run, with gradient boosting (the baseline ``hpsearch finalize`` prints) on the same folds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
import torch
from sklearn.model_selection import KFold

from hpsearch import training
from hpsearch.problems import house_prices as data
from hpsearch.problems.registry import get_problem
from hpsearch.problems.splits import Splits, resolve_data_dir
from hpsearch.results import finalize

# Each variant's options are laid over the study's own [data] options (a value of False or 0
# turns one of the study's options off).
VARIANTS: dict[str, dict[str, Any]] = {
    "study's options": {},
    "clip_inputs": {"clip_inputs": True},
    "log_features": {"log_features": True},
    "log_features + clip_inputs": {"log_features": True, "clip_inputs": True},
    "max_train_living_area 4000": {"max_train_living_area": 4000},
    "no winsorize": {"winsorize": 0.0},
    "winsorize 0.005": {"winsorize": 0.005},
    "winsorize 0.01": {"winsorize": 0.01},
    "winsorize 0.02": {"winsorize": 0.02},
    "winsorize 0.05": {"winsorize": 0.05},
}


# Trains on a fold's training rows and returns normalized predictions for its held-out rows.
FitPredict = Callable[[Splits, int], torch.Tensor]


def out_of_fold(
    fit_predict: FitPredict,
    options: Mapping[str, Any],
    frame: Any,
    rows: np.ndarray,
    folds: int,
    seed: int,
) -> np.ndarray:
    """Each row's price predicted by the model trained on the other folds (dollars)."""
    predictions = np.empty(len(rows))
    empty = np.array([], dtype=rows.dtype)
    for k, (fit_at, held_at) in enumerate(
        KFold(folds, shuffle=True, random_state=seed).split(rows)
    ):
        splits = data.house_prices_from_rows(frame, rows[fit_at], rows[held_at], empty, **options)
        predictions[held_at] = splits.to_dollars(fit_predict(splits, seed * 1000 + k)).numpy()
    return predictions


def network(params: Mapping[str, Any]) -> FitPredict:
    """A study configuration, trained as ``hpsearch finalize`` trains it."""
    problem = get_problem("house-prices")

    def fit_predict(splits: Splits, seed: int) -> torch.Tensor:
        x, y = splits.x_train, splits.y_train
        model, _ = problem.fit(params, x, y, seed=seed)
        return training.predict(model, splits.x_val)

    return fit_predict


def boosting(splits: Splits, seed: int) -> torch.Tensor:
    """The baseline ``hpsearch finalize`` prints (its own fixed random_state)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(random_state=0)
    model.fit(splits.x_train.numpy(), splits.y_train.numpy())
    return torch.as_tensor(model.predict(splits.x_val.numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True, help="a finished house-prices study")
    parser.add_argument("--storage", default="sqlite:///hpsearch.db")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    study = optuna.load_study(study_name=args.study, storage=args.storage)
    if study.user_attrs.get("problem") != "house-prices":
        raise SystemExit(f"{args.study} is not a house-prices study")
    options = dict(study.user_attrs.get("data", {}))
    split = {k: options.pop(k) for k in ("val_fraction", "test_fraction", "seed") if k in options}
    frame, _ = data._read_house_prices(resolve_data_dir())
    train_idx, val_idx, _ = data.house_split_rows(len(frame), **split)
    rows = np.sort(np.concatenate([train_idx, val_idx]))
    prices = frame[data.HOUSE_PRICES_TARGET].to_numpy(dtype=np.float64)[rows]
    largest = int(np.argmax(frame["GrLivArea"].to_numpy()[rows]))
    configs = finalize.top_configurations(study, args.top_k)
    print(
        f"{args.study}: top {len(configs)} configurations (trials "
        f"{', '.join(str(n) for n, _, _ in configs)}) x seeds {args.seeds}, {args.folds}-fold "
        f"cross-validation over its {len(rows)} train + validation rows; study options {options}"
    )
    print(
        f"largest house in those rows: row {rows[largest]}, "
        f"{frame['GrLivArea'].iloc[rows[largest]]} sq ft, sold ${prices[largest]:,.0f}"
    )
    results: dict[str, list[float]] = {}
    others: dict[str, list[float]] = {}  # RMSE over every house but the largest
    largest_pred: dict[str, list[float]] = {}
    rest = np.arange(len(rows)) != largest

    def record(name: str, fit_predict: FitPredict, variant: Mapping[str, Any], seed: int) -> None:
        predicted = out_of_fold(fit_predict, {**options, **variant}, frame, rows, args.folds, seed)
        squared = (predicted - prices) ** 2
        results.setdefault(name, []).append(math.sqrt(float(np.mean(squared))))
        others.setdefault(name, []).append(math.sqrt(float(np.mean(squared[rest]))))
        largest_pred.setdefault(name, []).append(float(predicted[largest]))

    started = time.perf_counter()
    for name in args.variants:
        for _, params, _ in configs:
            for seed in args.seeds:
                record(name, network(params), VARIANTS[name], seed)
    for seed in args.seeds:
        record("gradient boosting baseline", boosting, {}, seed)
    base = statistics.mean(results[args.variants[0]])
    print(
        f"{'data options':<30}{'out-of-fold RMSE':>22}{'ratio':>8}{'largest house':>16}"
        f"{'RMSE without it':>18}"
    )
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        mean = statistics.mean(values)
        print(
            f"{name:<30}{f'${mean:,.0f} ±{spread:,.0f}':>22}{mean / base:>8.3f}"
            f"{f'${statistics.median(largest_pred[name]):,.0f}':>16}"
            f"{f'${statistics.mean(others[name]):,.0f}':>18}"
        )
    print(f"({time.perf_counter() - started:.0f} s; largest house: median prediction)")


if __name__ == "__main__":
    main()
