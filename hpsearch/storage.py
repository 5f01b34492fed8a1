"""Study storage: one factory that turns a URL into an Optuna RDB storage, with clear errors;
the lock workers share; retries of transient database errors; reading a study's counts.

SQLite files get WAL mode and a busy timeout so several local processes (workers, the
dashboard) can share one; server databases get pre-ping health checks and a bounded pool.
Nothing here imports torch: the commands that only read a study stay fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import filelock
import optuna
import sqlalchemy
import tenacity
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    ProgrammingError,
    SQLAlchemyError,
)

from hpsearch.errors import HpsearchError, Unavailable
from hpsearch.optuna_internals import rdb_of, state_counts, storage_of, study_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A password kept out of the URL (and so out of shell history and process lists); any
# characters work, no URL escaping needed.
PASSWORD_ENV = "HPSEARCH_DB_PASSWORD"
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
# How long a starting worker keeps retrying dropped connections before giving up, and how
# long a running one keeps retrying one database call.
STARTUP_RETRY_S = 30.0
DB_RETRY_SECONDS = 120.0
# Across machines a link can die without a reset. TCP keepalives on both ends (the server's
# set per session through libpq's "options") make each side drop a silent peer in about 25 s,
# and an idle transaction ends after 60 s: a cut-off worker's connection then fails and is
# retried, and the server releases the study lock and row locks it held. Without them a
# partitioned lock holder blocks every other worker for the OS default of two hours.
# The URL's own parameters win (its `options` replaces these). A pooler that refuses the
# `options` startup parameter (PgBouncer) lists it in its ignore_startup_parameters.
POSTGRES_TCP = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: unacknowledged writes give up after 30 s
    "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
    "-c tcp_keepalives_count=3 -c tcp_user_timeout=30000 "
    "-c idle_in_transaction_session_timeout=60s",
}


# What a database server says when it refuses a connection for good (PostgreSQL, MySQL).
REFUSED = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "Access denied",
    "unsupported startup parameter",
)


def connect_args(url: URL) -> dict[str, object]:
    """The driver's connection options: a connect timeout, and on PostgreSQL the keepalives
    above."""
    args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if url.get_backend_name() == "postgresql":
        args.update(POSTGRES_TCP)
    # SQLAlchemy lets these override the URL's query: keep what the user wrote.
    return {name: value for name, value in args.items() if name not in url.query}


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
    url: str,
    *,
    create: bool = True,
    heartbeat_interval: int | None = None,
    on_stale_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """Open the storage at ``url``, creating Optuna's tables if they are missing (unless
    ``create`` is false: a reader creates nothing).

    Args:
        heartbeat_interval: seconds between running trials' heartbeats; a trial silent for
            three intervals is failed, and ``on_stale_trial`` called on it.

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
            # connection dropped by a firewall costs a reconnect, not a crashed worker.
            "pool_pre_ping": True,
            # One connection kept open, more for heartbeat threads while they beat (one per
            # running trial: a trial group has several), plus the study lock's: about 3 per
            # worker in use against the server's max_connections (100 by default).
            "pool_size": 1,
            "max_overflow": 4,
            "pool_recycle": 300,
            "connect_args": connect_args(parsed),
        }
        _check_reachable(parsed)
    if not create and not _has_optuna_tables(parsed):
        raise HpsearchError(f"no study storage at {redact(url)} (run `hpsearch run` first)")
    heartbeat: dict[str, object] = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": 3 * heartbeat_interval,
            "heartbeat_stale_trial_callback": on_stale_trial,
        }

    def connect() -> optuna.storages.RDBStorage:
        # Workers starting together on a new database would race to create its tables;
        # a reader (create=False) creates none.
        lock = StudyLock(parsed, "__schema__")
        try:
            with lock.hold() if create else contextlib.nullcontext(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    parsed.render_as_string(hide_password=False),
                    engine_kwargs=engine_kwargs,
                    skip_table_creation=not create,
                    **heartbeat,  # type: ignore[arg-type]
                )
        finally:
            lock.close()

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
        raise HpsearchError(
            f"cannot open storage {redact(url)}: {_scrub(str(error), parsed)}"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _relax_sqlite_sync(storage.engine)
    return storage


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
            f"cannot open storage {redact(str(parsed))}: {_scrub(str(error), parsed)}"
        ) from None
    finally:
        engine.dispose()


