"""The house-price problems: the Kaggle/Ames table (1,460 rows), its feature pipeline and
fixed-seed splits, and two registry entries: the ``tabular-regression`` task (an MLP
regressor) and the ``tabular-gaussian`` task (mean and log variance, Gaussian NLL) with this
table and its feature pipeline as their data and the lab report's MLP as their defaults."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.model_selection import KFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from hpsearch.errors import HpsearchError
from hpsearch.problems.registry import TRAINING_DEFAULTS, preset, register_problem
from hpsearch.problems.splits import Splits, resolve_data_dir, verify_checksum
from hpsearch.problems.tabular import TABULAR_GAUSSIAN, TABULAR_REGRESSION
from hpsearch.problems.transformers import ClipToTrainingRange, SkewedLog1p, Winsorizer

logger = logging.getLogger(__name__)

HOUSE_PRICES_FILE = "house_prices/train.csv"
HOUSE_PRICES_OPENML_ID = 42165
HOUSE_PRICES_TARGET = "SalePrice"
LAB_REPORT_FEATURES = ("OverallQual", "YearBuilt", "TotalBsmtSF", "GrLivArea")
# Named feature sets: the lab report's four columns, every numeric column (missing values take
# the training median, plus a was-missing indicator), or those plus one-hot categorical columns.
HOUSE_FEATURE_SETS = ("lab-report", "numeric", "all")
# Folds of the train + validation rows that ``dev_fold`` holds out in place of the test split.
DEV_FOLDS = 5


def _read_house_prices(folder: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    path = folder / HOUSE_PRICES_FILE
    if path.exists():
        checksum = verify_checksum(path, HOUSE_PRICES_FILE)
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as error:
            raise HpsearchError(f"cannot read house-price file {path}: {error}") from error
        return frame, {HOUSE_PRICES_FILE: checksum}
    logger.info("%s missing, fetching OpenML data set %d", path, HOUSE_PRICES_OPENML_ID)
    from sklearn.datasets import fetch_openml

    try:
        bunch = fetch_openml(data_id=HOUSE_PRICES_OPENML_ID, as_frame=True, data_home=str(folder))
    except Exception as error:  # any network failure surfaces as one clear line
        raise HpsearchError(
            f"house-price file {path} is missing and OpenML data set {HOUSE_PRICES_OPENML_ID} "
            f"could not be fetched ({error}); point --data-dir or $HPSEARCH_DATA_DIR at a folder "
            f"holding {HOUSE_PRICES_FILE}"
        ) from error
    frame = bunch.frame
    if len(frame) != 1460 or HOUSE_PRICES_TARGET not in frame.columns:
        raise HpsearchError(
            f"OpenML data set {HOUSE_PRICES_OPENML_ID} is not the expected 1,460-row house-price "
            f"table ({len(frame)} rows)"
        )
    return frame, {HOUSE_PRICES_FILE: f"openml:{HOUSE_PRICES_OPENML_ID}"}


def house_feature_pipeline(
    train: pd.DataFrame,
    features: str | Sequence[str] = "lab-report",
    *,
    log_features: bool = False,
    winsorize: float = 0.0,
    clip_inputs: bool = False,
) -> Pipeline:
    """``load_house_prices``' feature pipeline, fitted on the training rows ``train``.

    Raises:
        HpsearchError: unknown feature set, a named feature that is not a numeric column, or
            a ``winsorize`` outside (0, 0.5).
    """
    if isinstance(features, str) and features not in HOUSE_FEATURE_SETS:
        raise HpsearchError(
            f"[data] features: unknown house-price feature set {features!r}; choose from "
            f"{', '.join(HOUSE_FEATURE_SETS)} or give a list of numeric columns"
        )
    if features == "lab-report":
        features = LAB_REPORT_FEATURES
    columns: list[tuple[str, Any, list[str]]]
    if isinstance(features, str):
        inputs = train.drop(columns=["Id", HOUSE_PRICES_TARGET], errors="ignore")
        numeric = list(inputs.select_dtypes(include="number").columns)
        # Was-missing indicators for the columns with gaps in the training rows only.
        gaps = MissingIndicator(features="missing-only", error_on_new=False)
        columns = [("numeric", "passthrough", numeric), ("missing", gaps, numeric)]
        if features == "all":
            # Levels seen in the training rows, sorted, a gap being level "NA"; an unseen
            # level is all zeros.
            levels = make_pipeline(
                SimpleImputer(strategy="constant", fill_value="NA", keep_empty_features=True),
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
            )
            columns.append(("levels", levels, [c for c in inputs.columns if c not in numeric]))
    else:
        missing = [name for name in features if name not in train.columns]
        if missing:
            raise HpsearchError(
                f"[data] features: {', '.join(map(repr, missing))} not a column of "
                f"{HOUSE_PRICES_FILE}; name its numeric columns, or a feature set: "
                f"{', '.join(HOUSE_FEATURE_SETS)}"
            )
        non_numeric = [n for n in features if not pd.api.types.is_numeric_dtype(train[n])]
        if non_numeric:
            raise HpsearchError(
                f"[data] features: {', '.join(map(repr, non_numeric))} of {HOUSE_PRICES_FILE} "
                "not numeric; name numeric columns, or the feature set all (one-hot levels)"
            )
        columns = [("numeric", "passthrough", list(features))]
    steps = [
        ColumnTransformer(columns, verbose_feature_names_out=False),
        SkewedLog1p() if log_features else None,
        Winsorizer(winsorize) if winsorize else None,
        ClipToTrainingRange(clip=True) if clip_inputs else None,
        # Scaled before imputing, so the statistics skip the gaps; the median commutes with
        # the scaling, so the gaps still take the (scaled) training median.
        StandardScaler(),
        SimpleImputer(strategy="median", keep_empty_features=True),
    ]
    return make_pipeline(*(step for step in steps if step is not None)).fit(train)


def load_house_prices(
    data_dir: str | Path | None = None,
    *,
    features: str | Sequence[str] = "lab-report",
    log_target: bool = False,
    max_train_living_area: float | None = None,
    log_features: bool = False,
    clip_inputs: bool = False,
    winsorize: float = 0.0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    dev_fold: int | None = None,
) -> Splits:
    """House prices as ``(N, F)`` float features and a ``(N,)`` normalized SalePrice.

    Rows are split at random (fixed ``seed``) into train / validation / test, fractions of
    the whole table. ``features`` is a named set (``HOUSE_FEATURE_SETS``) or a list of numeric
    columns. Missing feature values take the training median; features and the target are
    standardized with training statistics only. ``log_target`` models log(SalePrice).
    ``max_train_living_area`` drops training rows with more living area (GrLivArea, square
    feet): the data's author advises dropping the few houses over 4,000; validation and test
    rows are never dropped, and the dropped rows are listed in ``rows["train_dropped"]``.
    ``log_features`` replaces each right-skewed non-negative column (training skewness above
    0.75, the usual Ames recipe) by ``log1p`` of it. ``clip_inputs`` clips every validation
    and test feature to the range the training rows span, so a network is never asked to
    extrapolate beyond the houses it was fitted on. ``winsorize`` (a tail fraction, 0 = off)
    clips every row's continuous columns (more than two distinct training values) to the
    training ``winsorize`` and ``1 - winsorize`` quantiles, after ``log_features``, so the few
    extreme houses neither pull the fit nor get extrapolated to. ``dev_fold`` (0 to
    ``DEV_FOLDS - 1``) rehearses the pipeline without the real test rows: see
    ``house_split_rows``.

    Raises:
        HpsearchError: an unknown feature set or column, or a bad ``dev_fold``.
    """
    frame, checksums = _read_house_prices(resolve_data_dir(data_dir))
    train_idx, val_idx, test_idx = house_split_rows(
        len(frame),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        dev_fold=dev_fold,
    )
    return house_prices_from_rows(
        frame,
        train_idx,
        val_idx,
        test_idx,
        features=features,
        log_target=log_target,
        max_train_living_area=max_train_living_area,
        log_features=log_features,
        clip_inputs=clip_inputs,
        winsorize=winsorize,
        checksums=checksums,
    )


def house_split_rows(
    n_rows: int,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    dev_fold: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test row indices of ``load_house_prices``: at random (fixed
    ``seed``), fractions of the whole table, before any training-row filter.

    With ``dev_fold`` k, the seed's real test rows are set aside unread and fold k of
    ``DEV_FOLDS`` (shuffled with ``seed``) of its train + validation rows stands in for test;
    train and validation are cut from the other folds in the same proportions. Running the
    whole pipeline on each dev fold (``benchmarks/house_splits.py --dev``) compares
    pipeline choices on held-out rows without reading the test split they will be judged on.

    Raises:
        HpsearchError: ``dev_fold`` is not in ``range(DEV_FOLDS)``.
    """
    rest_idx, test_idx = train_test_split(
        np.arange(n_rows), test_size=test_fraction, random_state=seed
    )
    if dev_fold is not None:
        if dev_fold not in range(DEV_FOLDS):
            raise HpsearchError(f"dev_fold must be 0 to {DEV_FOLDS - 1}, got {dev_fold}")
        folds = KFold(DEV_FOLDS, shuffle=True, random_state=seed).split(rest_idx)
        keep, held = list(folds)[dev_fold]
        rest_idx, test_idx = rest_idx[keep], rest_idx[held]
    train_idx, val_idx = train_test_split(
        rest_idx, test_size=val_fraction / (1.0 - test_fraction), random_state=seed
    )
    return train_idx, val_idx, test_idx


