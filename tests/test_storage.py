from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hpsearch import storage
from hpsearch.errors import HpsearchError


def test_redact_hides_password() -> None:
    url = "postgresql+psycopg://alice:s3cr%40t@db.example:5432/studies"
    assert "s3cr" not in storage.redact(url)
    assert "***" in storage.redact(url)


def test_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(HpsearchError, match="bad storage URL"):
        storage.open_storage("not a url")
    with pytest.raises(HpsearchError, match="unsupported storage"):
        storage.open_storage("redis://localhost")
    with pytest.raises(HpsearchError, match="needs a file"):
        storage.open_storage("sqlite://")
    with pytest.raises(HpsearchError, match="folder does not exist"):
        storage.open_storage(f"sqlite:///{tmp_path}/nowhere/x.db")
    with pytest.raises(HpsearchError, match="no study storage"):
        storage.open_storage(f"sqlite:///{tmp_path}/x.db", create=False)
    assert not (tmp_path / "x.db").exists()


def test_sqlite_uses_wal(sqlite_url: str, tmp_path: Path) -> None:
    store = storage.open_storage(sqlite_url)
    optuna.create_study(storage=store, study_name="s")
    with sqlite3.connect(tmp_path / "studies.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HpsearchError, match="cannot open SQLite storage"):
        storage.open_storage(f"sqlite:///{path}")


def test_load_study_lists_the_studies_there(sqlite_url: str) -> None:
    optuna.create_study(storage=storage.open_storage(sqlite_url), study_name="here")
    assert storage.load_study("here", sqlite_url).study_name == "here"
    with pytest.raises(HpsearchError, match=r"no study named 'there' .*\(studies: here\)"):
        storage.load_study("there", sqlite_url)


def test_study_counts_read_the_database(sqlite_url: str) -> None:
    study = optuna.create_study(storage=storage.open_storage(sqlite_url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study.enqueue_trial({"x": 0.5})
    counts = storage.study_counts(study)
    assert counts[optuna.trial.TrialState.COMPLETE] == 3
    assert counts[optuna.trial.TrialState.WAITING] == 1
    assert storage.best_value(study) == study.best_value
    assert storage.best_value(optuna.create_study()) is None


@pytest.mark.postgres
def test_postgres_roundtrip(postgres_url: str) -> None:
    url = postgres_url
    store = storage.open_storage(url)
    name = "hpsearch-test-roundtrip"
    try:
        optuna.delete_study(study_name=name, storage=store)
    except KeyError:
        pass
    study = optuna.create_study(storage=store, study_name=name)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert len(optuna.load_study(study_name=name, storage=store).trials) == 3
    optuna.delete_study(study_name=name, storage=store)
    # Both ends drop a silent peer (a worker cut off from another machine): see POSTGRES_TCP.
    with store.engine.connect() as connection:
        expected = {
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_count": "3",
            "idle_in_transaction_session_timeout": "1min",
        }
        show = {n: connection.execute(sqlalchemy.text(f"SHOW {n}")).scalar() for n in expected}
        assert show == expected


@pytest.mark.postgres
def test_postgres_plain_scheme_uses_psycopg3() -> None:
    assert storage.parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def test_unreachable_database_fails_fast_without_password() -> None:
    url = "postgresql+psycopg://alice:pa%24%24word@127.0.0.1:1/studies"
    with pytest.raises(HpsearchError, match="cannot reach database") as caught:
        storage.open_storage(url)
    assert "pa$$word" not in str(caught.value) and "pa%24%24word" not in str(caught.value)
    assert caught.value.exit_code == 75  # nothing answered: may pass


@pytest.mark.postgres
def test_wrong_password_message_hides_it(postgres_url: str) -> None:
    # trust auth accepts any password, so use a user that does not exist instead.
    url = "postgresql+psycopg://nosuchuser:hunter2@127.0.0.1:5432/test"
    with pytest.raises(HpsearchError, match="cannot reach database") as caught:
        storage.open_storage(url)
    assert "hunter2" not in str(caught.value)
    assert caught.value.exit_code == 2  # the server refused: bad input


def test_count_finished_reads_without_creating(sqlite_url: str, tmp_path: Path) -> None:
    """What `hpsearch run` checks before loading data: it must create nothing."""
    assert storage.count_finished(sqlite_url, "s") == 0
    assert not (tmp_path / "studies.db").exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a database without Optuna's tables
    assert storage.count_finished(f"sqlite:///{empty}", "s") == 0
    with sqlite3.connect(empty) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
    study = optuna.create_study(storage=storage.open_storage(sqlite_url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert storage.count_finished(sqlite_url, "s") == 3
    assert storage.count_finished(sqlite_url, "other") == 0


def test_readers_create_no_tables(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(HpsearchError, match="no study storage at sqlite:///.*empty.db"):
        storage.open_storage(f"sqlite:///{path}", create=False)
    with sqlite3.connect(path) as connection:
        assert "studies" not in str(connection.execute("SELECT name FROM sqlite_master").fetchall())


def test_the_urls_own_parameters_win_over_the_keepalives() -> None:
    url = storage.parse_url("postgresql://u@h/db?options=-c%20work_mem%3D8MB&keepalives_idle=30")
    args = storage.connect_args(url)
    assert "options" not in args and "keepalives_idle" not in args  # the URL's are used
    assert args["keepalives"] == 1 and args["tcp_user_timeout"] == 30_000
    default = storage.connect_args(storage.parse_url("postgresql://u@h/db"))
    assert "-c tcp_keepalives_idle=10" in str(default["options"])
