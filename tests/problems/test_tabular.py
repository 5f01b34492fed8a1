"""Users' own tables (problems/tabular.py) on real data sets that ship with scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from hpsearch.errors import HpsearchError
from hpsearch.problems import get_problem
from hpsearch.problems.table_encoder import TableEncoder
from hpsearch.problems.tabular import guess_kind, load_table, read_table
from hpsearch.search.study_file import load_study_file, packaged_studies, study_for_table
from hpsearch.training import models


@pytest.fixture
def diabetes_csv(tmp_path: Path) -> Path:
    path = tmp_path / "diabetes.csv"
    load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index=False)
    return path


@pytest.fixture
def cancer_csv(tmp_path: Path) -> Path:
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.drop(columns="target")
    frame["diagnosis"] = np.where(bunch.target == 0, "malignant", "benign")
    path = tmp_path / "breast_cancer.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_regression_table_is_split_and_scaled_with_training_rows_only(
    diabetes_csv: Path,
) -> None:
    s = load_table("regression", path=str(diabetes_csv), target="target", seed=3)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (264, 89, 89)
    rows = np.concatenate([s.rows["train"], s.rows["val"], s.rows["test"]])
    assert sorted(rows) == list(range(442))  # each row in exactly one split
    assert s.x_train.shape[1] == 10 and s.x_train.dtype == torch.float32
    assert abs(float(s.y_train.mean())) < 1e-5 and abs(float(s.y_train.std()) - 1) < 1e-3
    assert abs(float(s.x_train.mean(0).abs().max())) < 1e-5  # standardized on train
    raw = load_diabetes().target
    assert torch.allclose(s.to_dollars(s.y_test), torch.tensor(raw[s.rows["test"]]).double())
    assert list(s.checksums) == [str(diabetes_csv)] and s.classes == () and not s.model_params


def test_a_classification_table_is_stratified_with_named_classes(cancer_csv: Path) -> None:
    s = load_table("classification", path=str(cancer_csv), target="diagnosis")
    assert s.classes == ("benign", "malignant") and s.model_params == {"n_classes": 2}
    shares = [float(y.float().mean()) for y in (s.y_train, s.y_val, s.y_test)]
    assert max(shares) - min(shares) < 0.02  # malignant's share (37%) kept in every split
    assert s.y_train.dtype == torch.int64


def test_columns_are_encoded_from_the_training_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "size": rng.normal(100, 10, n),
            "colour": rng.choice(["red", "green", "blue"], n),
            "new": rng.random(n) > 0.5,
            "price": rng.normal(0, 1, n),
        }
    )
    frame.loc[::10, "size"] = np.nan  # gaps: median plus a was-missing column
    frame.loc[5, "colour"] = None
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    s = load_table("regression", path=str(path), target="price")
    # size, its was-missing indicator, new, then colour's levels (and "NA" when seen).
    assert s.x_train.shape[1] in (6, 7)
    assert torch.isfinite(s.x_train).all() and torch.isfinite(s.x_test).all()
    one_hot = s.x_train[:, -3:]
    assert set(one_hot.unique().tolist()) <= {0.0, 1.0}


def test_a_test_file_replaces_the_held_out_fraction(diabetes_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(diabetes_csv)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    frame.iloc[:400].to_csv(train, index=False)
    frame.iloc[400:].to_csv(test, index=False)
    s = load_table("regression", path=str(train), target="target", test=str(test))
    assert len(s.x_test) == 42 and len(s.x_train) + len(s.x_val) == 400
    assert set(s.checksums) == {str(train), str(test)}


def test_npz_and_parquet_tables(tmp_path: Path, diabetes_csv: Path) -> None:
    wine = load_wine()
    npz = tmp_path / "wine.npz"
    np.savez(npz, x=wine.data, y=wine.target)
    s = load_table("classification", path=str(npz), target="y")
    assert s.classes == ("0", "1", "2") and s.x_train.shape[1] == 13
    parquet = tmp_path / "diabetes.parquet"
    pd.read_csv(diabetes_csv).to_parquet(parquet)
    assert read_table(parquet).equals(pd.read_csv(diabetes_csv))


def test_the_task_follows_the_target() -> None:
    assert guess_kind(pd.Series([1.5, 2.25, 3.0])) == "regression"
    assert guess_kind(pd.Series(range(100))) == "regression"  # many distinct numbers
    assert guess_kind(pd.Series([0, 1, 2, 1, 0])) == "classification"
    assert guess_kind(pd.Series(["a", "b"])) == "classification"
    assert guess_kind(pd.Series([True, False])) == "classification"


def test_the_classifier_has_one_output_per_class_and_stacks() -> None:
    from hpsearch.training.stack import stack_key

    params = {**get_problem("tabular-classification").defaults, "n_classes": 3}
    model = models.build_mlp_classifier(params, (13,))
    assert model(torch.zeros(5, 13)).shape == (5, 3)
    assert stack_key(model) is not None  # trial groups fuse it


def bad(tmp_path: Path, frame: pd.DataFrame, target: str, kind: str = "regression") -> str:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(HpsearchError) as error:
        load_table(kind, path=str(path), target=target)  # type: ignore[arg-type]
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    return message


def test_bad_tables_are_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    n = 60
    base = pd.DataFrame({"a": np.arange(n, dtype=float), "y": np.arange(n) % 2})
    assert "no column 'price'" in bad(tmp_path, base, "price")
    dates = base.assign(when=pd.date_range("2020-01-01", periods=n).astype(str))
    assert "'when' holds dates" in bad(tmp_path, dates, "y")
    text = base.assign(note=[f"house number {i} by the river" for i in range(n)])
    assert "'note' looks like free text" in bad(tmp_path, text, "y")
    assert "one class" in bad(tmp_path, base.assign(y=1), "y", "classification")
    few = base.assign(y=["a"] * (n - 2) + ["b"] * 2)
    assert "class 'b' of 'y' has 2 rows" in bad(tmp_path, few, "y", "classification")
    assert "no values" in bad(tmp_path, base.assign(y=np.nan), "y")
    assert "no feature column" in bad(tmp_path, base[["y"]], "y")
    assert "is not numeric" in bad(tmp_path, base.assign(y="x"), "y")


def test_bad_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HpsearchError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    npz = tmp_path / "nan.npz"
    np.savez(npz, x=np.array([[1.0, np.nan]]), y=np.array([1.0]))
    with pytest.raises(HpsearchError, match="x holds 1 NaN or infinite values"):
        read_table(npz)
    np.savez(npz, y=np.ones(3))
    with pytest.raises(HpsearchError, match="no array x"):
        read_table(npz)
    np.savez(npz, x=np.ones((3, 2)))  # rows to predict on: no y
    assert list(read_table(npz).columns) == ["x0", "x1"]
    other = tmp_path / "table.xlsx"
    other.write_text("")
    with pytest.raises(HpsearchError, match="unknown kind of data file"):
        read_table(other)
    parquet = tmp_path / "t.parquet"
    parquet.write_bytes(b"")

    def no_reader(*args: object, **kwargs: object) -> None:
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", no_reader)
    with pytest.raises(HpsearchError, match=r"hpsearch\[parquet\]"):
        read_table(parquet)


def test_a_study_file_finds_its_table_beside_it(diabetes_csv: Path, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "diabetes.csv").write_bytes(diabetes_csv.read_bytes())
    study = folder / "mine.toml"
    shipped = packaged_studies()["tabular-regression"].read_text()
    study.write_text(
        shipped.replace("[data]\n", '[data]\npath = "diabetes.csv"\ntarget = "target"\n')
    )
    config = load_study_file(study)
    assert config.data["path"] == str(folder / "diabetes.csv")
    with pytest.raises(HpsearchError, match=r"\[data\] missing key path, target"):
        load_study_file(packaged_studies()["tabular-regression"])


def test_a_table_alone_makes_a_study(diabetes_csv: Path, cancer_csv: Path) -> None:
    config = study_for_table(str(diabetes_csv), "target")
    assert config.problem.name == "tabular-regression" and config.name == "diabetes-regression"
    config = study_for_table(str(cancer_csv), "diagnosis")
    assert config.problem.name == "tabular-classification"
    assert config.name == "breast_cancer-classification" and config.metric == "val_accuracy"
    config = study_for_table(str(diabetes_csv), "target", "gaussian")
    assert config.problem.name == "tabular-gaussian"
    with pytest.raises(HpsearchError, match="needs --target"):
        study_for_table(str(diabetes_csv), None)


def test_the_encoding_is_json_and_handles_gaps_and_unseen_levels() -> None:
    train = pd.DataFrame({"n": [1.0, 2.0, np.nan, 5.0], "c": ["a", "b", None, "a"]})
    encoder = TableEncoder.fit(train, {"n": "numeric", "c": "category"})
    assert encoder.missing == ("n",) and encoder.levels == {"c": ("NA", "a", "b")}
    again = TableEncoder.from_json(json.loads(json.dumps(encoder.to_json())))
    new = pd.DataFrame({"n": [np.nan, 2.0], "c": ["z", "b"]})
    x = again.transform(new)
    # n standardized (gap: the training median), was-missing, then c's levels NA, a, b.
    median = float(np.nanmedian((np.array([1, 2, 5]) - 8 / 3) / np.std([1, 2, 5])))
    assert torch.allclose(x[:, 0], torch.tensor([median, (2 - 8 / 3) / np.std([1, 2, 5])]).float())
    assert x[:, 1].tolist() == [1.0, 0.0]
    assert x[:, 2:].tolist() == [[0, 0, 0], [0, 0, 1]]  # "z" unseen: all zeros
    assert again.columns == ["n", "c"]


def test_a_table_past_the_free_memory_is_refused_before_it_is_read_or_encoded(
    diabetes_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpsearch.problems.table_encoder as table_encoder
    import hpsearch.problems.tabular as tabular

    size = diabetes_csv.stat().st_size
    monkeypatch.setattr(tabular, "available_memory", lambda: size - 1)
    with pytest.raises(HpsearchError, match=r"diabetes.csv: 0.0 GiB and 0.0 GiB of memory is free"):
        load_table("regression", path=str(diabetes_csv), target="target")
    monkeypatch.undo()
    # Read, but its 442 rows x 10 features of float32 (17,680 bytes) would not fit.
    monkeypatch.setattr(table_encoder, "available_memory", lambda: 17_679)
    with pytest.raises(HpsearchError, match="too large to encode in memory: its 442 rows encode"):
        load_table("regression", path=str(diabetes_csv), target="target")
    monkeypatch.setattr(table_encoder, "available_memory", lambda: 17_680)
    assert len(load_table("regression", path=str(diabetes_csv), target="target").x_train) == 264
