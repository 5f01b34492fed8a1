from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

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


def test_storage_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage.storage_url(None) == storage.DEFAULT_STORAGE
    monkeypatch.setenv(storage.STORAGE_ENV, "sqlite:///env.db")
    assert storage.storage_url(None) == "sqlite:///env.db"
    assert storage.storage_url("sqlite:///flag.db") == "sqlite:///flag.db"


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


@pytest.mark.postgres
def test_postgres_plain_scheme_uses_psycopg3() -> None:
    assert storage.parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def test_unreachable_database_fails_fast_without_password() -> None:
    url = "postgresql+psycopg://alice:pa%24%24word@127.0.0.1:1/studies"
    with pytest.raises(HpsearchError, match="cannot reach database") as caught:
        storage.open_storage(url)
    assert "pa$$word" not in str(caught.value) and "pa%24%24word" not in str(caught.value)


@pytest.mark.postgres
def test_wrong_password_message_hides_it(postgres_url: str) -> None:
    # trust auth accepts any password, so use a user that does not exist instead.
    url = "postgresql+psycopg://nosuchuser:hunter2@127.0.0.1:5432/test"
    with pytest.raises(HpsearchError, match="cannot reach database") as caught:
        storage.open_storage(url)
    assert "hunter2" not in str(caught.value)
