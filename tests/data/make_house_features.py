"""Write ``house_features.npz``: reference house-price features for
``tests/problems/test_house_prices.py``.

It was run once on the hand-written feature code, before ``hpsearch/data.py`` moved to
scikit-learn transformers, so the test proves the rewrite gives the same numbers. Do not
re-run it to refresh the fixture unless the features change on purpose.

    python tests/data/make_house_features.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.problems import house_prices as data

# The shipped study files' [data] tables, plus the plain feature sets.
OPTIONS: dict[str, dict[str, Any]] = {
    "house_prices": {
        "features": "all",
        "log_target": True,
        "log_features": True,
        "clip_inputs": True,
        "winsorize": 0.01,
    },
    "gaussian": {"features": "all", "log_target": True, "log_features": True, "clip_inputs": True},
    "lab_report_list": {"features": ["OverallQual", "YearBuilt", "TotalBsmtSF", "GrLivArea"]},
    "numeric": {"features": "numeric"},
    "default": {},
}
SPLITS = ("train", "val", "test")
SAMPLE_ROWS = 10
FIXTURE = Path(__file__).with_name("house_features.npz")


def sample_positions(n: int) -> np.ndarray:
    """Evenly spread positions within a split, first and last included."""
    return np.unique(np.linspace(0, n - 1, SAMPLE_ROWS).round().astype(np.int64))


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, options in OPTIONS.items():
        splits = data.load_house_prices(None, **options)
        arrays[f"{name}/target"] = np.array([splits.target_mean, splits.target_std])
        for split in SPLITS:
            x = getattr(splits, f"x_{split}").numpy().astype(np.float64)
            y = getattr(splits, f"y_{split}").numpy()
            at = sample_positions(len(x))
            arrays[f"{name}/{split}/rows"] = splits.rows[split]
            arrays[f"{name}/{split}/sum"] = x.sum(axis=0)
            arrays[f"{name}/{split}/sumsq"] = (x**2).sum(axis=0)
            arrays[f"{name}/{split}/at"] = at
            arrays[f"{name}/{split}/x_sample"] = x[at].astype(np.float32)
            arrays[f"{name}/{split}/y"] = y
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
