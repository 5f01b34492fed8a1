"""Storage URLs: parsing and checking one, the password kept out of it, its redacted form for
logs and errors, and the driver's connection options (timeouts, TCP keepalives, no
prepared statements)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from hpsearch.errors import HpsearchError

# A password kept out of the URL (and so out of shell history and process lists); any
# characters work, no URL escaping needed.
PASSWORD_ENV = "HPSEARCH_DB_PASSWORD"
# Or a file holding it (a mounted Kubernetes secret, a Docker secret): the password is then in
# no process's environment. Its last line break is not part of the password.
PASSWORD_FILE_ENV = "HPSEARCH_DB_PASSWORD_FILE"
CONNECT_TIMEOUT_S = 10
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


def connect_args(url: URL) -> dict[str, object]:
    """The driver's connection options: a connect timeout, and on PostgreSQL the keepalives
    above."""
    args: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if url.get_backend_name() == "postgresql":
        args.update(POSTGRES_TCP)
    if url.drivername == "postgresql+psycopg":
        # psycopg prepares a statement run five times on a connection; behind PgBouncer in
        # transaction mode (before 1.21, or without max_prepared_statements) the next
        # transaction may land on a server connection that has it already, or lacks it.
        args["prepare_threshold"] = None
    # SQLAlchemy lets these override the URL's query: keep what the user wrote.
    return {name: value for name, value in args.items() if name not in url.query}


# The storage dialects hpsearch is built and tested for (docs/workers.md#backends).
BACKENDS = ("sqlite", "postgresql")


def redact(url: str) -> str:
    """The URL with everything between its user name and its last ``@`` (the password)
    replaced by ``***``, safe for logs and errors. Read from the raw text, so that a password
    holding an unescaped ``@`` (which SQLAlchemy would split) shows no part of itself."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.startswith("sqlite"):  # a file path: no user part
        return url
    address, question, query = rest.partition("?")
    userinfo, at, host = address.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{question}{query}"


def scrub(message: str, url: URL) -> str:
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
    except (ArgumentError, ValueError):  # not a URL, or a port that is not a number
        raise HpsearchError(
            f"bad storage URL {redact(url)!r}; expected e.g. sqlite:///hpsearch.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise HpsearchError(
            f"unsupported storage {backend} ({redact(url)!r}): hpsearch stores studies in "
            "sqlite:///FILE or postgresql+psycopg://user@host/db"
        )
    if "@" in (parsed.host or ""):
        # SQLAlchemy ends the password at its first "@": the rest would be taken for the host.
        raise HpsearchError(
            f"bad storage URL {redact(url)!r}: write an '@' in the password as %40, or give "
            f"the password in ${PASSWORD_ENV}"
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise HpsearchError("SQLite storage needs a file: sqlite:///path/to/file.db")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    if backend != "sqlite" and parsed.password is None:
        password = _password_from_environment()
        if password is not None:
            parsed = parsed.set(password=password)
    return parsed


def _password_from_environment() -> str | None:
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    path = os.environ.get(PASSWORD_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().removesuffix("\n").removesuffix("\r")
    except OSError as error:
        raise HpsearchError(
            f"cannot read ${PASSWORD_FILE_ENV} {path}: {error.strerror or error}"
        ) from None


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite storage URL; None for a server's."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(str(parsed.database)).expanduser()
