"""The set-up lock: serialises creating a storage's tables and a study once when workers start
together. A lock file beside a SQLite database, an advisory lock of the database server.

Claims do not take it: the exact total comes from the trial ids' order (``search.coordinator``).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import filelock
import sqlalchemy
from sqlalchemy.engine import URL

from hpsearch.storage.urls import connect_args

# Between tries of a held lock, growing: a waiter holds no server connection in between
# (through PgBouncer), and many waiters do not swamp the server.
POLL_S = (0.05, 1.0)


class StudyLock:
    """A lock named after a study (or ``__schema__``), shared by every worker of a storage."""

    def __init__(self, url: URL, study_name: str) -> None:
        self.url = url
        self.name = f"hpsearch:{study_name}"
        # Advisory locks take a 64-bit integer key.
        self.key = int.from_bytes(
            hashlib.sha256(self.name.encode()).digest()[:8], "big", signed=True
        )

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        backend = self.url.get_backend_name()
        if backend == "sqlite":
            # SQLite is local: a lock file beside the database serialises its processes.
            path = Path(str(self.url.database)).expanduser()
            with filelock.FileLock(f"{path}.hpsearch-lock"):
                yield
            return
        # One connection for the whole wait: a try is a query, not a new connection.
        engine = sqlalchemy.create_engine(
            self.url, pool_size=1, max_overflow=0, connect_args=connect_args(self.url)
        )
        try:
            if backend == "postgresql":
                with _postgres_lock(engine, self.key):
                    yield
            else:
                with _mysql_lock(engine, self.name):
                    yield
        finally:
            engine.dispose()


@contextlib.contextmanager
def _postgres_lock(engine: sqlalchemy.Engine, key: int) -> Iterator[None]:
    # A transaction-level lock, tried and not waited for: it works through PgBouncer in
    # transaction mode (a session lock would stay on a server connection other clients then
    # share), and the server releases it when the transaction ends, the worker dies or the
    # link is cut (idle_in_transaction_session_timeout, keepalives).
    try_lock = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:k)")
    pause = POLL_S[0]
    while True:
        connection = engine.connect()
        try:
            if connection.execute(try_lock, {"k": key}).scalar_one():
                break
            connection.rollback()
        except BaseException:
            connection.close()
            raise
        connection.close()
        time.sleep(pause * random.uniform(0.5, 1.0))
        pause = min(pause * 1.5, POLL_S[1])
    try:
        yield
    finally:
        try:
            connection.commit()
        except Exception:
            connection.invalidate()  # its transaction, and the lock, ended with the link
        connection.close()


@contextlib.contextmanager
def _mysql_lock(engine: sqlalchemy.Engine, name: str) -> Iterator[None]:
    # MySQL has no transaction-level lock: a session lock on a connection of its own, which
    # the server releases if the worker dies holding it.
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT GET_LOCK(:n, 600)"), {"n": name})
        try:
            yield
        finally:
            try:
                connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
            except Exception:
                connection.invalidate()
