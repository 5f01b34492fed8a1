from __future__ import annotations

import random
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.errors import HpsearchError
from hpsearch.results.report import _focus, ablation_tables, bucket, build_report
from hpsearch.results.tables import finalize_columns, finalize_note
from hpsearch.search.plan import RunPlan
from hpsearch.search.run import run_study
from hpsearch.search.study_file import load_study_file
from hpsearch.settings import resolve_settings

SPACE = {
    "batch_size": CategoricalDistribution([32, 64, 128]),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "optimizer": CategoricalDistribution(["adam", "sgd"]),
    "loss": CategoricalDistribution(["cross_entropy", "mse"]),
    "clip": FloatDistribution(0.0, 15.0),
    "n_layers": IntDistribution(1, 4),
}

SUMMARY: dict[str, Any] = {
    "trial": 7,
    "params": {"lr": 0.003},
    "val_mean": 0.912345678,
    "val_std": 0.0042,
    "test": {"rmse": 0.1234567, "mse": 123456.7, "per_class_accuracy": {"0": 0.9}},
    "ensemble_test": {"rmse": 0.12, "mse": 120000.0},
    "ensemble_size": 9,
    "calibration": {"scale": 1.1134, "test": {"rmse": 0.1234567, "coverage_95": 0.95}},
    "baselines": [
        {"name": "ridge regression", "test": {"rmse": 0.17}, "seconds": 0.1},
        {"name": "gradient boosting", "test": {"rmse": 0.15}, "seconds": 2.0},
    ],
    "train_rows": 1168,
    "test_rows": 292,
    "out": None,
}


def test_buckets() -> None:
    lr = FloatDistribution(1e-4, 1e-1, log=True)
    assert bucket(0.0031, lr) == (1e-3, "1e-03..1e-02")
    assert bucket(0.01, lr)[1] == "1e-02..1e-01"
    assert bucket(300, IntDistribution(16, 1024, log=True))[1] == "100..1000"
    # Choices in their declared order, not alphabetically.
    assert bucket("sgd", CategoricalDistribution(["sgd", "adam"])) == (0, "sgd")
    # Continuous: 5 equal-width bins over [low, high], the top edge in the last one.
    clip = FloatDistribution(0.0, 15.0)
    assert [bucket(v, clip)[1] for v in (0.0, 2.99, 3.0, 7.5, 15.0)] == [
        "0..3",
        "0..3",
        "3..6",
        "6..9",
        "12..15",
    ]
    # Stepped with few values: each value; with many: bins, a value on an edge in the upper one.
    assert bucket(0.15, FloatDistribution(0.0, 0.3, step=0.05))[1] == "0.15"
    assert bucket(0.3, FloatDistribution(0.0, 0.5, step=0.05))[1] == "0.3..0.4"
    assert bucket(3, IntDistribution(1, 4))[1] == "3"
    # Integers with many values: inclusive ranges of whole steps.
    widths = IntDistribution(16, 256, step=16)
    assert [bucket(v, widths)[1] for v in (16, 64, 80, 256)] == [
        "16..64",
        "16..64",
        "80..128",
        "208..256",
    ]
    assert bucket(200, IntDistribution(10, 200))[1] == "166..200"


def test_tables_count_every_trial_and_score_complete_ones() -> None:
    study = optuna.create_study(direction="maximize")
    for optimizer, value, state in [
        ("adam", 0.9, TrialState.COMPLETE),
        ("adam", 0.7, TrialState.COMPLETE),
        ("adam", 0.2, TrialState.PRUNED),
        ("sgd", 0.5, TrialState.COMPLETE),
    ]:
        study.add_trial(
            create_trial(
                params={"optimizer": optimizer},
                distributions={"optimizer": SPACE["optimizer"]},
                value=None if state == TrialState.PRUNED else value,
                intermediate_values={1: value},
                state=state,
            )
        )
    rows = {r.value: r for r in ablation_tables(study)["optimizer"]}
    assert (rows["adam"].trials, rows["adam"].complete) == (3, 2)
    assert rows["adam"].best == 0.9 and rows["adam"].median == pytest.approx(0.8)
    assert (rows["sgd"].trials, rows["sgd"].best) == (1, 0.5)


def _study(n: int = 60) -> optuna.Study:
    """Trials over SPACE with 10-epoch curves: every 5th pruned, every 7th failed."""
    rng = random.Random(0)
    study = optuna.create_study(study_name="synthetic")
    study.set_user_attr("metric", "rmse")
    for number in range(n):
        clip = rng.uniform(0, 15)
        params: dict[str, Any] = {
            "batch_size": rng.choice([32, 64, 128]),
            "lr": 10 ** rng.uniform(-4, -1),
            "optimizer": rng.choice(["adam", "sgd"]),
            "loss": rng.choice(["cross_entropy", "mse"]),
            "clip": clip,
            "n_layers": rng.randint(1, 4),
        }
        final = 0.2 + clip / 30 + rng.random() * 0.1
        # Trial 0 far worse than the rest: the case the old hand-drawn zoom cut off.
        final += 5.0 if number == 0 else 0.0
        curve = {epoch: final + 2.0 / epoch for epoch in range(1, 11)}
        state = TrialState.COMPLETE
        if number % 5 == 4:
            state, curve = TrialState.PRUNED, {1: 3.0, 2: 1e6}  # a diverged run
        elif number % 7 == 6:
            state, curve = TrialState.FAIL, {}
        study.add_trial(
            create_trial(
                params=params,
                distributions=SPACE,
                value=final if state == TrialState.COMPLETE else None,
                intermediate_values=curve,
                state=state,
            )
        )
    return study


