"""The house-price data (hpsearch.problems.house_prices): splits, feature sets and the feature
pipeline, every statistic from training rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpsearch.errors import HpsearchError
from hpsearch.problems.house_prices import (
    DEV_FOLDS,
    HOUSE_PRICES_FILE,
    _read_house_prices,
    house_feature_pipeline,
    house_prices_from_rows,
    load_house_prices,
)
from hpsearch.problems.splits import PACKAGED_DATA_DIR, resolve_data_dir
from hpsearch.problems.transformers import SkewedLog1p, Winsorizer
from tests.data.make_house_features import FIXTURE, OPTIONS, SPLITS


def test_house_prices_splits() -> None:
    splits = load_house_prices()
    assert splits.x_train.shape == (876, 4)
    assert splits.x_val.shape == (292, 4) and splits.x_test.shape == (292, 4)
    rows = [set(splits.rows[name]) for name in ("train", "val", "test")]
    assert (
        rows[0].isdisjoint(rows[1]) and rows[0].isdisjoint(rows[2]) and rows[1].isdisjoint(rows[2])
    )
    assert len(rows[0] | rows[1] | rows[2]) == 1460
    assert torch.allclose(splits.x_train.mean(0), torch.zeros(4), atol=1e-5)
    assert abs(float(splits.y_train.mean())) < 1e-5
    # Target statistics come from the training rows only.
    import pandas as pd

    prices = pd.read_csv(PACKAGED_DATA_DIR / HOUSE_PRICES_FILE)["SalePrice"].to_numpy()
    assert splits.target_mean == pytest.approx(prices[splits.rows["train"]].mean())
    assert splits.target_mean != pytest.approx(prices.mean())


def test_house_prices_features_are_configurable() -> None:
    splits = load_house_prices(features=["GrLivArea", "LotFrontage"])
    # LotFrontage has missing values: imputed with the training median, so no NaN.
    assert splits.x_train.shape[1] == 2
    assert torch.isfinite(splits.x_train).all() and torch.isfinite(splits.x_test).all()
    with pytest.raises(HpsearchError, match=r"\[data\] features: 'NoSuchColumn' not a column"):
        load_house_prices(features=["NoSuchColumn"])
    with pytest.raises(HpsearchError, match=r"\[data\] features: 'Neighborhood' .*not numeric"):
        load_house_prices(features=["Neighborhood"])


def test_house_feature_sets_log_target_and_a_training_only_filter() -> None:
    import numpy as np
    import pandas as pd

    table = pd.read_csv(PACKAGED_DATA_DIR / HOUSE_PRICES_FILE)
    prices = torch.as_tensor(table["SalePrice"].to_numpy(dtype=np.float64))
    report = load_house_prices()
    numeric = load_house_prices(features="numeric")
    everything = load_house_prices(features="all")
    assert report.x_train.shape[1] == 4 < numeric.x_train.shape[1] < everything.x_train.shape[1]
    for splits in (numeric, everything):
        assert torch.isfinite(splits.x_train).all() and torch.isfinite(splits.x_test).all()
        assert all((splits.rows[k] == report.rows[k]).all() for k in ("train", "val", "test"))
    # Normalized targets turn back into the table's prices, with or without the log.
    logged = load_house_prices(log_target=True)
    for splits in (report, logged):
        expected = prices[splits.rows["test"]]
        assert torch.allclose(splits.to_dollars(splits.y_test), expected, rtol=1e-5)
    assert logged.log_target and abs(float(logged.y_train.mean())) < 1e-5
    # Large houses leave the training rows only, and are listed.
    filtered = load_house_prices(max_train_living_area=4000)
    area = table["GrLivArea"].to_numpy()
    dropped = filtered.rows["train_dropped"]
    assert len(dropped) >= 1 and (area[dropped] > 4000).all()
    assert (area[filtered.rows["train"]] <= 4000).all()
    assert set(filtered.rows["train"]) | set(dropped) == set(report.rows["train"])
    assert (filtered.rows["test"] == report.rows["test"]).all()
    assert (filtered.rows["val"] == report.rows["val"]).all()
    with pytest.raises(HpsearchError, match="unknown house-price feature set 'every'"):
        load_house_prices(features="every")
    # The lab report's four columns are the default, under their new name only.
    named = load_house_prices(features="lab-report")
    assert torch.equal(named.x_test, report.x_test) and named.x_test.shape[1] == 4
    with pytest.raises(HpsearchError, match="unknown house-price feature set 'report'"):
        load_house_prices(features="report")


def test_one_hot_levels_come_from_training_rows() -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {"Id": [1, 2, 3], "Size": [None, 2, 3], "Kind": ["a", "b", None], "SalePrice": [1, 2, 3]}
    )
    pipeline = house_feature_pipeline(frame.iloc[[0, 2]], "all")
    names = ["Size", "missingindicator_Size", "Kind_NA", "Kind_a"]
    assert list(pipeline.get_feature_names_out()) == names
    # Row 1's level "b" was never seen in training: all zeros (before scaling).
    columns = pipeline[0].transform(frame)
    assert columns[1, 2:].tolist() == [0.0, 0.0]


def test_log_of_skewed_columns_uses_training_rows_only() -> None:
    x = np.array(
        [[1.0, -1.0, 0.0], [2.0, 1.0, 0.0], [3.0, -1.0, 1.0], [1000.0, 1.0, 0.0], [-5.0, 9.0, 0.0]]
    )
    train = np.array([0, 1, 2, 3])
    out = SkewedLog1p().fit(x[train]).transform(x)
    # Column 0 is non-negative and right-skewed in training: log1p, with the unseen negative
    # value clipped to 0 first. Column 1 has negatives in training: untouched.
    assert np.allclose(out[:, 0], np.log1p([1.0, 2.0, 3.0, 1000.0, 0.0]))
    assert np.array_equal(out[:, 1], x[:, 1])
    # A rare binary indicator is skewed too, but log1p(1) only rescales it: standardized, the
    # column is unchanged.
    z = (out[:, 2] - out[train, 2].mean()) / out[train, 2].std()
    assert np.allclose(z, (x[:, 2] - x[train, 2].mean()) / x[train, 2].std())


def test_clipped_inputs_stay_inside_the_training_range() -> None:
    import pandas as pd

    plain = load_house_prices(features="all", log_target=True)
    clipped = load_house_prices(features="all", log_target=True, clip_inputs=True)
    low, high = clipped.x_train.min(dim=0).values, clipped.x_train.max(dim=0).values
    outside = (plain.x_test < low - 1e-5) | (plain.x_test > high + 1e-5)
    assert outside.any()  # some test houses lie beyond the training rows (row 1298)
    for x in (clipped.x_val, clipped.x_test):
        assert ((x >= low - 1e-5) & (x <= high + 1e-5)).all()
    assert torch.equal(plain.x_train, clipped.x_train)
    inside = ~outside
    assert torch.allclose(plain.x_test[inside], clipped.x_test[inside])
    logged = load_house_prices(features="all", log_target=True, log_features=True)
    table = pd.read_csv(PACKAGED_DATA_DIR / HOUSE_PRICES_FILE)
    columns = house_feature_pipeline(table.iloc[logged.rows["train"]], "all")
    area = list(columns.get_feature_names_out()).index("GrLivArea")
    # Living area is right-skewed: logged, the largest test house sits closer to the rest.
    assert logged.x_test[:, area].max() < plain.x_test[:, area].max()


def test_winsorize_clips_continuous_tails_to_training_quantiles() -> None:
    x = np.array(
        [
            [0.0, 1.0, 0.0, 5.0],
            [1.0, 0.0, 0.0, np.nan],
            [2.0, 1.0, 0.0, 6.0],
            [3.0, 0.0, 0.0, 7.0],
            [100.0, 1.0, 9.0, 8.0],  # training rows end here
            [-50.0, 1.0, 50.0, 99.0],
        ]
    )
    train = np.arange(5)
    out = Winsorizer(0.25).fit(x[train]).transform(x)
    low, high = np.quantile(x[train, 0], [0.25, 0.75])
    assert np.array_equal(out[:, 0], np.clip(x[:, 0], low, high))  # test row clipped too
    assert np.array_equal(out[:, 1], x[:, 1])  # an indicator is left alone
    assert np.array_equal(out[:, 2], x[:, 2])  # mostly zeros: equal quantiles, left alone
    assert np.isnan(out[1, 3]) and out[5, 3] == np.nanquantile(x[train, 3], 0.75)
    assert out[0, 3] == np.nanquantile(x[train, 3], 0.25)
    with pytest.raises(HpsearchError, match="tail fraction"):
        Winsorizer(0.5).fit(x[train])
    with pytest.raises(HpsearchError, match="tail fraction"):
        load_house_prices(winsorize=0.5)


def test_clipping_keeps_a_column_constant_in_training_at_its_one_value() -> None:
    import pandas as pd

    frame = pd.DataFrame({"Flat": [3.0, 3.0, 3.0, 9.0, 1.0], "Wide": [1.0, 2.0, 3.0, 9.0, -9.0]})
    train = frame.iloc[:3]
    x = house_feature_pipeline(train, ["Flat", "Wide"], clip_inputs=True).transform(frame)
    # Constant in training: every row, clipped to 3, standardizes to 0 (std 0 counts as 1).
    assert x[:, 0].tolist() == [0.0] * 5
    assert np.allclose(x[3:, 1], [(3 - 2) / np.std([1, 2, 3]), (1 - 2) / np.std([1, 2, 3])])
    plain = house_feature_pipeline(train, ["Flat", "Wide"]).transform(frame)
    assert plain[3:, 0].tolist() == [6.0, -2.0]  # unclipped: offset by the training mean


def test_winsorized_house_prices_keep_every_feature() -> None:
    plain = load_house_prices(features="all", log_target=True, log_features=True)
    tamed = load_house_prices(features="all", log_target=True, log_features=True, winsorize=0.02)
    assert tamed.x_train.shape == plain.x_train.shape
    # No column turns constant, and the largest test house moves towards the others.
    varies = plain.x_train.std(dim=0) > 0
    assert (tamed.x_train.std(dim=0)[varies] > 0).all()
    assert tamed.x_test.abs().max(dim=0).values.sum() < plain.x_test.abs().max(dim=0).values.sum()
    assert torch.equal(tamed.y_test, plain.y_test)


def test_house_prices_from_given_rows_match_the_loader() -> None:
    loaded = load_house_prices(features="all", log_target=True, log_features=True)
    frame, _ = _read_house_prices(resolve_data_dir())
    rows = loaded.rows
    again = house_prices_from_rows(
        frame,
        rows["train"],
        rows["val"],
        rows["test"],
        features="all",
        log_target=True,
        log_features=True,
    )
    assert torch.equal(again.x_train, loaded.x_train) and torch.equal(again.x_test, loaded.x_test)
    assert again.target_mean == loaded.target_mean
    # A fold with no test rows at all (benchmarks/house_cv.py): nothing to leak.
    fold = house_prices_from_rows(frame, rows["train"], rows["val"], rows["test"][:0])
    assert fold.x_test.shape == (0, 4) and len(fold.y_val) == len(rows["val"])


def test_dev_folds_hold_out_train_and_validation_rows_never_the_test_split() -> None:
    real = load_house_prices(seed=3).rows
    held = []
    for fold in range(DEV_FOLDS):
        rows = load_house_prices(seed=3, dev_fold=fold).rows
        used = np.concatenate([rows["train"], rows["val"], rows["test"]])
        assert len(np.unique(used)) == len(used) == len(real["train"]) + len(real["val"])
        assert not np.intersect1d(used, real["test"]).size  # the real test rows stay unread
        # Train and validation keep the real split's proportions (3:1).
        assert abs(len(rows["train"]) / len(rows["val"]) - 3.0) < 0.05
        held.append(rows["test"])
    # Every train + validation row is held out by exactly one dev fold.
    every = np.concatenate(held)
    assert np.array_equal(np.sort(every), np.sort(np.concatenate([real["train"], real["val"]])))
    with pytest.raises(HpsearchError, match="dev_fold"):
        load_house_prices(dev_fold=DEV_FOLDS)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_house_features_match_the_hand_written_pipeline(name: str) -> None:
    """The scikit-learn pipeline reproduces the features of the hand-written code it replaced
    (``tests/data/make_house_features.py`` recorded them), column order included."""
    expected = np.load(FIXTURE)
    splits = load_house_prices(**OPTIONS[name])
    assert [splits.target_mean, splits.target_std] == pytest.approx(expected[f"{name}/target"])
    for split in SPLITS:
        at = f"{name}/{split}"
        x = getattr(splits, f"x_{split}").numpy()
        assert np.array_equal(splits.rows[split], expected[f"{at}/rows"])
        assert x.shape == (len(expected[f"{at}/rows"]), len(expected[f"{at}/sum"]))
        # The features are float32 (about 7 digits): float64 statistics summed in another
        # order (scikit-learn's, not numpy's) can flip the last float32 bit, far below 1e-5;
        # a wrong column, log or clip moves values by much more. Sums add one such error
        # per row.
        tolerance = {"rtol": 1e-5, "atol": 1e-5}
        assert np.allclose(x[expected[f"{at}/at"]], expected[f"{at}/x_sample"], **tolerance)
        x64 = x.astype(np.float64)
        sums = {"rtol": 1e-5, "atol": 1e-5 * len(x)}
        assert np.allclose(x64.sum(axis=0), expected[f"{at}/sum"], **sums)
        assert np.allclose((x64**2).sum(axis=0), expected[f"{at}/sumsq"], **sums)
        y = getattr(splits, f"y_{split}").numpy()
        assert np.allclose(y, expected[f"{at}/y"], **tolerance)
