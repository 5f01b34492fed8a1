"""Data sets as tensors: checksummed loading, fixed-seed splits, normalization.

Both data sets are small enough to live whole on the training device; the training loop
slices batches out of these tensors instead of running a per-sample ``DataLoader``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.model_selection import KFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

from hpsearch.errors import HpsearchError

logger = logging.getLogger(__name__)

PACKAGED_DATA_DIR = Path(__file__).parent / "datasets"

USPS_FILES = {"train": "usps/usps.bz2", "test": "usps/usps.t.bz2"}
HOUSE_PRICES_FILE = "house_prices/train.csv"
HOUSE_PRICES_OPENML_ID = 42165
HOUSE_PRICES_TARGET = "SalePrice"
LAB_REPORT_FEATURES = ("OverallQual", "YearBuilt", "TotalBsmtSF", "GrLivArea")
# Named feature sets: the lab report's four columns, every numeric column (missing values take
# the training median, plus a was-missing indicator), or those plus one-hot categorical columns.
HOUSE_FEATURE_SETS = ("lab-report", "numeric", "all")
# Folds of the train + validation rows that ``dev_fold`` holds out in place of the test split.
DEV_FOLDS = 5

# Checksums of the copies shipped with hpsearch, plus those of torchvision's own USPS
# download (the shipped files were rebuilt from a float copy, so their bytes differ).
KNOWN_MD5 = {
    "usps/usps.bz2": {"41b2f6074f119ec27691da95e416ada0", "ec16c51db3855ca6c91edd34d0e9b197"},
    "usps/usps.t.bz2": {"13305b45f3ecdd497292913b6671a378", "8ea070ee2aca1ac39742fdd1ef5ed118"},
    "house_prices/train.csv": {"80ccab65fb115cbad143dbbd2bcd5577"},
}


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors of one problem, already normalized.

    ``x_test``/``y_test`` are the held-out split: the search never reads them.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    # Scale of the regression target, to turn normalized errors back into dollars; with
    # ``log_target`` the normalized target is log(price).
    target_mean: float = 0.0
    target_std: float = 1.0
    log_target: bool = False
    checksums: dict[str, str] = field(default_factory=dict)
    # Source rows of each split ("train", "val", "test"), for audits and tests.
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Splits:
        """Return a copy with every tensor moved to ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        return replace(self, **moved)

    def to_dollars(self, normalized: torch.Tensor) -> torch.Tensor:
        """Normalized regression targets or predictions -> prices (float64)."""
        value = normalized.double() * self.target_std + self.target_mean
        return torch.exp(value) if self.log_target else value


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: the argument, else the packaged copy."""
    return Path(data_dir or PACKAGED_DATA_DIR).expanduser()


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, relative: str) -> str:
    """Check ``path`` against the known checksums of ``relative``; return its md5.

    Raises:
        HpsearchError: the file's checksum matches no known copy.
    """
    checksum = md5sum(path)
    if checksum not in KNOWN_MD5[relative]:
        raise HpsearchError(
            f"corrupt data file {path}: md5 {checksum} matches no known copy of {relative}"
        )
    return checksum


def _usps_file(data_dir: Path, split: str) -> Path:
    relative = USPS_FILES[split]
    path = data_dir / relative
    if path.exists():
        return path
    logger.info("%s missing, downloading USPS with torchvision", path)
    import torchvision

    try:
        torchvision.datasets.USPS(str(path.parent), train=split == "train", download=True)
    except Exception as error:  # any network failure surfaces as one clear line
        raise HpsearchError(
            f"USPS file {path} is missing and could not be downloaded ({error}); "
            f"point --data-dir or $HPSEARCH_DATA_DIR at a folder holding {relative}"
        ) from error
    return path


def cache_dir() -> Path:
    """Where decoded data sets are kept between runs: ``$XDG_CACHE_HOME/hpsearch``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpsearch"


