"""Opening a storage: one factory that turns a URL into an Optuna RDB storage, with clear errors.

SQLite files get WAL mode and a busy timeout so several local processes (workers, the
dashboard) can share one; server databases get pre-ping health checks and a bounded pool.
Nothing in ``hpsearch.storage`` imports torch: the commands that only read a study stay fast.
"""

from __future__ import annotations

import contextlib
import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy
import tenacity
from optuna.trial import FrozenTrial
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from hpsearch.errors import HpsearchError, Unavailable
from hpsearch.storage.errors import (
    database_error,
    is_schema_race,
    is_transient_db_error,
    with_db_retries,
)
from hpsearch.storage.lock import StudyLock
from hpsearch.storage.urls import connect_args, parse_url, redact, scrub

SQLITE_BUSY_TIMEOUT_S = 60
# How long a starting worker keeps retrying dropped connections before giving up.
STARTUP_RETRY_S = 30.0


def _prepare_sqlite(path: Path, create: bool) -> None:
    if not path.exists():
        if not create:
            raise HpsearchError(f"no study storage at {path} (run `hpsearch run` first)")
        if not path.parent.is_dir():
            raise HpsearchError(f"cannot create SQLite storage {path}: folder does not exist")

    def use_wal() -> None:
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as connection:
            # WAL lets readers (the dashboard, `hpsearch studies`) work beside a writer; the
            # setting is stored in the file, so every later connection uses it too.
            connection.execute("PRAGMA journal_mode=WAL")

    # SQLite answers "database is locked" at once, skipping its busy wait, when this switch
    # meets another connection's write (workers starting together on a new file): retried,
    # without with_db_retries' warning, since this wait is expected and short.
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda error: isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
        ),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=1),
        stop=tenacity.stop_after_delay(SQLITE_BUSY_TIMEOUT_S),
        reraise=True,
    )
    try:
        retrying(use_wal)
    except sqlite3.DatabaseError as error:
        raise HpsearchError(f"cannot open SQLite storage {path}: {error}") from None


def open_storage(
    url: str,
    *,
    create: bool = True,
    heartbeat_interval: int | None = None,
    on_stale_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    pre_ping: bool = True,
) -> optuna.storages.RDBStorage:
    """Open the storage at ``url``, creating Optuna's tables if they are missing (unless
    ``create`` is false: a reader creates nothing).

    Args:
        heartbeat_interval: seconds between running trials' heartbeats; a trial silent for
            three intervals is failed, and ``on_stale_trial`` called on it.
        pre_ping: test a pooled server connection before each use. A worker, which retries
            every database call on a dropped connection (``errors.with_db_retries``), turns
            it off: a stale connection then costs one retry, not a round trip before every
            transaction (a fifth of a trial's).

    Raises:
        HpsearchError: bad URL, missing SQLite file (unless ``create``), unreachable
            database or wrong credentials; the message never contains the password.
    """
    parsed = parse_url(url)
    engine_kwargs: dict[str, object]
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(Path(str(parsed.database)).expanduser(), create)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        engine_kwargs = {
            # Test each pooled connection before use: a database restart or an idle
            # connection dropped by a firewall costs a reconnect, not a failed command.
            "pool_pre_ping": pre_ping,
            # One server connection per worker, heartbeat threads included (they wait their
            # turn for a moment), so a server's max_connections (100 by default) or a
            # pooler's pool bounds the workers, not a multiple of them (docs/workers.md).
            "pool_size": 1,
            "max_overflow": 0,
            "pool_recycle": 300,
            "connect_args": connect_args(parsed),
        }
        check_reachable(parsed)
    if not create and not _has_optuna_tables(parsed):
        raise HpsearchError(f"no study storage at {redact(url)} (run `hpsearch run` first)")
    heartbeat: dict[str, object] = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": 3 * heartbeat_interval,
            "heartbeat_stale_trial_callback": on_stale_trial,
        }
    rendered = parsed.render_as_string(hide_password=False)

    def connect() -> optuna.storages.RDBStorage:
        _prepare_tables(parsed, create, engine_kwargs["connect_args"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                rendered,
                engine_kwargs=engine_kwargs,
                skip_table_creation=True,
                skip_compatibility_check=True,
                **heartbeat,  # type: ignore[arg-type]
            )

    try:
        storage = with_db_retries(
            connect,
            "opening the storage",
            budget_s=STARTUP_RETRY_S,
            transient=lambda e: is_transient_db_error(e) or is_schema_race(e),
        )
    except (SQLAlchemyError, RuntimeError, optuna.exceptions.StorageInternalError) as error:
        if "optuna storage upgrade" in str(error):
            raise HpsearchError(
                f"storage {redact(url)} has an older Optuna schema; back it up, then run: "
                f"optuna storage upgrade --storage '{redact(url)}'"
            ) from None
        # Optuna's wrapper says only "an exception is raised during the commit": name the
        # cause, and exit 75 when it may pass (a server out of connections, say).
        found = database_error(error)
        kind = type(found) if found is not None else HpsearchError
        reason = str(found) if found is not None else str(error)
        raise kind(f"cannot open storage {redact(url)}: {scrub(reason, parsed)}") from None
    if parsed.get_backend_name() == "sqlite":
        _relax_sqlite_sync(storage.engine)
    return storage


def _prepare_tables(parsed: URL, create: bool, driver_args: object) -> None:
    """Create Optuna's tables if they are missing (under the schema lock: workers starting
    together on a new database would race), and check their schema version.

    Done by a storage of its own without a pool, because Optuna's set-up and schema check
    each hold two connections at once and the worker's storage has one.
    """
    engine_kwargs = {"poolclass": sqlalchemy.NullPool, "connect_args": driver_args}
    engine = sqlalchemy.create_engine(parsed, **engine_kwargs)
    try:
        # Optuna stamps alembic_version last: once it is there, the tables are complete.
        missing = create and not sqlalchemy.inspect(engine).has_table("alembic_version")
    finally:
        engine.dispose()
    with StudyLock(parsed, "__schema__").hold() if missing else contextlib.nullcontext():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            setup = optuna.storages.RDBStorage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs,
                skip_table_creation=not missing,
            )
        setup.engine.dispose()


