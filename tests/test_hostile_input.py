"""What a demanding new user throws at hpsearch, through the command line as they run it (one
process each): every case must end with one line, its exit code, and every file (the
storage, its studies, the tables, a finalized model) as it was. The faults of issue 38 and
ones that held before it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

import hpsearch
from tests.conftest import TINY_HOUSE

pytestmark = pytest.mark.slow
STORAGE = "sqlite:///studies.db"
CATEGORICAL = TINY_HOUSE.format(problem="house-prices") + (
    '\n[space.activation]\ntype = "categorical"\nchoices = ["relu", "tanh"]\n'
)


def hpsearch_cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``hpsearch ARGS`` in ``folder``, with a user's environment (two workers on two cores:
    no HPSEARCH_WORKERS)."""
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_WORKERS"}
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` by its path, with the SHA-256 of its bytes; of a SQLite
    database, of its rows (its file's bytes and its -wal and -shm files are SQLite's own
    bookkeeping, which any reader's connection may change)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.endswith(("-wal", "-shm")):
            continue
        if path.suffix == ".db":
            with contextlib.closing(sqlite3.connect(path)) as connection:
                content = "\n".join(connection.iterdump()).encode()
        else:
            content = path.read_bytes()
        files[str(path.relative_to(folder))] = hashlib.sha256(content).hexdigest()
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: tables good and bad, study files, a storage with an hpsearch study,
    a study of a categorical space and one made by plain Optuna, a finalized model."""
    folder = tmp_path_factory.mktemp("user")
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame.to_csv(folder / "d.csv", index=False)
    frame.to_csv(folder / "semi.csv", index=False, sep=";")
    (folder / "latin.csv").write_bytes(b"name,y\n" + "caf\xe9,1\n".encode("latin-1") * 20)
    words = frame.astype({"bmi": object})
    words.loc[3, "bmi"] = "abc"
    words.to_csv(folder / "word.csv", index=False)
    words.drop(columns="target").to_csv(folder / "rows-word.csv", index=False)
    frame.head(0).to_csv(folder / "rows-empty.csv", index=False)
    (folder / "dup.csv").write_text("age,age,y\n" + "1,2,3\n" * 30)
    frame.head(1).to_csv(folder / "one.csv", index=False)
    frame.head(5).to_csv(folder / "five.csv", index=False)
    dated = frame.assign(when=pd.date_range("2020", periods=len(frame)).astype(str))
    dated.to_csv(folder / "dated.csv", index=False)
    (folder / "predictions.csv").write_text("earlier,predictions\n1,2\n")
    (folder / "tiny.toml").write_text(TINY_HOUSE.format(problem="house-prices"))
    (folder / "lr-changed.toml").write_text(
        TINY_HOUSE.format(problem="house-prices").replace("high = 1e-2", "high = 1e-1")
    )
    (folder / "cat.toml").write_text(CATEGORICAL)
    (folder / "cat-changed.toml").write_text(
        CATEGORICAL.replace('"tanh"]', '"gelu"]').replace("[study]", '[study]\nname = "cat"')
    )
    (folder / "bad-features.toml").write_text(
        TINY_HOUSE.format(problem="house-prices") + '\n[data]\nfeatures = ["Nope"]\n'
    )
    (folder / "bad-key.toml").write_text(
        TINY_HOUSE.format(problem="house-prices").replace("seed = 0", "seeed = 0")
    )
    url = f"sqlite:///{folder / 'studies.db'}"
    old = Path.cwd()
    os.chdir(folder)  # the default artifact folder, as a user's run makes it
    try:
        for study in ("tiny.toml", "cat.toml"):
            hpsearch.run(str(folder / study), trials=2, storage=url, workers=1)
        foreign = optuna.create_study(study_name="foreign", storage=url)
        foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
        table = hpsearch.run(data=str(folder / "d.csv"), target="target", trials=2,
                             storage=url, workers=1)  # fmt: skip
        hpsearch.finalize(table.study_name, storage=url, top_k=1, seeds=2,
                          out=str(folder / "model"))  # fmt: skip
    finally:
        os.chdir(old)
    return folder


# (the command's arguments, its exit code, what its one line says)
CASES = {
    # Data lost or wrong results.
    "predict --out is its input": (
        ["predict", "model", "d.csv", "--out", "d.csv"],
        2,
        "--out d.csv is one of the inputs",
    ),
    "predictions over the model's record": (
        ["predict", "model", "d.csv", "--out", "model/finalize.json"],
        2,
        "a .csv or .parquet file",
    ),
    "a study plain Optuna made": (
        ["run", "tiny.toml", "--study-name", "foreign", "--storage", STORAGE],
        2,
        "study 'foreign' was not made by hpsearch",
    ),
    # An existing study changed.
    "a categorical's choices changed": (
        ["run", "cat-changed.toml", "--trials", "5", "--storage", STORAGE],
        2,
        r"sampled activation from \['relu', 'tanh'\]; cat-changed.toml searches \['relu', 'gelu'\]",
    ),
    "a float range changed": (
        ["run", "lr-changed.toml", "--study-name", "tiny", "--trials", "5", "--storage", STORAGE],
        2,
        r"sampled lr from 0.001..0.01 \(log\); lr-changed.toml searches 0.001..0.1 \(log\)",
    ),
    # A secret, tracebacks.
    "an unescaped @ in the password": (
        ["studies", "--storage", "postgresql+psycopg://postgres:s3cr@t@127.0.0.1/test"],
        2,
        r"'postgresql\+psycopg://postgres:\*\*\*@127.0.0.1/test': write an '@' in the password",
    ),
    "a password with ':' and '/' (a server not up)": (
        ["run", "tiny.toml", "--storage", "postgresql+psycopg://postgres:s3cr:e/t@127.0.0.1:1/x"],
        75,
        r"cannot reach database postgresql\+psycopg://postgres:\*\*\*@127.0.0.1:1/x",
    ),
    "a word in a numeric column to predict": (
        ["predict", "model", "rows-word.csv", "--out", "p.csv"],
        2,
        r"column 'bmi' holds 'abc' \(row 4\) where the model takes numbers",
    ),
    "no rows to predict": (
        ["predict", "model", "rows-empty.csv", "--out", "p.csv"],
        2,
        "no rows to predict",
    ),
    "a database hpsearch does not support": (
        ["studies", "--storage", "mysql://u@h/db"],
        2,
        "unsupported storage mysql",
    ),
    "predictions into a spreadsheet": (
        ["predict", "model", "d.csv", "--out", "p.xlsx"],
        2,
        "a .csv or .parquet file",
    ),
    # Unclear lines, now clear.
    "trials --csv into a missing folder": (
        ["trials", "tiny", "--storage", STORAGE, "--csv", "nodir/t.csv"],
        2,
        "cannot write nodir/t.csv: .*non-existent directory",
    ),
    "trials --csv over the storage": (
        ["trials", "tiny", "--storage", STORAGE, "--csv", "studies.db"],
        2,
        "--csv studies.db is the storage itself",
    ),
    "a storage URL that is not one": (["studies", "--storage", "foo"], 2, "bad storage URL 'foo'"),
    "a feature that is not a column": (
        ["run", "bad-features.toml", "--storage", STORAGE],
        2,
        r"bad-features.toml: \[data\] features: 'Nope' not a column of .*train.csv",
    ),
    "numbers with a stray word": (
        ["run", "--data", "word.csv", "--target", "target", "--storage", STORAGE],
        2,
        "column 'bmi' holds numbers but for 1 value such as 'abc'",
    ),
    "a one-row table": (
        ["run", "--data", "one.csv", "--target", "target", "--storage", STORAGE],
        2,
        "1 row with a target; a table needs at least 10",
    ),
    "a five-row regression": (
        [
            "run",
            "--data",
            "five.csv",
            "--target",
            "target",
            "--task",
            "regression",
            "--storage",
            STORAGE,
        ],  # fmt: skip
        2,
        "5 rows with a target",
    ),
    "a semicolon-separated table": (
        ["run", "--data", "semi.csv", "--target", "target", "--storage", STORAGE],
        2,
        "look separated by ';'",
    ),
    "a Latin-1 table": (
        ["run", "--data", "latin.csv", "--target", "y", "--storage", STORAGE],
        2,
        "not UTF-8 text",
    ),
    "a column named twice": (
        ["run", "--data", "dup.csv", "--target", "y", "--storage", STORAGE],
        2,
        "column\\(s\\) 'age' appear more than once",
    ),
    "init on a table with dates": (
        ["init", "--data", "dated.csv", "--target", "target"],
        2,
        "column 'when' holds dates",
    ),
    # Faults that held before, kept so.
    "an unknown study": (["run", "uspss", "--storage", STORAGE], 2, "unknown study 'uspss'"),
    "a study file's unknown key": (
        ["run", "bad-key.toml", "--storage", STORAGE],
        2,
        r"\[study\] unknown key seeed",
    ),
    "a missing storage": (
        ["best", "tiny", "--storage", "sqlite:///none.db"],
        2,
        "no study storage",
    ),
    "a malformed --pick": (
        ["finalize", "tiny", "--storage", STORAGE, "--pick", "val_rmse where"],
        2,
        "nothing after where",
    ),
    "a run two workers refuse": (
        [
            "run",
            "tiny.toml",
            "--metric",
            "val_rmse",
            "--metric",
            "params",
            "--pruner",
            "hyperband",
            "--storage",
            "sqlite:///new.db",
        ],  # fmt: skip
        2,
        "pruner hyperband prunes on one objective",
    ),
}


@pytest.mark.parametrize(("args", "code", "line"), CASES.values(), ids=CASES.keys())
def test_a_refusal_is_one_line_and_leaves_everything_as_it_was(
    folder: Path, args: list[str], code: int, line: str
) -> None:
    before = snapshot(folder)
    result = hpsearch_cli(folder, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(line, lines[0]), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "s3cr" not in result.stderr + result.stdout  # no part of a password, ever
    assert snapshot(folder) == before


def test_an_ensemble_of_an_earlier_finalize_is_not_left_behind(folder: Path) -> None:
    model = folder / "model"
    assert (model / "ensemble.pt").is_file()
    table = next(s for s in optuna.get_all_study_names(f"sqlite:///{folder / 'studies.db'}")
                 if s.endswith("-regression"))  # fmt: skip
    done = hpsearch_cli(folder, "finalize", table, "--storage", STORAGE, "--top-k", "1",
                        "--seeds", "1", "--no-ensemble", "--out", "model")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in model.iterdir()) == ["finalize.json", "model.pt"]
    refused = hpsearch_cli(folder, "predict", "model", "d.csv", "--ensemble")
    assert refused.returncode == 2 and "holds no ensemble" in refused.stderr, refused.stderr
    # A folder of the user's is never replaced.
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("mine")
    kept = hpsearch_cli(folder, "finalize", table, "--storage", STORAGE, "--out", "mine")
    assert kept.returncode == 2 and "mine holds files hpsearch did not write (notes.txt)" in (
        kept.stderr
    )
    assert [p.name for p in (folder / "mine").iterdir()] == ["notes.txt"]


def test_an_interrupted_prediction_leaves_the_earlier_output_whole(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpsearch.results.predict import predict_file

    earlier = (folder / "predictions.csv").read_bytes()

    def interrupted(self: pd.DataFrame, path: Path, **kwargs: object) -> None:
        Path(path).write_text("predicted_target\n1.0\n")  # a part of it, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_file(folder / "model", folder / "d.csv", folder / "predictions.csv", ensemble=False)
    assert (folder / "predictions.csv").read_bytes() == earlier
    assert not list(folder.glob(".predictions.csv*"))  # no partial file left


def test_a_read_only_storage_is_refused_at_once(folder: Path, tmp_path: Path) -> None:
    shutil.copy(folder / "studies.db", tmp_path / "studies.db")
    shutil.copy(folder / "tiny.toml", tmp_path / "tiny.toml")
    if subprocess.run(["chattr", "+i", str(tmp_path / "studies.db")]).returncode != 0:
        pytest.skip("chattr cannot make the file read-only here")
    try:
        result = hpsearch_cli(tmp_path, "run", "tiny.toml", "--trials", "4", "--storage", STORAGE)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "studies.db")], check=True)
    assert result.returncode == 2, result.stderr
    assert "cannot write the storage: attempt to write a readonly database" in result.stderr
    assert "retrying" not in result.stderr  # no minutes of retries first


def test_the_python_api_refuses_in_one_line(folder: Path) -> None:
    with pytest.raises(hpsearch.HpsearchError, match="trials must be an integer, got 'two'"):
        hpsearch.run(str(folder / "tiny.toml"), trials="two")
    with pytest.raises(hpsearch.HpsearchError, match="^the arrays: x holds 20 NaN"):
        hpsearch.run(data=(np.full((10, 2), np.nan), np.arange(10)))
    predictor = hpsearch.load_predictor(folder / "model")
    rows = pd.read_csv(folder / "d.csv").drop(columns="target")
    from_array = predictor.predict(rows.to_numpy())
    assert from_array.equals(predictor.predict(rows))
    with pytest.raises(hpsearch.HpsearchError, match=r"an array of shape \(442, 3\)"):
        predictor.predict(rows.to_numpy()[:, :3])


def test_a_warning_says_so_once(folder: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(folder / "d.csv")
    frame.loc[:4, "target"] = np.nan
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    result = hpsearch_cli(tmp_path, "run", "--data", "gaps.csv", "--target", "target",
                          "--trials", "1", "--workers", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())  # the 80-column terminal folds the line
    assert said.count("WARNING") == 1 and "5 rows without a target left out" in said
