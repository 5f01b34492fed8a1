"""Reading a study without its trials (hpsearch.storage.counts)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from hpsearch.errors import HpsearchError
from hpsearch.record import study_counts
from hpsearch.storage.counts import best_value, count_finished, load_study
from hpsearch.storage.database import open_storage


def test_load_study_lists_the_studies_there(sqlite_url: str) -> None:
    optuna.create_study(storage=open_storage(sqlite_url), study_name="here")
    assert load_study("here", sqlite_url).study_name == "here"
    with pytest.raises(HpsearchError, match=r"no study named 'there' .*\(studies: here\)"):
        load_study("there", sqlite_url)


def test_study_counts_read_the_database(sqlite_url: str) -> None:
    study = optuna.create_study(storage=open_storage(sqlite_url))
    for x in (0.7, 0.2, 0.9):
        study.enqueue_trial({"x": x})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study.enqueue_trial({"x": 0.5})
    # Counted by the database: another process's handle, whose cache is empty, agrees.
    other = optuna.load_study(study_name=study.study_name, storage=sqlite_url)
    for handle in (study, other):
        counts = study_counts(handle)
        assert counts[optuna.trial.TrialState.COMPLETE] == 3
        assert counts[optuna.trial.TrialState.WAITING] == 1
    assert best_value(study) == 0.2  # minimized


def test_best_value_is_the_best_feasible_and_none_without_one() -> None:
    assert best_value(optuna.create_study()) is None
    study = optuna.create_study(direction="maximize")
    for value, size in ((0.9, 5.0), (0.4, 1.0), (0.6, 2.0)):
        trial = study.ask()
        trial.set_constraint("size", size - 2.0)  # size <= 2
        study.tell(trial, value)
    assert best_value(study) == 0.6  # 0.9 breaks its limit
    two = optuna.create_study(directions=["maximize", "minimize"])
    two.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=1)
    assert best_value(two) is None  # a front, not a value


def test_count_finished_reads_without_creating(sqlite_url: str, tmp_path: Path) -> None:
    """What `hpsearch run` checks before loading data: it must create nothing."""
    assert count_finished(sqlite_url, "s") == 0
    assert not (tmp_path / "studies.db").exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a database without Optuna's tables
    assert count_finished(f"sqlite:///{empty}", "s") == 0
    with sqlite3.connect(empty) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
    study = optuna.create_study(storage=open_storage(sqlite_url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert count_finished(sqlite_url, "s") == 3
    assert count_finished(sqlite_url, "other") == 0
