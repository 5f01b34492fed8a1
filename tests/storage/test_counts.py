"""Reading a study without its trials (hpsearch.storage.counts)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from hpsearch.errors import HpsearchError
from hpsearch.storage.counts import best_value, count_finished, load_study, study_counts
from hpsearch.storage.database import open_storage


def test_load_study_lists_the_studies_there(sqlite_url: str) -> None:
    optuna.create_study(storage=open_storage(sqlite_url), study_name="here")
    assert load_study("here", sqlite_url).study_name == "here"
    with pytest.raises(HpsearchError, match=r"no study named 'there' .*\(studies: here\)"):
        load_study("there", sqlite_url)


def test_study_counts_read_the_database(sqlite_url: str) -> None:
    study = optuna.create_study(storage=open_storage(sqlite_url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study.enqueue_trial({"x": 0.5})
    counts = study_counts(study)
    assert counts[optuna.trial.TrialState.COMPLETE] == 3
    assert counts[optuna.trial.TrialState.WAITING] == 1
    assert best_value(study) == study.best_value
    assert best_value(optuna.create_study()) is None


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
