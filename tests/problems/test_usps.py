"""The USPS data (hpsearch.problems.usps): official files, a fixed stratified split, the
decoded-array cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hpsearch.problems.usps import _read_usps, load_usps


def test_usps_split_sizes_and_no_overlap() -> None:
    splits = load_usps()
    assert splits.x_train.shape == (5832, 1, 16, 16)
    assert splits.x_val.shape == (1459, 1, 16, 16)
    assert splits.x_test.shape == (2007, 1, 16, 16)
    assert len(splits.x_train) + len(splits.x_val) == 7291
    assert set(splits.rows["train"]).isdisjoint(splits.rows["val"])
    assert len(set(splits.rows["train"]) | set(splits.rows["val"])) == 7291
    # Official class counts of the test file (data README).
    counts = torch.bincount(splits.y_test, minlength=10).tolist()
    assert counts == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
    # Stratified: class shares of train and validation agree closely.
    train_share = torch.bincount(splits.y_train, minlength=10) / len(splits.y_train)
    val_share = torch.bincount(splits.y_val, minlength=10) / len(splits.y_val)
    assert torch.allclose(train_share, val_share, atol=0.01)
    # Normalized with training statistics.
    assert abs(float(splits.x_train.mean())) < 1e-4
    assert abs(float(splits.x_train.std()) - 1) < 1e-3
    assert splits.x_train.dtype == torch.float32 and splits.y_train.dtype == torch.int64


def test_usps_split_is_fixed_by_seed() -> None:
    a, b = load_usps(seed=0), load_usps(seed=0)
    c = load_usps(seed=1)
    assert np.array_equal(a.rows["val"], b.rows["val"])
    assert not np.array_equal(a.rows["val"], c.rows["val"])


def test_decoded_usps_is_cached_by_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _read_usps.cache_clear()
    first = load_usps()
    cached = sorted(p.name for p in (tmp_path / "hpsearch").iterdir())
    assert len(cached) == 2 and all(n.startswith("usps-") and n.endswith(".npz") for n in cached)

    # A new process (no in-memory copy) reads the cache and never decodes the files.
    import torchvision

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded the bz2 file despite the cache")

    _read_usps.cache_clear()
    monkeypatch.setattr(torchvision.datasets, "USPS", no_decoding)
    again = load_usps()
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)

    # A damaged cache file is decoded again and replaced.
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for path in (tmp_path / "hpsearch").iterdir():
        path.write_bytes(b"not an npz")
    _read_usps.cache_clear()
    rebuilt = load_usps()
    assert torch.equal(first.x_val, rebuilt.x_val)
    assert all(p.stat().st_size > 1000 for p in (tmp_path / "hpsearch").iterdir())
    _read_usps.cache_clear()