def test_continuous_parameters_are_bucketed() -> None:
    study = _study(200)
    finished = study.get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])
    complete = {t.number: t.value for t in finished if t.value is not None}
    tables = ablation_tables(study)
    assert [r.value for r in tables["clip"]] == ["0..3", "3..6", "6..9", "9..12", "12..15"]
    assert [r.value for r in tables["lr"]] == ["1e-04..1e-03", "1e-03..1e-02", "1e-02..1e-01"]
    assert [r.value for r in tables["n_layers"]] == ["1", "2", "3", "4"]
    assert [r.value for r in tables["batch_size"]] == ["32", "64", "128"]
    for name, rows in tables.items():
        assert sum(r.trials for r in rows) == len(finished), name
        assert sum(r.complete for r in rows) == len(complete), name
    # The best of each clip bin is the best complete trial inside it.
    top = tables["clip"][-1]
    assert top.best == min(v for n, v in complete.items() if study.trials[n].params["clip"] >= 12)


def test_build_report_writes_tables_figures_and_page(tmp_path: Path) -> None:
    import matplotlib

    study = _study()
    study.set_user_attr("finalize", SUMMARY)

    def style() -> dict[str, Any]:  # the backend is set on first use, and may be
        return {k: v for k, v in matplotlib.rcParams.items() if not k.startswith("backend")}

    before = style()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = build_report(study, tmp_path / "out")
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert style() == before  # Optuna's ggplot style did not leak out
    out = tmp_path / "out"
    assert page == out / "index.html"
    names = ["history", "importances", *(f"curves-{p}" for p in SPACE if p not in "clip n_layers")]
    for name in names:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, name
    text = page.read_text()
    assert text.count('<img alt="') == len(names) == 6
    assert "<th>ensemble (9)</th>" in text and "<td>123,457</td>" in text
    tables = (out / "tables.md").read_text()
    clip = tables.split("## clip\n")[1].split("\n## ")[0]
    counts = [int(n) for n in re.findall(r"^\| [\d.]+\.\.[\d.]+ \| (\d+) \|", clip, re.M)]
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counts) == 5 and sum(counts) == len(finished)


def test_curves_zoom_keeps_every_complete_trial(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = _study()
    trials = study.get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])
    fig, ax = plt.subplots()
    _focus(ax, trials, maximize=False, score=lambda t: t.value)
    low, high = ax.get_ylim()
    plt.close(fig)
    finals = [t.value for t in trials if t.value is not None]
    assert low < min(finals) and max(finals) < high  # trial 0's 5.x included
    assert high < 1e3  # the diverged run's 1e6 is off-scale


def test_report_refuses_an_empty_study_and_an_unwritable_folder(tmp_path: Path) -> None:
    with pytest.raises(HpsearchError, match="no finished trial"):
        build_report(optuna.create_study(study_name="empty"), Path("r"))
    (tmp_path / "file").write_text("")
    with pytest.raises(HpsearchError, match="cannot write .*: .*file is a file"):
        build_report(_study(5), tmp_path / "file" / "report")


def test_test_columns_have_short_labels() -> None:
    labels = [label for label, _ in finalize_columns(SUMMARY)]
    assert labels == [
        "network",
        "ensemble (9)",
        "sigma x 1.11",
        "ridge regression",
        "gradient boosting",
    ]
    assert [label for label, _ in finalize_columns({**SUMMARY, "ensemble_test": None})][1] == (
        "sigma x 1.11"
    )
    # A study finalized before tasks had several baselines stored one, as "baseline".
    old = {"test": {"rmse": 0.1}, "baseline": {"name": "gradient boosting", "test": {"rmse": 1}}}
    assert [label for label, _ in finalize_columns(old)] == ["network", "gradient boosting"]


def test_finalize_note() -> None:
    note = finalize_note(SUMMARY, "rmse")
    assert note.startswith("## ")
    assert "Trial 7: validation rmse 0.912346 ± 0.0042" in note
    assert "1,168 rows" in note and "292 test rows" in note
    table = [line for line in note.splitlines() if line.startswith("|")]
    assert table[0] == (
        "| metric | network | ensemble (9) | sigma x 1.11 | ridge regression | gradient boosting |"
    )
    # Numeric metrics only (no per_class_accuracy), in first-seen order; "-" where missing.
    assert table[2:] == [
        "| rmse | 0.123457 | 0.12 | 0.123457 | 0.17 | 0.15 |",
        "| mse | 123,457 | 120,000 | - | - | - |",
        "| coverage_95 | - | - | 0.95 | - | - |",
    ]


def test_import_is_cheap() -> None:
    code = (
        "import sys, hpsearch.results.report; "
        "print(sorted(m for m in ('torch', 'matplotlib', 'hpsearch.search', "
        "'hpsearch.results.finalize') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.slow
def test_report_of_a_real_study(tiny_usps_file: Path, sqlite_url: str) -> None:
    config = load_study_file(tiny_usps_file)
    run_study(RunPlan(config, resolve_settings(config, workers=1, storage=sqlite_url, trials=4)))
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
