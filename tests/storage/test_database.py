"""Opening a storage (hpsearch.storage.database): SQLite WAL, PostgreSQL, clear errors."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hpsearch.errors import HpsearchError, Unavailable
from hpsearch.storage.database import open_storage, wait_for_database
from tests.servers import own_postgres


def test_sqlite_uses_wal(sqlite_url: str, tmp_path: Path) -> None:
    store = open_storage(sqlite_url)
    optuna.create_study(storage=store, study_name="s")
    with sqlite3.connect(tmp_path / "studies.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_switching_to_wal_waits_for_another_processs_write(tmp_path: Path) -> None:
    """SQLite refuses the switch at once, without its busy wait, while another connection
    holds a write lock (workers starting together on a new file; a CI run failed on it)."""
    path = tmp_path / "busy.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, lambda: writer.execute("COMMIT")).start()
    open_storage(f"sqlite:///{path}")
    writer.close()
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HpsearchError, match="cannot open SQLite storage"):
        open_storage(f"sqlite:///{path}")


@pytest.mark.postgres
def test_postgres_roundtrip(postgres_url: str) -> None:
    url = postgres_url
    store = open_storage(url)
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


def test_unreachable_database_fails_fast_without_password() -> None:
    url = "postgresql+psycopg://alice:pa%24%24word@127.0.0.1:1/studies"
    with pytest.raises(HpsearchError, match="cannot reach database") as caught:
        open_storage(url)
    assert "pa$$word" not in str(caught.value) and "pa%24%24word" not in str(caught.value)
    assert caught.value.exit_code == 75  # nothing answered: may pass


@pytest.mark.postgres
def test_wrong_password_message_hides_it(postgres_url: str) -> None:
    # trust auth accepts any password, so use a user that does not exist instead.
    url = "postgresql+psycopg://nosuchuser:hunter2@127.0.0.1:5432/test"
    with pytest.raises(HpsearchError, match="cannot reach database") as caught:
        open_storage(url)
    assert "hunter2" not in str(caught.value)
    assert caught.value.exit_code == 2  # the server refused: bad input


def test_readers_create_no_tables(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(HpsearchError, match="no study storage at sqlite:///.*empty.db"):
        open_storage(f"sqlite:///{path}", create=False)
    with sqlite3.connect(path) as connection:
        assert "studies" not in str(connection.execute("SELECT name FROM sqlite_master").fetchall())


@pytest.mark.postgres
def test_first_contact_waits_for_a_server_started_late() -> None:
    # A worker pod that starts before its PostgreSQL (or while it restarts) waits for it, up
    # to $HPSEARCH_DB_WAIT, rather than exiting 75 at once and spending a retry.
    with own_postgres(start=False) as (url, ctl):
        env = {**os.environ, "HPSEARCH_DB_WAIT": "120"}
        create = subprocess.Popen(
            [sys.executable, "-m", "hpsearch", "create", "usps", "--storage", url],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert create.stderr is not None
        first = create.stderr.readline()  # blocks until it has tried once and failed
        assert "waiting for the database" in first and "Connection refused" in first
        time.sleep(3)
        assert create.poll() is None  # still waiting
        subprocess.run([*ctl, "start"], check=True, capture_output=True)
        _, err = create.communicate(timeout=120)
        assert create.returncode == 0, first + err
        assert optuna.get_all_study_names(url) == ["usps"]


def test_wait_for_database_gives_up_with_75() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach database"):
        wait_for_database("postgresql+psycopg://bob@127.0.0.1:1/x", wait_s=2)
    assert time.monotonic() - started < 30


def test_a_file_sqlite_may_not_write_is_bad_input_not_a_passing_fault() -> None:
    from sqlalchemy.exc import OperationalError

    from hpsearch.storage.errors import database_error, is_transient_db_error

    cause = sqlite3.OperationalError("attempt to write a readonly database")
    readonly = OperationalError("INSERT", {}, cause)
    readonly.__cause__ = cause  # as SQLAlchemy raises it: from the driver's error
    assert not is_transient_db_error(readonly)  # no minutes of retries
    failure = database_error(readonly)
    assert failure is not None and failure.exit_code == 2
    assert str(failure) == "cannot write the storage: attempt to write a readonly database"
