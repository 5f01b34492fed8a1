"""What the user reads: at 80 columns on a terminal, and in a log file."""

from __future__ import annotations

import io
import re
import time

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.console import Console

from hpsearch.display import RunProgress, best_table, studies_table, summary_table, trials_table
from hpsearch.record import YIELDED
from hpsearch.results.summaries import StudySummary, list_studies
from hpsearch.results.tables import format_params, format_value
from hpsearch.search.progress import StudyProgress
from hpsearch.storage.database import open_storage


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80, force_terminal=terminal, color_system=None), out


def _trial(number: int, state: TrialState, value: float | None) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params={"lr": 0.0031, "dropout": 0.15000000000000002},
        distributions={
            "lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
            "dropout": optuna.distributions.FloatDistribution(0.0, 0.3, step=0.05),
        },
        intermediate_values={1: 0.5, 2: 0.6},
    )


def _progress(new: tuple[optuna.trial.FrozenTrial, ...] = ()) -> StudyProgress:
    return StudyProgress(
        target=200,
        complete=5,
        pruned=7,
        failed=1,
        best_value=0.993421,
        started_at=time.monotonic() - 192,
        trials_this_run=12,
        new_trials=new,
    )


def test_numbers_read_as_numbers() -> None:
    assert format_value(0.15000000000000002) == "0.15"
    assert format_value(123456.7) == "123,457" and format_value(None) == "-"
    # A count reads the same at any size: 31,553 parameters beside 207,873.
    assert (format_value(31553), format_value(2630.0), format_value(999)) == (
        "31,553",
        "2,630",
        "999",
    )
    assert format_value(1234.5) == "1234.5"
    assert format_value(float("nan")) == "-" and format_value(True) == "True"
    assert (
        format_params({"lr": 0.0031, "dropout": 0.15000000000000002}) == "dropout=0.15  lr=0.0031"
    )


def test_live_progress_fits_80_columns() -> None:
    console, out = _console(terminal=True)
    with RunProgress(console, ["val_accuracy"]) as progress:
        progress.update(_progress())
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", out.getvalue())  # cursor movements
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines)
    last = " ".join(lines[-2:])
    for part in ("12/200", "0:00:0", "ETA 0:", "complete 5", "pruned 7", "failed 1"):
        assert part in last, part
    assert "best val_accuracy 0.993421" in last


def test_a_log_gets_a_plain_line_per_finished_trial_as_it_ends() -> None:
    console, out = _console(terminal=False)
    with RunProgress(console, ["val_accuracy"]) as progress:
        done = _trial(12, TrialState.COMPLETE, 0.9912)
        progress.update(_progress((done,)))
        assert "trial" in out.getvalue()  # written at once, not at the end
        progress.update(_progress((_trial(13, TrialState.PRUNED, None),)))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "complete  val_accuracy 0.9912  (12/200 finished, best 0.993421)" in lines[0]
    assert "pruned after epoch 2" in lines[1]
    assert "━" not in out.getvalue()  # no progress bar in a log


def test_verbose_prints_each_trial_with_its_params_on_a_terminal_too() -> None:
    console, out = _console(terminal=True)
    with RunProgress(console, ["val_accuracy"], verbose=True) as progress:
        progress.update(_progress((_trial(3, TrialState.COMPLETE, 0.98),)))
    assert "complete  val_accuracy 0.98" in out.getvalue()
    assert "dropout=0.15  lr=0.0031" in out.getvalue()


def _render(renderable: object) -> list[str]:
    console, out = _console(terminal=False)
    console.print(renderable)
    return out.getvalue().splitlines()


def test_tables_fit_80_columns_with_whole_headers() -> None:
    summary = StudySummary(
        name="house-prices-gaussian-long-name",
        problem="house-prices-gaussian",
        metrics=["val_nll"],
        directions=["minimize"],
        counts={"COMPLETE": 81, "PRUNED": 119, "FAIL": 2, "RUNNING": 0, "WAITING": 0},
        best=11.2934,
    )
    lines = _render(studies_table([summary]))
    assert all(len(line) <= 80 for line in lines)
    assert all(h in lines[2] for h in ("study", "problem, objective", "trials", "best"))
    assert "81 complete" in "".join(lines) and "2 failed" in "".join(lines)

    record = {
        "study": "usps",
        "trial": 7,
        "value": 0.9961,
        "metric": "val_accuracy",
        "params": {"dropout": 0.15000000000000002},
        "config": {"dropout": 0.15000000000000002, "channels": 64},
        "metrics": {"val_accuracy": 0.9961, "seed": 7},
    }
    lines = _render(best_table(record))
    assert lines[0] == "usps: best trial 7, val_accuracy = 0.9961"
    assert any("dropout *" in line and "0.15 " in line for line in lines)
    assert all(len(line) <= 80 for line in lines)

    frame = pd.DataFrame(
        {
            "number": [0, 1],
            "value_val_accuracy": [0.91, float("nan")],
            "state": ["COMPLETE", "PRUNED"],
            "duration": pd.to_timedelta([3.2, 1.0], unit="s"),
            **{f"params_p{i}": [0.1 * i, 0.2] for i in range(12)},  # many params still fit
        }
    )
    lines = _render(trials_table(frame, "usps"))
    assert all(len(line) <= 80 for line in lines)
    header = lines[2]
    for name in ("trial", "state", "val_accuracy", "seconds", "searched params"):
        assert name in header
    assert "3.2" in lines[4] and "p11=1.1" in " ".join(lines)


def test_a_yielded_trial_is_not_counted_as_failed(sqlite_url: str) -> None:
    # A trial that lost the race for the last slot never ran: Optuna stores it as FAIL, but
    # the end-of-run summary and `hpsearch studies` count only the real failure.
    study = optuna.create_study(storage=open_storage(sqlite_url), study_name="raced")
    study.set_user_attr("metric", "value")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    for reason in ("error", YIELDED):
        trial = study.ask()
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    console, out = _console(terminal=False)
    console.print(summary_table(study, ["value"]))
    assert "2 complete, 0 pruned, 1 failed" in out.getvalue()
    (summary,) = [s for s in list_studies(sqlite_url) if s.name == "raced"]
    assert summary.counts["FAIL"] == 1 and summary.counts["COMPLETE"] == 2
