"""A user's own table through the CLI, end to end: run, finalize, report; bad input refused
with one line, exit code 2 and nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.problems.tabular import read_table
from hpsearch.results.predict import load_predictor
from hpsearch.search.study_file import load_study_file, study_for_table

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), prog_name="hpsearch")
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("data", ["diabetes", "breast_cancer", "wine"])
def test_run_finalize_report_on_a_table(tmp_path: Path, sqlite_url: str, data: str) -> None:
    if data == "diabetes":
        path, target = tmp_path / "diabetes.csv", "target"
        load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index=False)
        study, metric, rows = "diabetes-regression", "rmse", 442
    elif data == "breast_cancer":
        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.frame.drop(columns="target")
        frame["diagnosis"] = np.where(bunch.target == 0, "malignant", "benign")
        path, target = tmp_path / "breast_cancer.csv", "diagnosis"
        frame.to_csv(path, index=False)
        study, metric, rows = "breast_cancer-classification", "accuracy", 569
    else:
        wine = load_wine()
        path, target = tmp_path / "wine.npz", "y"
        np.savez(path, x=wine.data, y=wine.target)
        study, metric, rows = "wine-classification", "accuracy", 178
    code, out, err = invoke(
        "run", "--data", str(path), "--target", target, "--trials", "3", "--storage", sqlite_url
    )
    assert code == 0, err
    assert f"study {study} (tabular-" in err and "complete" in out
    counts = {"diabetes": "", "breast_cancer": "2 classes: benign 357, malignant 212"}
    sizes = re.search(r"data: (\d+) train / (\d+) validation / (\d+) test rows", err)
    assert sizes is not None and sum(map(int, sizes.groups())) == rows
    assert counts.get(data, "3 classes: 0 59, 1 71, 2 48") in err
    out_dir = tmp_path / "final"
    code, out, err = invoke(
        "finalize", study, "--storage", sqlite_url, "--top-k", "1", "--seeds", "1",
        "--out", str(out_dir), "--no-ensemble",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((out_dir / "finalize.json").read_text())
    linear, boosting = result["baselines"]  # each on the same rows
    assert result["test"][metric] > 0 and linear["test"][metric] > 0
    assert boosting["name"] == "gradient boosting" and boosting["test"][metric] > 0
    if metric == "accuracy":
        assert result["test"][metric] > 0.8  # three short trials already learn
        assert linear["name"] == "logistic regression"
    else:
        assert linear["name"] == "ridge regression"
    code, _, err = invoke("report", study, "--storage", sqlite_url, "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert (tmp_path / "r" / "index.html").exists()

    # Predictions on the table itself, rows reversed: one per row, in the input's order.
    rows = read_table(path).iloc[::-1]
    rows_path = tmp_path / "rows.csv"
    rows.drop(columns=target).to_csv(rows_path, index=False)  # no target needed
    predictions = tmp_path / "predictions.csv"
    code, _, err = invoke("predict", str(out_dir), str(rows_path), "--out", str(predictions))
    assert code == 0 and f"wrote {len(rows):,} predictions" in err, err
    frame = pd.read_csv(predictions)
    assert len(frame) == len(rows)
    predicted = frame[f"predicted_{target}"]
    if metric == "accuracy":
        labels = rows[target].astype(str).to_numpy()
        assert set(predicted.astype(str)) <= set(labels)
        probabilities = frame.filter(like="probability_")
        assert probabilities.shape[1] == len(set(labels))
        assert np.allclose(probabilities.sum(axis=1), 1.0)
        assert (predicted.astype(str).to_numpy() == labels).mean() > 0.8
    else:  # in the target's units: about as far off as the test RMSE
        error = float(np.sqrt(((predicted.to_numpy() - rows[target].to_numpy()) ** 2).mean()))
        assert error < 1.5 * result["test"]["rmse"]
    same = load_predictor(out_dir).predict(rows)[f"predicted_{target}"]  # the Python form
    if metric == "accuracy":
        assert (same.astype(str).to_numpy() == predicted.astype(str).to_numpy()).all()
    else:
        assert np.allclose(same.to_numpy(), predicted.to_numpy())


def test_bad_tables_exit_2_and_write_nothing(tmp_path: Path, sqlite_url: str) -> None:
    frame = pd.DataFrame({"a": range(50), "when": pd.date_range("2020", periods=50), "y": 1.0})
    frame["y"] = np.arange(50) * 1.5
    path = tmp_path / "dated.csv"
    frame.to_csv(path, index=False)
    cases = [
        (["--data", str(path), "--target", "y"], "'when' holds dates"),
        (["--data", str(path), "--target", "price"], "no column 'price'"),
        (["--data", str(path)], "needs --target"),
        (["--data", str(tmp_path / "none.csv"), "--target", "y"], "does not exist"),
        (["--data", str(path), "--target", "y", "--task", "ranking"], "unknown task"),
        (["tabular-regression"], "missing key path, target"),
        (["--target", "y"], "give a study"),
    ]
    for args, message in cases:
        code, _, err = invoke("run", *args, "--storage", sqlite_url)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "hpsearch-artifacts").exists()


def test_predict_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"a": [1.0]}).to_csv(rows, index=False)
    code, _, err = invoke("predict", str(tmp_path / "none"), str(rows))
    assert code == 2 and "does not exist" in err
    shipped = tmp_path / "usps-model"
    shipped.mkdir()
    (shipped / "finalize.json").write_text(json.dumps({"study": "usps", "problem": "usps"}))
    code, _, err = invoke("predict", str(shipped), str(rows))
    assert code == 2 and "holds no table or image encoding" in err, err
    assert not (tmp_path / "predictions.csv").exists()


def test_init_writes_the_study_that_run_would_use(tmp_path: Path) -> None:
    path = tmp_path / "diabetes.csv"
    load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index=False)
    code, _, err = invoke("init", "--data", str(path), "--target", "target")
    assert code == 0 and "wrote diabetes-regression.toml" in err, err
    written = tmp_path / "diabetes-regression.toml"
    assert 'path = "diabetes.csv"' in written.read_text()  # beside it: relative
    config = load_study_file(written)
    same = study_for_table(str(path), "target")
    assert (config.name, config.problem, config.data, config.space) == (
        same.name,
        same.problem,
        same.data,
        same.space,
    )
    code, _, err = invoke("init", "--data", str(path), "--target", "target")
    assert code == 2 and "exists" in err  # never overwritten
    code, _, err = invoke("init", "--data", str(path), "--target", "nope", "--out", "x.toml")
    assert code == 2 and "no column 'nope'" in err and not (tmp_path / "x.toml").exists()


@pytest.mark.slow
def test_run_finalize_predict_on_an_image_folder(tmp_path: Path, sqlite_url: str) -> None:
    from tests.problems.test_images import write_digits

    folder = write_digits(tmp_path / "digits")
    code, out, err = invoke("run", "--data", str(folder), "--trials", "2", "--storage", sqlite_url)
    assert code == 0 and "study digits-image-classification (image-classification" in err, err
    out_dir = tmp_path / "final"
    code, _, err = invoke(
        "finalize", "digits-image-classification", "--storage", sqlite_url, "--top-k", "1",
        "--seeds", "1", "--out", str(out_dir), "--no-ensemble",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((out_dir / "finalize.json").read_text())
    names = [baseline["name"] for baseline in result["baselines"]]
    assert names == ["logistic regression", "RBF SVM (C=10)"] and result["test"]["accuracy"] > 0.5
    predictions = tmp_path / "p.csv"
    code, _, err = invoke("predict", str(out_dir), str(folder / "3"), "--out", str(predictions))
    assert code == 0, err
    frame = pd.read_csv(predictions, dtype={"predicted_class": str})
    assert len(frame) == len(list((folder / "3").glob("*.png")))
    assert (frame["predicted_class"] == "3").mean() > 0.5 and frame["file"].str.endswith(
        ".png"
    ).all()
    code, _, err = invoke("predict", str(out_dir), str(tmp_path / "rows.csv"))
    assert code == 2


@pytest.mark.slow
def test_periodic_embeddings_run_finalize_and_predict_on_a_table(tmp_path: Path) -> None:
    """The tabular space's periodic-embedding option, end to end with the default two
    workers: its model is rebuilt for predictions from finalize.json alone."""
    path = tmp_path / "diabetes.csv"
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame.to_csv(path, index=False)
    shipped = (Path(__file__).parents[1] / "studies/tabular-regression.toml").read_text()
    study = tmp_path / "periodic.toml"
    study.write_text(
        shipped.replace("[fixed]\n", '[fixed]\nnum_embedding = "periodic"\nembedding_dim = 4\n')
        .replace("low = 20\nhigh = 200", "low = 10\nhigh = 20")  # epochs: a short test
        .replace("step = 20", "step = 10")
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    code, _, err = invoke("run", str(study), "--data", str(path), "--target", "target",
                          "--trials", "2", "--storage", url)  # fmt: skip
    assert code == 0, err
    out_dir = tmp_path / "final"
    code, _, err = invoke("finalize", "periodic", "--storage", url, "--top-k", "1",
                          "--seeds", "1", "--out", str(out_dir), "--no-ensemble")  # fmt: skip
    assert code == 0, err
    result = json.loads((out_dir / "finalize.json").read_text())
    assert result["chosen"]["params"]["num_embedding"] == "periodic"
    predicted = load_predictor(out_dir).predict(frame.drop(columns="target"))["predicted_target"]
    error = float(np.sqrt(((predicted.to_numpy() - frame["target"].to_numpy()) ** 2).mean()))
    assert error < 1.5 * result["test"]["rmse"]
