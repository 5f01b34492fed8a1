"""The encoding of a user's table, fitted on its training rows and kept as JSON
(``TableEncoder``): what ``load_table`` trains on and ``hpsearch predict`` applies to new rows.
"""

from __future__ import annotations

import mmap
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from hpsearch.errors import HpsearchError
from hpsearch.problems.splits import available_memory


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
        cls, frame: pd.DataFrame, kinds: dict[str, str], rows: np.ndarray | None = None
    ) -> TableEncoder:
        """Fitted on ``frame``'s training ``rows`` (default: all of them)."""
        rows = np.arange(len(frame)) if rows is None else rows
        return cls.fit_transform(frame, kinds, rows, len(rows))[0]

    @classmethod
    def fit_transform(
        cls, frame: pd.DataFrame, kinds: dict[str, str], rows: np.ndarray, n_fit: int
    ) -> tuple[TableEncoder, torch.Tensor]:
        """Fitted on the first ``n_fit`` of ``rows`` (the training rows), and ``frame``'s
        ``rows`` encoded in that order: a table's splits, each a slice of one array, so the
        table is copied once."""
        numeric = tuple(name for name, kind in kinds.items() if kind == "numeric")
        labels = {name: _labels(frame[name]) for name, kind in kinds.items() if kind == "category"}
        fit_rows = rows[:n_fit]
        levels = {
            name: tuple(sorted(column.iloc[fit_rows].unique())) for name, column in labels.items()
        }
        missing = tuple(name for name in numeric if frame[name].isna().to_numpy()[fit_rows].any())
        shape = cls(numeric, (), (), (), missing, levels)  # the statistics come block by block
        needed, free = len(rows) * shape.width * 4, available_memory()
        if free is not None and needed > free:
            raise MemoryError(
                f"its {len(rows):,} rows encode to {shape.width:,} features, {needed / 2**30:.1f}"
                f" GiB, and {free / 2**30:.1f} GiB of memory is free; use fewer rows or columns "
                "(features = [...] or drop = [...] in [data]) or a machine with more memory"
            )
        out = _zeros(len(rows), shape.width)
        statistics: list[tuple[float, float, float]] = []
        for first, block in _numeric_blocks(frame, numeric, rows):
            fitted = _statistics(block[:, :n_fit])
            shape._put_numbers(out, first, block, fitted)
            statistics += fitted
        mean, scale, median = (tuple(s[i] for s in statistics) for i in range(3))
        encoder = cls(numeric, mean, scale, median, missing, levels)
        encoder._put_levels(out, labels, rows)
        return encoder, torch.from_numpy(out)

    @property
    def columns(self) -> list[str]:
        """The input columns it reads."""
        return [*self.numeric, *self.levels]

    @property
    def width(self) -> int:
        """How many features a row encodes to."""
        return len(self.numeric) + len(self.missing) + sum(map(len, self.levels.values()))

    def transform(self, frame: pd.DataFrame) -> torch.Tensor:
        """``frame``'s rows encoded: ``(rows, features)`` float32.

        Raises:
            HpsearchError: a numeric column holds a value that is not a number.
        """
        frame = self._numbers(frame)
        out = _zeros(len(frame), self.width)
        stats = list(zip(self.mean, self.scale, self.median, strict=True))
        for first, block in _numeric_blocks(frame, self.numeric, None):
            self._put_numbers(out, first, block, stats[first : first + len(block)])
        self._put_levels(out, {name: _labels(frame[name]) for name in self.levels}, None)
        return torch.from_numpy(out)

    def _numbers(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with each numeric column of text (a CSV column with a word in it) read as
        numbers, refused where one is not."""
        converted = {}
        for name in self.numeric:
            column = frame[name]
            if is_numeric_dtype(column) or is_bool_dtype(column):
                continue
            numbers = pd.to_numeric(column, errors="coerce")
            wrong = column.notna().to_numpy() & numbers.isna().to_numpy()
            if wrong.any():
                row = int(np.flatnonzero(wrong)[0])
                raise HpsearchError(
                    f"column {name!r} holds {column.iloc[row]!r} (row {row + 1}) where the "
                    f"model takes numbers; {int(wrong.sum())} such value(s) in all"
                )
            converted[name] = numbers
        return frame.assign(**converted) if converted else frame

    def _put_numbers(
        self,
        out: np.ndarray,
        first: int,
        block: np.ndarray,
        stats: Sequence[tuple[float, float, float]],
    ) -> None:
        """Numeric columns ``first`` onwards (raw values, one row of ``block`` each;
        standardized here in place) into ``out``, gaps imputed with the median, and their
        was-missing columns."""
        names = self.numeric[first : first + len(block)]
        for i, name in enumerate(self.missing):
            if name in names:
                out[:, len(self.numeric) + i] = np.isnan(block[names.index(name)])
        # In torch: each step runs on every core.
        mean, scale, median = (torch.tensor(c)[:, None] for c in zip(*stats, strict=True))
        values = torch.from_numpy(block).sub_(mean).div_(scale)
        gaps = values.isnan()  # where training had none too: a new row's gap
        if gaps.any():
            values = torch.where(gaps, median, values)
        torch.from_numpy(out)[:, first : first + len(block)].copy_(values.t())

    def _put_levels(
        self, out: np.ndarray, labels: dict[str, pd.Series], rows: np.ndarray | None
    ) -> None:
        """The one-hot columns of each category column's ``labels`` at ``rows``."""
        start = len(self.numeric) + len(self.missing)
        for name, levels in self.levels.items():
            codes = pd.Index(levels).get_indexer(labels[name])  # an unseen level: -1
            codes = codes if rows is None else codes[rows]
            seen = codes >= 0  # an unseen level: all zeros
            out[np.flatnonzero(seen), start + codes[seen]] = 1.0
            start += len(levels)

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


def _zeros(rows: int, width: int) -> np.ndarray:
    """A zeroed float32 ``(rows, width)`` array; a large one has its pages mapped in one
    call (``MAP_POPULATE``), which on a virtual machine costs a fraction of faulting them in
    one at a time while the table is written."""
    nbytes = rows * width * 4
    if nbytes < 1 << 26 or not hasattr(mmap, "MAP_POPULATE"):  # small, or not Linux
        return np.zeros((rows, width), dtype=np.float32)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), np.float32).reshape(rows, width)


