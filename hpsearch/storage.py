"""Study storage: one factory that turns a URL into an Optuna RDB storage, with clear errors.

SQLite files get WAL mode and a busy timeout so several local processes (workers, the
dashboard) can share one; server databases get pre-ping health checks and a bounded pool.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hpsearch.errors import HpsearchError

logger = logging.getLogger(__name__)

STORAGE_ENV = "HPSEARCH_STORAGE"
DEFAULT_STORAGE = "sqlite:///hpsearch.db"
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable storage URL>"


def _scrub(message: str, url: URL) -> str:
    if url.password:
        message = message.replace(str(url.password), "***")
    return message.splitlines()[0] if message else message


def parse_url(url: str) -> URL:
    """Parse and sanity-check a storage URL.

    Raises:
        HpsearchError: not a database URL hpsearch can use.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise HpsearchError(
            f"bad storage URL {redact(url)!r}; expected e.g. sqlite:///hpsearch.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise HpsearchError(f"unsupported storage {redact(url)!r}: use sqlite, postgresql or mysql")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise HpsearchError("SQLite storage needs a file: sqlite:///path/to/file.db")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    return parsed


def _prepare_sqlite(path: Path, create: bool) -> None:
    if not path.exists():
        if not create:
            raise HpsearchError(f"no study storage at {path} (run `hpsearch run` first)")
        if not path.parent.is_dir():
            raise HpsearchError(f"cannot create SQLite storage {path}: folder does not exist")
    try:
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
            # WAL lets readers (the dashboard, `hpsearch studies`) work beside a writer; the
            # setting is stored in the file, so every later connection uses it too.
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as error:
        raise HpsearchError(f"cannot open SQLite storage {path}: {error}") from None


def open_storage(url: str, *, create: bool = True) -> optuna.storages.RDBStorage:
    """Open (and, if ``create``, initialise) the storage at ``url``.

    Raises:
        HpsearchError: bad URL, missing SQLite file (when not ``create``), unreachable
            database or wrong credentials; the message never contains the password.
    """
    parsed = parse_url(url)
    engine_kwargs: dict[str, object]
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(Path(str(parsed.database)).expanduser(), create)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        engine_kwargs = {
            "pool_pre_ping": True,
            "pool_size": 2,
            "max_overflow": 2,
            "pool_recycle": 300,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
        _check_reachable(parsed)
    try:
        return optuna.storages.RDBStorage(
            parsed.render_as_string(hide_password=False),
            engine_kwargs=engine_kwargs,
            skip_table_creation=not create,
        )
    except (SQLAlchemyError, RuntimeError) as error:
        raise HpsearchError(
            f"cannot open storage {redact(url)}: {_scrub(str(error), parsed)}"
        ) from None


def _check_reachable(parsed: URL) -> None:
    """Connect once before Optuna creates tables, so failures give one clear line."""
    engine = sqlalchemy.create_engine(
        parsed, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, poolclass=sqlalchemy.NullPool
    )
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as error:
        reason = _scrub(str(getattr(error, "orig", error)), parsed)
        raise HpsearchError(
            f"cannot reach database {parsed.render_as_string(hide_password=True)}: {reason}"
        ) from None
    except ImportError as error:
        raise HpsearchError(f"database driver missing for {parsed.drivername}: {error}") from None
    finally:
        engine.dispose()


def storage_url(url: str | None) -> str:
    """The storage to use: the argument, else ``$HPSEARCH_STORAGE``, else ./hpsearch.db."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
