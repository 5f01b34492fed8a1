from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.config import load_study_file, resolve_settings
from hpsearch.errors import HpsearchError
from hpsearch.report import ablation_tables, bucket, build_report
from hpsearch.search import run_study


def test_buckets() -> None:
    assert bucket("lr", 0.0031) == "1e-03..1e-02"
    assert bucket("lr", 0.01) == "1e-02..1e-01"
    assert bucket("dropout", 0.15) == "0.15" and bucket("dropout", 0.0) == "0"
    assert bucket("batch_size", 64) == "64" and bucket("optimizer", "adam") == "adam"


def test_tables_count_every_trial_and_score_complete_ones() -> None:
    study = optuna.create_study(direction="maximize")
    for optimizer, value, state in [
        ("adam", 0.9, "complete"),
        ("adam", 0.7, "complete"),
        ("adam", 0.2, "pruned"),
        ("sgd", 0.5, "complete"),
    ]:
        pruned = state == "pruned"
        study.add_trial(
            optuna.trial.create_trial(
                params={"optimizer": optimizer},
                distributions={
                    "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"])
                },
                value=None if pruned else value,
                intermediate_values={1: value},
                state=optuna.trial.TrialState.PRUNED
                if pruned
                else optuna.trial.TrialState.COMPLETE,
            )
        )
    rows = {r.value: r for r in ablation_tables(study)["optimizer"]}
    assert (rows["adam"].trials, rows["adam"].complete) == (3, 2)
    assert rows["adam"].best == 0.9 and rows["adam"].median == pytest.approx(0.8)
    assert (rows["sgd"].trials, rows["sgd"].best) == (1, 0.5)


def test_report_of_a_real_study(tiny_usps_file: Path, sqlite_url: str) -> None:
    config = load_study_file(tiny_usps_file)
    run_study(config, resolve_settings(config, workers=1, storage=sqlite_url, trials=4))
    result = CliRunner().invoke(app, ["report", "tiny-usps", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    out = Path("report-tiny-usps")
    for name in ("index.html", "tables.md", "history.png", "curves-lr.png", "curves-loss.png"):
        assert (out / name).stat().st_size > 500, name
    page = (out / "index.html").read_text()
    assert page.count("<img") >= 3 and 'src="data:image/png;base64,' in page
    tables = (out / "tables.md").read_text()
    assert "## n_conv_layers" in tables and "## loss" in tables
    counts = [int(n) for n in re.findall(r"^\| (?:1|2) \| (\d+) \|", tables, re.M)]
    assert sum(counts) == 4  # every finished trial is in the depth table once


def test_report_refuses_an_empty_study(sqlite_url: str) -> None:
    study = optuna.create_study(storage=sqlite_url, study_name="empty")
    with pytest.raises(HpsearchError, match="no finished trial"):
        build_report(study, Path("r"))
