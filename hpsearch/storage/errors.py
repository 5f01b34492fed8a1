"""Database errors, classified in one place: a server that refused for good (bad input), an
error that may pass (dropped connections, restarts, timeouts: retried with backoff), or
neither; and the one line a command prints for each."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import tenacity
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    ProgrammingError,
)

from hpsearch.errors import HpsearchError, Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a running worker keeps retrying one database call.
DB_RETRY_SECONDS = 120.0
# What a database server says when it refuses a connection for good (PostgreSQL, MySQL).
REFUSED = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "Access denied",
    "unsupported startup parameter",
)
# What SQLite says of a file it may not write (a read-only file, folder or disk; no
# permission): a fault of the machine's, not of the moment.
READ_ONLY = (
    "readonly database",
    "unable to open database file",
    "Permission denied",
    "Read-only file system",
)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what caused it, outermost first (Optuna and SQLAlchemy wrap errors)."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def refused(error: BaseException) -> bool:
    """A database that answered and refused for good: wrong credentials, no such database,
    a startup parameter a pooler will not take, a file SQLite may not write. Retrying
    cannot help."""
    return any(sign in str(seen) for seen in _causes(error) for sign in (*REFUSED, *READ_ONLY))


def is_transient_db_error(error: BaseException) -> bool:
    """Dropped connections, restarts, timeouts, a full server: worth retrying (unless the
    server ``refused``). Optuna wraps them in its ``StorageInternalError``, so the whole cause
    chain is searched."""
    if refused(error):
        return False
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


def database_error(error: BaseException) -> HpsearchError | None:
    """``error`` as one line if it is a database error: refused for good (exit code 2), or
    transient and outlasting its retries (75); None for any other error. The innermost cause
    says what happened."""
    if not (refused(error) or is_transient_db_error(error)):
        return None
    *_, root = _causes(error)
    reason = str(root).splitlines()[0] if str(root) else type(root).__name__
    if any(sign in reason for sign in READ_ONLY):
        return HpsearchError(f"cannot write the storage: {reason}")
    if refused(error):
        return HpsearchError(f"the database refused: {reason}")
    return Unavailable(f"lost the database: {reason}")


def user_error(error: BaseException) -> HpsearchError | None:
    """What a command prints in one line for ``error`` (its exit code on the error): an
    ``HpsearchError`` as it is, a database error (``database_error``); None for a bug."""
    if isinstance(error, HpsearchError):
        return error
    return database_error(error)


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