# Numeric columns are gathered, fitted and scaled this many at a time, in one reused buffer:
# a large table's float copy would cost more in fresh memory than in arithmetic.
_BLOCK = 8


def _numeric_blocks(
    frame: pd.DataFrame, names: Sequence[str], rows: np.ndarray | None
) -> Iterator[tuple[int, np.ndarray]]:
    """The numeric (and boolean) columns ``names`` at ``rows``, ``_BLOCK`` at a time: the
    index in ``names`` of a block's first column and a ``(columns, rows)`` float32 block of
    their values (gaps NaN), each column
    gathered alone from pandas' own array so that the statistics and the scaling run along
    contiguous memory; one transposing copy per block then writes the rows."""
    n = len(frame) if rows is None else len(rows)
    buffer = np.empty((min(_BLOCK, len(names)), n), dtype=np.float32)
    for start in range(0, len(names), _BLOCK):
        part = names[start : start + _BLOCK]
        block = buffer[: len(part)]
        for j, name in enumerate(part):
            values = frame[name].to_numpy(dtype=np.float32, na_value=np.nan)
            if rows is None:
                block[j] = values
            else:
                np.take(values, rows, out=block[j], mode="clip")  # rows are in range
        yield start, block


def _statistics(columns: np.ndarray) -> list[tuple[float, float, float]]:
    """Each of the ``(k, rows)`` columns' mean, deviation (1 where constant) and median (of
    the standardized values; the lower of the middle two for an even count), gaps left out.
    torch's reductions run on every core with float64 accumulators, several times numpy's
    speed on a large table."""
    t = torch.from_numpy(columns)
    var_t, mean_t = torch.var_mean(t, dim=1, correction=0)  # NaN in a column with gaps
    mean, std = mean_t.double().numpy(), var_t.double().sqrt().numpy()
    median = torch.nanmedian(t, dim=1).values.double().numpy()
    gappy = np.flatnonzero(np.isnan(mean))
    if len(gappy):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column all gaps in training
            part = columns[gappy]
            mean[gappy] = np.nan_to_num(np.nanmean(part, axis=1, dtype=np.float64))
            std[gappy] = np.nan_to_num(np.nanstd(part, axis=1, dtype=np.float64))
        median = np.nan_to_num(median)
    scale = np.where(std > 0, std, 1.0)
    standardized = (median - mean) / scale  # the median commutes with the scaling
    return list(zip(mean.tolist(), scale.tolist(), standardized.tolist(), strict=True))


def _labels(column: pd.Series) -> pd.Series:
    """A category column's values as strings, a gap as level "NA"."""
    return column.astype(str).where(column.notna(), "NA")
