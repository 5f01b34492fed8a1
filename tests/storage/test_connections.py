"""Bounded connections: a worker holds one server connection (heartbeats included), and
workers run behind PgBouncer in transaction mode with the exact total kept.

The server's own count of client connections (pg_stat_activity) is sampled every 20 ms while
cheap worker processes (tests/cheap_worker.py) run a study.
"""

from __future__ import annotations

import pytest

from tests.cheap_worker import spawn
from tests.servers import fresh_database, pgbouncer, sampled_connections
from tests.storage.test_storage_contract import check_exact, finish

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_worker_holds_one_server_connection(postgres_url: str) -> None:
    workers, trials = 6, 30
    with fresh_database(postgres_url) as url, sampled_connections(url, busy=workers) as peaks:
        finish(spawn(url, "one-each", trials, workers, seconds=0.3))
        check_exact(url, "one-each", trials)
    # In a trial, heartbeat thread beating: one connection per worker. At start-up a worker
    # holds a second one for a moment, for the lock that creates the tables and study once.
    assert 0 < peaks.running <= workers, vars(peaks)
    assert peaks.overall <= 2 * workers, vars(peaks)


def test_workers_behind_pgbouncer_keep_the_total_and_the_pool(postgres_url: str) -> None:
    workers, trials, pool = 10, 40, 3
    with fresh_database(postgres_url) as direct, pgbouncer(direct, pool_size=pool) as url:
        with sampled_connections(direct) as peaks:
            finish(spawn(url, "pooled", trials, workers, seconds=0.1))
        check_exact(direct, "pooled", trials)
    assert 0 < peaks.overall <= pool, vars(peaks)