@lru_cache(maxsize=4)
def _read_usps(path: str, checksum: str) -> tuple[np.ndarray, np.ndarray]:
    """One USPS file's images and labels. Decoding its bz2 text takes seconds, which every
    worker process of every run would repeat, so the arrays are kept in ``cache_dir()``
    under the file's (verified) md5."""
    cached = cache_dir() / f"usps-{checksum}.npz"
    try:
        with np.load(cached) as saved:
            return saved["images"], saved["labels"]
    except (OSError, ValueError, KeyError):  # not there yet, or damaged: decode again
        pass
    import torchvision

    folder, name = os.path.split(path)
    dataset = torchvision.datasets.USPS(folder, train=name == "usps.bz2")
    images, labels = dataset.data, np.asarray(dataset.targets, dtype=np.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as tmp:
            np.savez(tmp, images=images, labels=labels)
        os.replace(tmp_name, cached)  # whole or not at all: workers may read it at once
    except OSError as error:  # a read-only home: decode every time
        logger.debug("not caching %s: %s", cached, error)
    return images, labels


def load_usps(
    data_dir: str | Path | None = None, *, val_fraction: float = 0.2, seed: int = 0
) -> Splits:
    """USPS digits as ``(N, 1, 16, 16)`` float tensors and int64 labels.

    The official 7,291-image training file is split, stratified, into train and validation;
    the official 2,007-image test file is the held-out test split. Pixels are standardized
    with the training split's mean and standard deviation.
    """
    folder = resolve_data_dir(data_dir)
    checksums: dict[str, str] = {}
    arrays = {}
    for split, relative in USPS_FILES.items():
        path = _usps_file(folder, split)
        checksums[relative] = verify_checksum(path, relative)
        try:
            arrays[split] = _read_usps(str(path), checksums[relative])
        except (OSError, ValueError, EOFError) as error:
            raise HpsearchError(f"cannot read USPS file {path}: {error}") from error
    images, labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, random_state=seed, stratify=labels
    )
    train_pixels = images[train_idx].astype(np.float32) / 255.0
    mean, std = float(train_pixels.mean()), float(train_pixels.std())

    def to_tensor(pixels: np.ndarray) -> torch.Tensor:
        scaled = (pixels.astype(np.float32) / 255.0 - mean) / std
        return torch.from_numpy(scaled).unsqueeze(1)  # (N, 1, 16, 16)

    return Splits(
        x_train=to_tensor(images[train_idx]),
        y_train=torch.from_numpy(labels[train_idx]),
        x_val=to_tensor(images[val_idx]),
        y_val=torch.from_numpy(labels[val_idx]),
        x_test=to_tensor(test_images),
        y_test=torch.from_numpy(test_labels),
        checksums=checksums,
        # USPS train/val rows index the official training file, test rows the test file.
        rows={"train": train_idx, "val": val_idx, "test": np.arange(len(test_labels))},
    )


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


# Hand-written: scikit-learn has no skewness-selected log (PowerTransformer fits another map).
class SkewedLog1p(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """``log1p`` of each column whose training values are non-negative and right-skewed
    (sample skewness above ``threshold``); other columns, and NaNs, are left as they are."""

    def __init__(self, threshold: float = 0.75) -> None:
        self.threshold = threshold

    def fit(self, x: ArrayLike, y: object = None) -> SkewedLog1p:
        x = np.asarray(x, dtype=np.float64)
        mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            skew = np.nanmean((x - mean) ** 3, axis=0) / std**3
        self.skewed_ = (np.nanmin(x, axis=0) >= 0) & (std > 0) & (skew > self.threshold)
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x: ArrayLike) -> np.ndarray:
        out = np.array(x, dtype=np.float64)
        out[:, self.skewed_] = np.log1p(np.clip(out[:, self.skewed_], 0, None))
        return out


# Hand-written: scikit-learn has no quantile clipping (QuantileTransformer remaps all values).
class Winsorizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Each continuous column (more than two distinct training values, so not indicators or
    one-hot columns) clipped to its training ``tail`` / ``1 - tail`` quantiles, unless these
    coincide (mostly zeros: pool area, say) and it would turn constant; NaNs stay NaN.

    Raises:
        HpsearchError: at fit, ``tail`` is not in (0, 0.5).
    """

    def __init__(self, tail: float = 0.01) -> None:
        self.tail = tail

    def fit(self, x: ArrayLike, y: object = None) -> Winsorizer:
        if not 0.0 < self.tail < 0.5:
            raise HpsearchError(f"winsorize must be a tail fraction in (0, 0.5), got {self.tail}")
        x = np.asarray(x, dtype=np.float64)
        continuous = np.array([np.unique(c[~np.isnan(c)]).size > 2 for c in x.T], dtype=bool)
        low, high = np.nanquantile(x[:, continuous], [self.tail, 1.0 - self.tail], axis=0)
        spread = low < high
        self.columns_ = np.flatnonzero(continuous)[spread]
        self.low_, self.high_ = low[spread], high[spread]
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x: ArrayLike) -> np.ndarray:
        out = np.array(x, dtype=np.float64)
        out[:, self.columns_] = np.clip(out[:, self.columns_], self.low_, self.high_)
        return out


class ClipToTrainingRange(MinMaxScaler):
    """Clips to the training range; the standardization that follows undoes the affine map."""

    def fit(self, x: ArrayLike, y: object = None) -> ClipToTrainingRange:
        super().fit(x, y)
        # MinMaxScaler would send a column constant in training to x - c clipped to [0, 1];
        # clipping to its one training value sends every row to 0.
        constant = self.data_range_ == 0
        self.scale_[constant] = self.min_[constant] = 0.0
        return self


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
            f"unknown house-price feature set {features!r}; choose from "
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
            raise HpsearchError(f"unknown house-price feature(s): {', '.join(missing)}")
        non_numeric = [n for n in features if not pd.api.types.is_numeric_dtype(train[n])]
        if non_numeric:
            raise HpsearchError(f"non-numeric house-price feature(s): {', '.join(non_numeric)}")
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
