"""The study lock: one lock per study that every worker of a storage shares, a lock file beside
a SQLite database or an advisory lock of the database server."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import sqlalchemy
from sqlalchemy.engine import URL

from hpsearch.storage.urls import connect_args


class StudyLock:
    """A lock around claiming a trial, shared by every worker of a storage."""

    def __init__(self, url: URL, study_name: str) -> None:
        self.url = url
        self.name = f"hpsearch:{study_name}"
        # Advisory locks take a 64-bit integer key.
        self.key = int.from_bytes(
            hashlib.sha256(self.name.encode()).digest()[:8], "big", signed=True
        )
        self._engine: sqlalchemy.Engine | None = None

    def close(self) -> None:
        """Return the lock's database connection, if it has one."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        backend = self.url.get_backend_name()
        if backend == "sqlite":
            with self._file_lock():
                yield
        else:
            with self._advisory_lock(backend):
                yield

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        # SQLite is local: a lock file beside the database serialises its processes.
        path = Path(str(self.url.database)).expanduser()
        with filelock.FileLock(f"{path}.hpsearch-lock"):
            yield

    @contextlib.contextmanager
    def _advisory_lock(self, backend: str) -> Iterator[None]:
        # A session-level lock on a connection of its own: the server releases it if the
        # worker dies while holding it. One pooled connection; if the server dropped it,
        # the claim fails with a transient error and is retried on a new one.
        if self._engine is None:
            self._engine = sqlalchemy.create_engine(
                self.url, pool_size=1, max_overflow=0, connect_args=connect_args(self.url)
            )
        params: dict[str, Any]
        if backend == "postgresql":
            lock = sqlalchemy.text("SELECT pg_advisory_lock(:k)")
            unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:k)")
            params = {"k": self.key}
        else:
            lock = sqlalchemy.text("SELECT GET_LOCK(:n, 600)")
            unlock = sqlalchemy.text("SELECT RELEASE_LOCK(:n)")
            params = {"n": self.name}
        with self._engine.connect() as connection:
            connection.execute(lock, params)
            connection.commit()
            try:
                yield
            finally:
                try:
                    connection.execute(unlock, params)
                    connection.commit()
                except Exception:
                    # A lock whose connection died is released by the server already.
                    connection.invalidate()
