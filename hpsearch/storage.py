"""Study storage: one factory that turns a URL into an Optuna RDB storage, with clear errors.

SQLite files get WAL mode and a busy timeout so several local processes (workers, the
dashboard) can share one; server databases get pre-ping health checks and a bounded pool.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hpsearch.errors import HpsearchError

logger = logging.getLogger(__name__)

STORAGE_ENV = "HPSEARCH_STORAGE"
# A password kept out of the URL (and so out of shell history and process lists); any
# characters work, no URL escaping needed.
PASSWORD_ENV = "HPSEARCH_DB_PASSWORD"
DEFAULT_HEARTBEAT_S = 10
DEFAULT_STORAGE = "sqlite:///hpsearch.db"
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
# How long a starting worker keeps retrying dropped connections before giving up.
STARTUP_RETRY_S = 30.0


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
    if backend != "sqlite" and parsed.password is None and os.environ.get(PASSWORD_ENV):
        parsed = parsed.set(password=os.environ[PASSWORD_ENV])
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


def open_storage(
    url: str, *, create: bool = True, heartbeat_interval: int | None = None
) -> optuna.storages.RDBStorage:
    """Open the storage at ``url``, creating Optuna's tables if they are missing.

    Args:
        heartbeat_interval: seconds between running trials' heartbeats; a trial silent for
            three intervals is failed and retried once with the same params.

    Raises:
        HpsearchError: bad URL, missing SQLite file (unless ``create``), unreachable
            database or wrong credentials; the message never contains the password.
    """
    from hpsearch.workers import (
        StudyLock,
        is_schema_race,
        is_transient_db_error,
        retry_trial,
        with_db_retries,
    )

    parsed = parse_url(url)
    engine_kwargs: dict[str, object]
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(Path(str(parsed.database)).expanduser(), create)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        engine_kwargs = {
            # Test each pooled connection before use: a database restart or an idle
            # connection dropped by a firewall costs a reconnect, not a crashed worker.
            "pool_pre_ping": True,
            "pool_size": 2,
            "max_overflow": 2,
            "pool_recycle": 300,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
        _check_reachable(parsed)
    heartbeat: dict[str, object] = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": 3 * heartbeat_interval,
            "heartbeat_stale_trial_callback": retry_trial,
        }

    def connect() -> optuna.storages.RDBStorage:
        # Workers starting together on a new database would race to create its tables.
        lock = StudyLock(parsed, "__schema__")
        try:
            with lock.hold(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    parsed.render_as_string(hide_password=False),
                    engine_kwargs=engine_kwargs,
                    **heartbeat,  # type: ignore[arg-type]
                )
        finally:
            lock.close()

    try:
        return with_db_retries(
            connect,
            "opening the storage",
            budget_s=STARTUP_RETRY_S,
            transient=lambda e: is_transient_db_error(e) or is_schema_race(e),
        )
    except (SQLAlchemyError, RuntimeError, optuna.exceptions.StorageInternalError) as error:
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
