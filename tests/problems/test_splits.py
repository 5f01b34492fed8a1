"""Splits and the packaged data files (hpsearch.problems.splits): checksums, the data folder,
clear errors offline and where the data do not fit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hpsearch.errors import HpsearchError
from hpsearch.problems.house_prices import HOUSE_PRICES_FILE, load_house_prices
from hpsearch.problems.splits import (
    KNOWN_MD5,
    PACKAGED_DATA_DIR,
    Splits,
    md5sum,
    resolve_data_dir,
)
from hpsearch.problems.usps import USPS_FILES, load_usps


def _copy_data(tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(PACKAGED_DATA_DIR, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def test_packaged_files_match_md5sums() -> None:
    listed = {}
    for line in (PACKAGED_DATA_DIR / "MD5SUMS").read_text().splitlines():
        checksum, name = line.split()
        listed[name] = checksum
    assert set(listed) == set(KNOWN_MD5)
    for name, checksum in listed.items():
        assert md5sum(PACKAGED_DATA_DIR / name) == checksum
        assert checksum in KNOWN_MD5[name]


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    folder = _copy_data(tmp_path)
    csv = folder / HOUSE_PRICES_FILE
    csv.write_text(csv.read_text().replace("208500", "208501", 1))
    with pytest.raises(HpsearchError, match="corrupt data file .*train.csv"):
        load_house_prices(folder)
    usps = folder / USPS_FILES["test"]
    usps.write_bytes(usps.read_bytes()[:-10])
    with pytest.raises(HpsearchError, match="corrupt data file .*usps.t.bz2"):
        load_usps(folder)


def test_data_dir_is_the_argument_or_the_packaged_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy_data(tmp_path)
    # $HPSEARCH_DATA_DIR is resolved with the other settings, never by the loaders.
    monkeypatch.setenv("HPSEARCH_DATA_DIR", str(tmp_path / "elsewhere"))
    assert resolve_data_dir() == PACKAGED_DATA_DIR
    assert resolve_data_dir(str(folder)) == folder
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("~/data") == folder
    assert load_house_prices(folder).checksums == {
        HOUSE_PRICES_FILE: md5sum(folder / HOUSE_PRICES_FILE)
    }


def test_missing_files_offline_give_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    import sklearn.datasets
    import torchvision.datasets.usps

    monkeypatch.setattr(torchvision.datasets.usps, "download_url", offline)
    monkeypatch.setattr(sklearn.datasets, "fetch_openml", offline)
    with pytest.raises(HpsearchError, match="missing and could not be downloaded"):
        load_usps(tmp_path)
    with pytest.raises(HpsearchError, match="could not be fetched"):
        load_house_prices(tmp_path)


def test_splits_move_every_tensor_and_keep_the_rest() -> None:
    splits = load_house_prices()
    moved = splits.to("meta")  # a device without data: where every tensor went shows
    names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    assert all(getattr(moved, name).device.type == "meta" for name in names)
    assert all(getattr(moved, n).shape == getattr(splits, n).shape for n in names)
    assert splits.x_train.device.type == "cpu"  # a copy: the original stays
    assert (moved.target_mean, moved.target_std, moved.checksums) == (
        splits.target_mean,
        splits.target_std,
        splits.checksums,
    )
    assert moved.rows is splits.rows and len(moved.rows["train"]) == len(splits.x_train)


def test_data_that_do_not_fit_the_device_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = torch.zeros(4, 256), torch.zeros(4)
    splits = Splits(x, y, x, y, x, y)

    def out_of_memory(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.Tensor, "to", out_of_memory)
    with pytest.raises(
        HpsearchError, match=r"the data \(0.0 GiB\) do not fit in the memory of cuda"
    ):
        splits.to("cuda")
