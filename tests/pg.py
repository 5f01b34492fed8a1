"""A throw-away PostgreSQL database, for tests and benchmarks that need an empty one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy


@contextmanager
def fresh_database(server_url: str, prefix: str = "hpsearch") -> Iterator[str]:
    """Create an empty database on the server of ``server_url``; yield its URL; drop it."""
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sqlalchemy.make_url(server_url).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
