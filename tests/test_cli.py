from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from hpsearch.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), prog_name="hpsearch")
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_run_then_inspect(tiny_usps_file: Path, sqlite_url: str, tmp_path: Path) -> None:
    code, out, err = invoke(
        "run", str(tiny_usps_file), "--trials", "3", "--storage", sqlite_url, "--seed", "1"
    )
    assert code == 0, err
    assert "tiny-usps: " in out and "complete" in out  # the summary table
    assert "study tiny-usps (usps, maximize val_accuracy)" in err
    assert not (tmp_path / "hpsearch-artifacts").exists()  # finished trials leave no checkpoint

    code, out, _ = invoke("studies", "--storage", sqlite_url)
    assert code == 0 and "tiny-usps" in out and "usps" in out

    code, out, _ = invoke("best", "tiny-usps", "--storage", sqlite_url, "--json")
    assert code == 0
    best = json.loads(out)
    assert best["metric"] == "val_accuracy" and 0 < best["value"] <= 1
    assert set(best["params"]) == {"n_conv_layers", "lr", "loss"}
    assert best["config"]["channels"] == 8
    assert best["metrics"]["seed"] == best["trial"] + 1  # --seed 1

    code, out, _ = invoke("best", "tiny-usps", "--storage", sqlite_url)
    assert code == 0 and "n_conv_layers *" in out

    csv = tmp_path / "trials.csv"
    code, _, err = invoke("trials", "tiny-usps", "--storage", sqlite_url, "--csv", str(csv))
    assert code == 0 and "wrote 3 trials" in err
    frame = pd.read_csv(csv)
    assert len(frame) == 3 and "params_lr" in frame and "user_attrs_val_accuracy" in frame

    code, out, _ = invoke("trials", "tiny-usps", "--storage", sqlite_url)
    assert code == 0 and "3 trials" in out

    # Rerunning the same command runs nothing more.
    code, _, err = invoke("run", str(tiny_usps_file), "--trials", "3", "--storage", sqlite_url)
    assert code == 0 and "nothing to run" in err


def test_storage_from_environment(
    tiny_house_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("HPSEARCH_STORAGE", f"sqlite:///{db}")
    code, _, err = invoke("run", str(tiny_house_file), "--trials", "1")
    assert code == 0, err
    assert db.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "mnist"], "unknown study 'mnist'"),
        (["run", "usps", "--trials", "0"], "--trials must be >= 1"),
        (["run", "usps", "--storage", "nonsense"], "bad storage URL"),
        (["run", "usps", "--sampler", "bayes"], "unknown sampler"),
        (["run", "usps", "--device", "tpu"], "unknown device"),
        (
            ["run", "usps", "--storage", "postgresql+psycopg://bob:topsecret@127.0.0.1:1/x"],
            "cannot reach database",
        ),
        (["run", "missing.toml"], "study file missing.toml does not exist"),
    ],
)
def test_bad_input_one_line_no_traceback_nothing_written(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke(*args)
    assert code == (75 if "cannot reach" in message else 2)  # 75: may pass, try again later
    assert message in err
    assert "Traceback" not in out + err
    assert "topsecret" not in out + err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no hpsearch.db, nothing else


def test_malformed_study_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text("[study]\nproblem = 'usps'\n[space.lr]\ntype = 'float'\n")
    code, _, err = invoke("run", "s.toml")
    assert code == 2 and "s.toml: [space.lr] low and high (and step, if given) must be" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_corrupt_data_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from hpsearch.problems import house_prices, splits

    folder = tmp_path / "data"
    shutil.copytree(splits.PACKAGED_DATA_DIR, folder)
    csv = folder / house_prices.HOUSE_PRICES_FILE
    csv.chmod(0o644)
    csv.write_text(csv.read_text()[:-100])
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke("run", "house-prices", "--data-dir", str(folder))
    assert code == 2 and "corrupt data file" in err
    assert not (tmp_path / "hpsearch.db").exists()


def test_inspecting_a_missing_storage_or_study(sqlite_url: str, tiny_house_file: Path) -> None:
    code, _, err = invoke("studies", "--storage", sqlite_url)
    assert code == 2 and "no study storage" in err
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    invoke("run", str(tiny_house_file), "--trials", "1", "--storage", sqlite_url)
    code, _, err = invoke("best", "nope", "--storage", sqlite_url)
    assert code == 2 and "no study named 'nope'" in err


def test_create_makes_the_study_once(tiny_usps_file: Path, sqlite_url: str) -> None:
    for _ in range(2):  # a second create keeps the study
        code, _, err = invoke("create", str(tiny_usps_file), "--storage", sqlite_url)
        assert code == 0 and "with 0 trials" in err, err
    study = optuna.load_study(study_name="tiny-usps", storage=sqlite_url)
    assert study.user_attrs["problem"] == "usps" and study.trials == []
    # Another problem under the same name is refused in one line; the study is unchanged.
    args = ("create", "house-prices", "--study-name", "tiny-usps", "--storage", sqlite_url)
    code, _, err = invoke(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    study = optuna.load_study(study_name="tiny-usps", storage=sqlite_url)
    assert study.user_attrs["problem"] == "usps"


def test_create_takes_the_options_that_name_a_study(tiny_house_file: Path, sqlite_url: str) -> None:
    """A cluster's set-up step makes the study its workers' `run` with the same options
    joins; `run` with other objectives is refused, and changes nothing."""
    objectives = ("--metric", "val_rmse", "--metric", "params")
    code, _, err = invoke("create", str(tiny_house_file), *objectives, "--storage", sqlite_url)
    assert code == 0 and "val_rmse, params" in err, err
    name = tiny_house_file.stem
    study = optuna.load_study(study_name=name, storage=sqlite_url)
    assert study.user_attrs["metrics"] == ["val_rmse", "params"] and len(study.directions) == 2
    code, _, err = invoke("run", str(tiny_house_file), "--trials", "1", "--storage", sqlite_url)
    assert code == 2 and "holds house-prices" in err and "val_rmse, params" in err, err
    assert optuna.load_study(study_name=name, storage=sqlite_url).trials == []
    run = ("run", str(tiny_house_file), *objectives, "--trials", "1", "--storage", sqlite_url)
    code, _, err = invoke(*run)
    assert code == 0, err
    assert len(optuna.load_study(study_name=name, storage=sqlite_url).trials) == 1


def test_help_of_every_command() -> None:
    """The overview lists every command by name with its one-line summary, a full sentence
    that is not broken across lines, and each command's own --help works."""
    code, overview, _ = invoke("--help")
    assert code == 0
    names = [command.name or command.callback.__name__ for command in app.registered_commands]  # type: ignore[union-attr]
    expected = ["run", "init", "create", "studies", "best", "trials", "finalize", "predict"]
    expected += ["report", "dashboard"]
    assert names == expected
    for command in app.registered_commands:
        name = command.name or command.callback.__name__  # type: ignore[union-attr]
        summary = (command.callback.__doc__ or "").split("\n\n")[0]  # type: ignore[union-attr]
        assert "\n" not in summary and summary.endswith("."), name
        code, out, _ = invoke(name, "--help")
        assert code == 0 and f"Usage: hpsearch {name}" in " ".join(out.split()), name
        assert " ".join(summary.split()) in " ".join(out.split()), name
        assert name in overview
