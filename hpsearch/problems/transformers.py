"""scikit-learn transformers of the house-price features that scikit-learn does not ship."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.preprocessing import MinMaxScaler

from hpsearch.errors import HpsearchError


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
