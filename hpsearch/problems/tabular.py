"""Users' own tables: a CSV, Parquet or ``.npz`` file read, checked, split and encoded with
training-row statistics (``table_encoder.TableEncoder``), and the three tabular tasks that
search them (``tabular-regression``, ``tabular-gaussian``, ``tabular-classification``), each a
registry entry."""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from hpsearch.errors import HpsearchError
from hpsearch.problems import baselines, metrics
from hpsearch.problems.registry import (
    GAUSSIAN_CALIBRATION,
    TRAINING_DEFAULTS,
    Problem,
    register_problem,
)
from hpsearch.problems.splits import Splits, available_memory, sha256sum
from hpsearch.problems.table_encoder import TableEncoder
from hpsearch.training import (
    CLASSIFICATION_LOSSES,
    GAUSSIAN_LOSSES,
    GROUP_PARAMS,
    REGRESSION_LOSSES,
    models,
)

logger = logging.getLogger(__name__)

Kind = Literal["regression", "classification"]
TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".npz")
# A string column with more distinct values than this share of its rows (and more than
# ``_MIN_TEXT_LEVELS``) reads as free text or an identifier, not a category.
_TEXT_SHARE, _MIN_TEXT_LEVELS = 0.5, 20
# A numeric target with at most this many distinct whole values reads as class labels.
MAX_CLASS_LEVELS = 20
# Fewer rows than these leave a split (and its score) meaningless: refused, not run.
MIN_ROWS, MIN_SPLIT_ROWS = 10, 2


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV, Parquet or ``.npz`` file (arrays ``x`` (N, F) and, to train on, ``y`` (N,):
    columns ``x0``.. and ``y``) as a DataFrame.

    Raises:
        HpsearchError: a missing or unreadable file, one larger than the free memory, an
            unknown suffix, Parquet without its reader, or an ``.npz`` without finite ``x``
            and ``y`` of matching rows.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise HpsearchError(f"data file {path} does not exist")
    size, free = path.stat().st_size, available_memory()
    if free is not None and size > free:  # its rows in memory take at least its bytes
        raise HpsearchError(
            f"{path}: {size / 2**30:.1f} GiB and {free / 2**30:.1f} GiB of memory is free; a "
            "table is read into memory whole: use fewer rows or a machine with more memory"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _csv_frame(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".npz":
            return _npz_frame(path)
    except ImportError as error:
        raise HpsearchError(
            f"{path}: reading Parquet needs pyarrow: pip install 'hpsearch[parquet]' ({error})"
        ) from None
    except HpsearchError:
        raise
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise HpsearchError(
            f"cannot read data file {path}: it is not UTF-8 text (byte {byte:#x} at "
            f"{error.start:,}); save it as UTF-8 (it may be Latin-1 or Windows-1252)"
        ) from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise HpsearchError(f"cannot read data file {path}: {error}") from None
    raise HpsearchError(
        f"{path}: unknown kind of data file; give one of {', '.join(TABLE_SUFFIXES)}"
    )


def _csv_frame(path: Path) -> pd.DataFrame:
    """A comma-separated UTF-8 file, refused where its header repeats a name (pandas would
    rename the second ``age.1``) or where it reads as one column of another separator's."""
    frame = pd.read_csv(path)
    with path.open(encoding="utf-8", newline="") as file:
        header = next(csv.reader(file), [])
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise HpsearchError(
            f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the "
            "header; give each column its own name"
        )
    if len(frame.columns) == 1:
        name = str(frame.columns[0])
        other = next((sep for sep in (";", "\t", "|") if sep in name), None)
        if other is not None:
            raise HpsearchError(
                f"{path}: one column, {name[:40]!r}: its values look separated by "
                f"{other!r}, and hpsearch reads comma-separated files; save it with commas"
            )
    return frame


def _npz_frame(path: Path) -> pd.DataFrame:
    with np.load(path, allow_pickle=False) as arrays:
        if "x" not in arrays:
            raise HpsearchError(f"{path}: no array x (it holds x and, to train on, y)")
        x, y = arrays["x"], arrays["y"] if "y" in arrays else None
    if x.ndim != 2 or (y is not None and (y.ndim != 1 or len(x) != len(y))):
        shapes = f"{x.shape} and {None if y is None else y.shape}"
        raise HpsearchError(f"{path}: x must be (rows, features) and y (rows,), got {shapes}")
    for name, array in (("x", x), ("y", y)):
        if array is not None and array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise HpsearchError(f"{path}: {name} holds {bad} NaN or infinite values")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    if y is not None:
        frame["y"] = y
    return frame


def guess_kind(target: pd.Series) -> Kind:
    """Regression for a target of many distinct numbers, else classification."""
    values = target.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "classification"
    whole = bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
    return "classification" if whole and values.nunique() <= MAX_CLASS_LEVELS else "regression"


def _columns(
    frame: pd.DataFrame,
    source: Path,
    target: str,
    features: Sequence[str] | None,
    drop: Sequence[str],
) -> list[str]:
    """The feature columns: ``features``, else every column but the target and ``drop``."""
    named = [*(features or ()), *drop]
    unknown = [name for name in [target, *named] if name not in frame.columns]
    if unknown:
        raise HpsearchError(
            f"{source}: no column {', '.join(map(repr, unknown))}; it has "
            f"{', '.join(map(str, frame.columns[:20]))}{' ...' if len(frame.columns) > 20 else ''}"
        )
    if features is not None:
        columns = [name for name in features if name != target]
    else:
        columns = [name for name in frame.columns if name != target and name not in drop]
    if not columns:
        raise HpsearchError(f"{source}: no feature column left beside the target {target!r}")
    return columns


def _check_column(frame: pd.DataFrame, name: str, source: Path) -> str:
    """The column's kind ("numeric" or "category"), or the refusal of a date or text one."""
    column = frame[name]
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        if column.isna().all():
            raise HpsearchError(f"{source}: column {name!r} has no values; drop it")
        return "numeric"
    dates = HpsearchError(
        f"{source}: column {name!r} holds dates; drop it (drop = [{name!r}]) or turn it into "
        "numbers (a year, a day count) first"
    )
    if pd.api.types.is_datetime64_any_dtype(column):
        raise dates
    values = column.dropna().astype(str)
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().mean() >= 0.9:  # numbers, but for a few words: say which
        words = values[numbers.isna()]
        raise HpsearchError(
            f"{source}: column {name!r} holds numbers but for {len(words):,} "
            f"{'value' if len(words) == 1 else 'values'} such as {words.iloc[0]!r}; fix or "
            f"blank them, or drop the column (drop = [{name!r}])"
        )
    sample = values.head(200)
    if len(sample) and sample.str.contains(r"\d").all():
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
        if parsed.notna().mean() > 0.9:
            raise dates
    levels = values.nunique()
    if levels > _MIN_TEXT_LEVELS and levels > _TEXT_SHARE * len(values):
        raise HpsearchError(
            f"{source}: column {name!r} looks like free text or an identifier ({levels:,} "
            f"distinct values in {len(values):,} rows); drop it (drop = [{name!r}]) or encode "
            "it yourself"
        )
    return "category"


def load_table(
    kind: Kind,
    data_dir: str | Path | None = None,
    *,
    path: str,
    target: str,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    test: float | str = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """The table at ``path`` as ``(N, F)`` encoded features and its ``target``: a normalized
    float for regression, class indices (``Splits.classes``, sorted) for classification.

    Rows without a target are left out (a warning says how many). ``test`` is a fraction of
    the rows held out at random (``seed``), or a file of the same columns; ``val_fraction``
    (of all rows) is cut from the rest. Classification splits are stratified. ``data_dir``
    (``--data-dir``, the shipped data sets' folder) is not used: ``path`` names the file.

    Raises:
        HpsearchError: a bad file, column, target, class or split, naming the file.
    """
    source = Path(path).expanduser()
    with ThreadPoolExecutor(1) as pool:  # the checksum while pandas parses (no GIL held)
        checksum = pool.submit(sha256sum, source) if source.is_file() else None
        frame = read_table(source)
        checksums = {str(source): checksum.result() if checksum else ""}
    columns = _columns(frame, source, target, features, drop)
    labelled = frame[target].notna()
    if not labelled.any():
        raise HpsearchError(f"{source}: target column {target!r} has no values")
    if not labelled.all():
        logger.warning("%s: %d rows without a target left out", source, int((~labelled).sum()))
        frame = frame[labelled].reset_index(drop=True)
    if len(frame) < MIN_ROWS:
        raise HpsearchError(
            f"{source}: {len(frame)} {'row' if len(frame) == 1 else 'rows'} with a target; a "
            f"table needs at least {MIN_ROWS} to split into training, validation and test rows"
        )
    if kind == "regression" and not pd.api.types.is_numeric_dtype(frame[target]):
        raise HpsearchError(
            f"{source}: target {target!r} is not numeric; a regression needs numbers "
            "(a classification task takes labels)"
        )
    test_frame = None
    if isinstance(test, str):
        test_path = Path(test).expanduser()
        test_frame = read_table(test_path)
        _columns(test_frame, test_path, target, columns, ())
        test_frame = test_frame[test_frame[target].notna()].reset_index(drop=True)
        checksums[str(test_path)] = sha256sum(test_path)
    elif not 0.0 < test < 1.0:
        raise HpsearchError(f"{source}: test must be a fraction in (0, 1) or a file, got {test}")
    if not 0.0 < val_fraction < 1.0 - (0.0 if isinstance(test, str) else test):
        raise HpsearchError(f"{source}: val_fraction {val_fraction} leaves no training rows")
    kinds = {name: _check_column(frame, name, source) for name in columns}

    classes: tuple[str, ...] = ()
    if kind == "classification":
        labels = frame[target].astype(str)
        classes = tuple(sorted(labels.unique()))
        if len(classes) < 2:
            raise HpsearchError(f"{source}: target {target!r} has one class, {classes[0]!r}")
        counts = labels.value_counts()
        needed = 2 if test_frame is not None else 3
        few = counts[counts < needed]
        if len(few):
            raise HpsearchError(
                f"{source}: class {few.index[0]!r} of {target!r} has {int(few.iloc[0])} rows; "
                f"each class needs at least {needed} to appear in every split"
            )
    stratify = frame[target].astype(str).to_numpy() if classes else None
    rows = np.arange(len(frame))
    try:
        if test_frame is None:
            assert not isinstance(test, str)
            rest, test_rows = train_test_split(
                rows, test_size=test, random_state=seed, stratify=stratify
            )
            val_share = val_fraction / (1.0 - test)
        else:
            rest, test_rows, val_share = rows, np.array([], dtype=int), val_fraction
        train_rows, val_rows = train_test_split(
            rest,
            test_size=val_share,
            random_state=seed,
            stratify=None if stratify is None else stratify[rest],
        )
    except ValueError as error:  # too few rows for the fractions, or for stratification
        raise HpsearchError(f"{source}: cannot split {len(frame):,} rows: {error}") from None
    sizes = {"training": len(train_rows), "validation": len(val_rows)}
    if test_frame is None:
        sizes["test"] = len(test_rows)
    if min(sizes.values()) < MIN_SPLIT_ROWS:
        shown = ", ".join(f"{n} {split}" for split, n in sizes.items())
        raise HpsearchError(
            f"{source}: {len(frame):,} rows split into {shown} rows; each split needs at least "
            f"{MIN_SPLIT_ROWS} (more rows, or larger test and val_fraction)"
        )
    # Each split's rows in table order (reading memory in order is faster; training shuffles
    # anyway), encoded split after split, so each split is a slice of one array.
    train_rows, val_rows, test_rows = (np.sort(r) for r in (train_rows, val_rows, test_rows))
    order = np.concatenate([train_rows, val_rows, test_rows])
    try:
        encoder, encoded = TableEncoder.fit_transform(frame, kinds, order, len(train_rows))
    except MemoryError as error:  # ours (it would not fit), or numpy's (it did not)
        raise HpsearchError(f"{source}: too large to encode in memory: {error}") from None
    x_train, x_val, x_test = torch.split(encoded, [len(train_rows), len(val_rows), len(test_rows)])
    if test_frame is not None:
        x_test = encoder.transform(test_frame)

    def targets(column: pd.Series) -> torch.Tensor:
        if classes:
            index = {name: i for i, name in enumerate(classes)}
            labels = column.astype(str)
            unknown = sorted(set(labels) - set(index))
            if unknown:
                raise HpsearchError(f"{source}: test rows hold unknown classes {unknown[:5]}")
            return torch.tensor(labels.map(index).to_numpy(), dtype=torch.int64)
        return torch.tensor(column.to_numpy(dtype=np.float64))

    column = frame[target]
    test_column = column.iloc[test_rows] if test_frame is None else test_frame[target]
    y_train, y_val, y_test = map(
        targets, (column.iloc[train_rows], column.iloc[val_rows], test_column)
    )
    mean, std = 0.0, 1.0
    if not classes:
        mean, std = float(y_train.mean()), float(y_train.std())
        std = std if std > 0 else 1.0
        y_train, y_val, y_test = ((y - mean) / std for y in (y_train, y_val, y_test))
        y_train, y_val, y_test = (y.float() for y in (y_train, y_val, y_test))
    return Splits(
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        target_mean=mean,
        target_std=std,
        checksums=checksums,
        rows={"train": train_rows, "val": val_rows, "test": test_rows},
        classes=classes,
        # What predictions on new rows need (finalize.json): the encoding and the target.
        preprocess={"table": encoder.to_json(), "target": target, "classes": list(classes)},
    )


# The tasks' loaders: the study-file check reads their keyword options (path, target, ...).
load_regression_table = functools.partial(load_table, "regression")
load_classification_table = functools.partial(load_table, "classification")


# An MLP's defaults for a table of unknown size: the house-price space's middle.
_MLP_DEFAULTS = {
    **TRAINING_DEFAULTS,
    "n_hidden_layers": 2,
    "hidden_units": 64,
    "activation": "relu",
    "dropout": 0.0,
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_schedule": "none",
    "batch_size": 64,
    "epochs": 100,
}
_MLP_GROUP = models.MLP_GROUP_PARAMS | GROUP_PARAMS

TABULAR_REGRESSION = register_problem(
    Problem(
        name="tabular-regression",
        task="tabular-regression",
        description="your table, an MLP regressor",
        load_data=load_regression_table,
        build_model=models.build_mlp_regressor,
        model_hyperparameters=models.MLP_HYPERPARAMETERS,
        per_layer=models.MLP_PER_LAYER,
        group_params=_MLP_GROUP,
        losses=REGRESSION_LOSSES,
        evaluate=metrics.regression_metrics,
        test_metrics=metrics.regression_test_metrics,
        metrics={"val_rmse": "minimize", "val_mse": "minimize", "val_mae": "minimize"},
        defaults={**_MLP_DEFAULTS, "loss": "mse"},
        baselines=(baselines.ridge, baselines.gradient_boosting),
    )
)
TABULAR_GAUSSIAN = register_problem(
    Problem(
        name="tabular-gaussian",
        task="tabular-gaussian",
        description="your table, a Gaussian regressor (mean and log variance)",
        load_data=load_regression_table,
        build_model=models.build_gaussian_regressor,
        model_hyperparameters=models.MLP_HYPERPARAMETERS,
        per_layer=models.MLP_PER_LAYER,
        group_params=_MLP_GROUP,
        losses=GAUSSIAN_LOSSES,
        evaluate=metrics.gaussian_metrics,
        test_metrics=metrics.gaussian_test_metrics,
        metrics={
            "val_nll": "minimize",
            "val_rmse": "minimize",
            "val_mse": "minimize",
            "val_mae": "minimize",
        },
        defaults={**_MLP_DEFAULTS, "loss": "gaussian_nll"},
        baselines=(baselines.ridge, baselines.gradient_boosting),
        combine=models.gaussian_mixture,
        calibration=GAUSSIAN_CALIBRATION,
    )
)
TABULAR_CLASSIFICATION = register_problem(
    Problem(
        name="tabular-classification",
        task="tabular-classification",
        description="your table, an MLP classifier",
        load_data=load_classification_table,
        build_model=models.build_mlp_classifier,
        model_hyperparameters=models.MLP_HYPERPARAMETERS,
        per_layer=models.MLP_PER_LAYER,
        group_params=_MLP_GROUP,
        losses=CLASSIFICATION_LOSSES,
        evaluate=metrics.classification_metrics,
        test_metrics=metrics.classification_test_metrics,
        metrics={"val_accuracy": "maximize", "val_cross_entropy": "minimize"},
        defaults={**_MLP_DEFAULTS, "loss": "cross_entropy"},
        baselines=(baselines.logistic_regression, baselines.gradient_boosting_classifier),
    )
)