def house_prices_from_rows(
    frame: pd.DataFrame,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    features: str | Sequence[str] = "lab-report",
    log_target: bool = False,
    max_train_living_area: float | None = None,
    log_features: bool = False,
    clip_inputs: bool = False,
    winsorize: float = 0.0,
    checksums: dict[str, str] | None = None,
) -> Splits:
    """``load_house_prices`` on given rows of the house-price table (for cross-validation
    over the non-test rows in benchmarks); every statistic comes from ``train_idx`` alone."""
    dropped = np.array([], dtype=train_idx.dtype)
    if max_train_living_area is not None:
        too_large = frame["GrLivArea"].to_numpy()[train_idx] > max_train_living_area
        train_idx, dropped = train_idx[~too_large], train_idx[too_large]
    pipeline = house_feature_pipeline(
        frame.iloc[train_idx],
        features,
        log_features=log_features,
        winsorize=winsorize,
        clip_inputs=clip_inputs,
    )
    x_all = torch.from_numpy(pipeline.transform(frame).astype(np.float32))
    y_all = frame[HOUSE_PRICES_TARGET].to_numpy(dtype=np.float64)
    if log_target:
        y_all = np.log(y_all)
    y_mean, y_std = float(y_all[train_idx].mean()), float(y_all[train_idx].std())

    def target_of(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((y_all[idx] - y_mean) / y_std).astype(np.float32))

    return Splits(
        x_train=x_all[train_idx],
        y_train=target_of(train_idx),
        x_val=x_all[val_idx],
        y_val=target_of(val_idx),
        x_test=x_all[test_idx],
        y_test=target_of(test_idx),
        target_mean=y_mean,
        target_std=y_std,
        log_target=log_target,
        checksums=dict(checksums or {}),
        rows={"train": train_idx, "val": val_idx, "test": test_idx, "train_dropped": dropped},
    )


# The lab report's best MLP, for both regressors.
_LAB_REPORT_MLP = {
    **TRAINING_DEFAULTS,
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

register_problem(
    preset(
        TABULAR_REGRESSION,
        name="house-prices",
        description="Ames house prices, MLP regressor",
        load_data=load_house_prices,
        defaults={**_LAB_REPORT_MLP, "loss": "mse"},
    )
)
register_problem(
    preset(
        TABULAR_GAUSSIAN,
        name="house-prices-gaussian",
        description="Ames house prices, Gaussian regressor (mean and log variance)",
        load_data=load_house_prices,
        defaults={**_LAB_REPORT_MLP, "loss": "gaussian_nll"},
    )
)
