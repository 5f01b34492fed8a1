"""The encoding of a user's table, fitted on its training rows and kept as JSON
(``TableEncoder``): what ``load_table`` trains on and ``hpsearch predict`` applies to new rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class TableEncoder:
    """The feature encoding, fitted on the training rows: numeric (and boolean) columns
    standardized, a gap taking the training median plus a was-missing column for each column
    with gaps in training; category and string columns one-hot with the training levels (a
    gap is level "NA", an unseen level all zeros).

    Hand-written, not a scikit-learn ColumnTransformer: its state is a few lists that
    ``finalize.json`` holds and ``hpsearch predict`` reads, where a fitted scikit-learn
    pipeline saves only as a pickle (code run on load).
    """

    numeric: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    median: tuple[float, ...]  # of the standardized training values
    missing: tuple[str, ...]  # numeric columns with gaps in the training rows
    levels: dict[str, tuple[str, ...]]  # category column -> its sorted training levels

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        kinds: dict[str, str],
        rows: np.ndarray | None = None,
        numbers: np.ndarray | None = None,
    ) -> TableEncoder:
        """Fitted on ``frame``'s training ``rows`` (default: all of them); ``numbers``, its
        numeric columns as ``numeric_array`` reads them, where the caller has them already."""
        numeric = tuple(name for name, kind in kinds.items() if kind == "numeric")
        values = numeric_array(frame, numeric) if numbers is None else numbers
        if rows is not None:
            values = values[rows]
        has_gaps = np.isnan(values).any(axis=0)
        mean, std, median = (np.zeros(values.shape[1]) for _ in range(3))
        full = ~has_gaps  # the NaN-aware statistics copy the array: only where gaps are
        mean[full] = values[:, full].mean(axis=0, dtype=np.float64)
        std[full] = values[:, full].std(axis=0, dtype=np.float64)
        median[full] = np.median(values[:, full], axis=0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column all gaps in training
            gappy = values[:, has_gaps]
            mean[has_gaps] = np.nan_to_num(np.nanmean(gappy, axis=0, dtype=np.float64))
            std[has_gaps] = np.nan_to_num(np.nanstd(gappy, axis=0, dtype=np.float64))
            median[has_gaps] = np.nan_to_num(np.nanmedian(gappy, axis=0))
        scale = np.where(std > 0, std, 1.0)
        median = (median - mean) / scale  # the median commutes with the scaling
        gaps = np.asarray(has_gaps).tolist()
        levels = {}
        for name, kind in kinds.items():
            if kind == "category":
                column = _labels(frame[name])
                levels[name] = tuple(sorted((column if rows is None else column[rows]).unique()))
        return cls(
            numeric,
            tuple(mean.tolist()),
            tuple(scale.tolist()),
            tuple(median.tolist()),
            tuple(name for name, gap in zip(numeric, gaps, strict=True) if gap),
            levels,
        )

    @property
    def columns(self) -> list[str]:
        """The input columns it reads."""
        return [*self.numeric, *self.levels]

    @property
    def width(self) -> int:
        """How many features a row encodes to."""
        return len(self.numeric) + len(self.missing) + sum(map(len, self.levels.values()))

    def transform(self, frame: pd.DataFrame, numbers: np.ndarray | None = None) -> torch.Tensor:
        """``frame``'s rows encoded: ``(rows, features)`` float32 (``numbers``: as ``fit``)."""
        n, width = len(frame), len(self.numeric)
        out = np.zeros((n, self.width), dtype=np.float32)
        if numbers is None:
            numbers = out[:, :width]  # a view: filled in place, no copy of the whole table
            numbers[:] = numeric_array(frame, self.numeric)
        else:
            out[:, :width] = numbers
            numbers = out[:, :width]
        gaps = np.isnan(numbers)
        numbers -= np.array(self.mean, dtype=np.float32)
        numbers /= np.array(self.scale, dtype=np.float32)
        np.copyto(
            numbers, np.broadcast_to(np.array(self.median, np.float32), numbers.shape), where=gaps
        )
        index = {name: k for k, name in enumerate(self.numeric)}
        for name in self.missing:
            out[:, width] = gaps[:, index[name]]
            width += 1
        for name, levels in self.levels.items():
            labels = _labels(frame[name])
            known = labels.where(labels.isin(levels))  # an unseen level: a gap, code -1
            codes = pd.Categorical(known, categories=levels).codes
            seen = codes >= 0  # an unseen level: all zeros
            out[np.flatnonzero(seen), width + codes[seen]] = 1.0
            width += len(levels)
        return torch.from_numpy(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "median": list(self.median),
            "missing": list(self.missing),
            "levels": {name: list(levels) for name, levels in self.levels.items()},
        }

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> TableEncoder:
        return cls(
            tuple(state["numeric"]),
            tuple(state["mean"]),
            tuple(state["scale"]),
            tuple(state["median"]),
            tuple(state["missing"]),
            {name: tuple(levels) for name, levels in state["levels"].items()},
        )


def numeric_array(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """The numeric (and boolean) columns as one float32 array, gaps as NaN."""
    if not columns:
        return np.zeros((len(frame), 0), dtype=np.float32)
    return frame[list(columns)].to_numpy(dtype=np.float32, na_value=np.nan)


def _labels(column: pd.Series) -> pd.Series:
    """A category column's values as strings, a gap as level "NA"."""
    return column.astype(str).where(column.notna(), "NA")