def _check_reachable(parsed: URL) -> None:
    """Connect once before Optuna creates tables, so failures give one clear line."""
    engine = sqlalchemy.create_engine(
        parsed, connect_args=connect_args(parsed), poolclass=sqlalchemy.NullPool
    )
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as error:
        reason = _scrub(str(getattr(error, "orig", error)), parsed)
        # Refused credentials or a missing database are bad input; anything else (no
        # answer, a server starting up or full) may pass.
        refused = any(sign in reason for sign in REFUSED)
        if "unsupported startup parameter" in reason:
            reason += " (a connection pooler: let it ignore 'options'; docs/workers.md)"
        kind = HpsearchError if refused else Unavailable
        raise kind(
            f"cannot reach database {parsed.render_as_string(hide_password=True)}: {reason}"
        ) from None
    except ImportError as error:
        raise HpsearchError(f"database driver missing for {parsed.drivername}: {error}") from None
    finally:
        engine.dispose()


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what caused it, outermost first (Optuna and SQLAlchemy wrap errors)."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def is_transient_db_error(error: BaseException) -> bool:
    """Dropped connections, restarts, timeouts: worth retrying. Optuna wraps them in its
    ``StorageInternalError``, so the whole cause chain is searched."""
    psycopg = sys.modules.get("psycopg")  # not imported: not a psycopg error
    for seen in _causes(error):
        if isinstance(seen, OperationalError | InterfaceError | PendingRollbackError):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if psycopg is not None and isinstance(
            seen, psycopg.OperationalError | psycopg.InterfaceError
        ):
            return True
    return False


def database_lost(error: BaseException) -> Unavailable | None:
    """``error`` as one line (exit code 75) if it is a database error that outlasted its
    retries, else None. The innermost cause says what happened."""
    if not is_transient_db_error(error):
        return None
    *_, root = _causes(error)
    reason = str(root).splitlines()[0] if str(root) else type(root).__name__
    return Unavailable(f"lost the database: {reason}")


def is_schema_race(error: BaseException) -> bool:
    """Two processes creating the same tables at once (possible only if the lock guarding
    table creation was lost with a dropped connection)."""
    return any(isinstance(seen, IntegrityError | ProgrammingError) for seen in _causes(error))


def with_db_retries(
    action: Callable[[], T],
    what: str,
    budget_s: float = DB_RETRY_SECONDS,
    transient: Callable[[BaseException], bool] = is_transient_db_error,
) -> T:
    """Run ``action``, retrying transient database errors with backoff for ``budget_s``."""

    def log(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0
        logger.warning(
            "%s: database error, retrying in %.1fs: %s", what, delay, str(error).splitlines()[0]
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        wait=tenacity.wait_exponential(multiplier=0.5, max=10),
        stop=tenacity.stop_after_delay(budget_s),
        before_sleep=log,
        reraise=True,
    )
    return retrying(action)


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


def count_finished(url: str, study_name: str) -> int:
    """Finished (complete or pruned) trials of the study ``study_name``, read without
    creating anything: 0 where the storage, its tables or the study do not exist yet.

    Raises:
        HpsearchError: a bad URL, or a database server that cannot be reached.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not Path(str(parsed.database)).expanduser().exists():
            return 0
    else:
        _check_reachable(parsed)
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.NullPool)
    try:
        counts = state_counts(engine, study_name=study_name)
    except SQLAlchemyError:  # no Optuna tables yet
        return 0
    finally:
        engine.dispose()
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]


def load_study(name: str, url: str) -> optuna.Study:
    """The study ``name`` in the existing storage at ``url``.

    Raises:
        HpsearchError: no such storage, or no such study in it (the message lists them).
    """
    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise HpsearchError(f"no study named {name!r} in the storage (studies: {names})") from None


def study_counts(study: optuna.Study) -> dict[TrialState, int]:
    """Trials per state, counted by the database itself (a process's trial cache lags
    behind the other workers)."""
    rdb = rdb_of(storage_of(study))
    if rdb is not None:
        return state_counts(rdb.engine, study_id=study_id(study))
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def best_value(study: optuna.Study) -> float | None:
    """The study's best value, None before its first complete trial."""
    try:
        return float(study.best_value)
    except ValueError:
        return None