def _relax_sqlite_sync(engine: sqlalchemy.Engine) -> None:
    """Commit without waiting for the disk: in WAL mode a killed process loses nothing
    (the OS has the writes); only a power loss can undo the last commits."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _set(connection: sqlite3.Connection, _record: object) -> None:
        connection.execute("PRAGMA synchronous=NORMAL")

    engine.dispose()  # pooled connections opened before the listener get it too


def _has_optuna_tables(parsed: URL) -> bool:
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.NullPool)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    except SQLAlchemyError as error:
        raise HpsearchError(
            f"cannot open storage {redact(str(parsed))}: {scrub(str(error), parsed)}"
        ) from None
    finally:
        engine.dispose()


def wait_for_database(url: str, wait_s: float) -> None:
    """A worker's or set-up job's first contact: a server not up yet (still starting,
    restarting, re-attaching its volume) or full is tried again, with the growing pause of
    ``with_db_retries``, for ``wait_s`` seconds. Refused credentials or a missing database
    fail at once.

    Raises:
        HpsearchError: refused, or ``Unavailable`` (exit code 75) once ``wait_s`` is spent.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" or wait_s <= 0:
        return
    with_db_retries(
        lambda: check_reachable(parsed),
        "waiting for the database",
        budget_s=wait_s,
        transient=lambda error: isinstance(error, Unavailable),
    )


def check_reachable(parsed: URL) -> None:
    """Connect once before Optuna creates tables, so failures give one clear line."""
    engine = sqlalchemy.create_engine(
        parsed, connect_args=connect_args(parsed), poolclass=sqlalchemy.NullPool
    )
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as error:
        reason = scrub(str(getattr(error, "orig", error)), parsed)
        if "unsupported startup parameter" in reason:
            reason += " (a connection pooler: let it ignore 'options'; docs/workers.md)"
        # Refused credentials or a missing database are bad input; no answer, a server
        # starting up or full may pass.
        kind = Unavailable if is_transient_db_error(error) else HpsearchError
        raise kind(
            f"cannot reach database {parsed.render_as_string(hide_password=True)}: {reason}"
        ) from None
    except ImportError as error:
        raise HpsearchError(f"database driver missing for {parsed.drivername}: {error}") from None
    finally:
        engine.dispose()
