"""What several workers on one study need: a claim lock, heartbeats, retries of crashed
trials, database-error retries, signal handling, and a local pool of worker processes.

Each worker claims a trial inside a study-wide lock (a file lock for SQLite, an advisory lock
for PostgreSQL and MySQL) and only while ``finished + running < trials``, so the study ends
with exactly ``trials`` finished trials however many workers join, and whenever.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import optuna
import psycopg
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    ProgrammingError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A crashed or interrupted trial runs once more with the same params (attempt 2).
MAX_ATTEMPTS = 2
DB_RETRY_SECONDS = 120.0


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial again with the same params, unless it already had its retry.

    The copy carries ``retry_of`` (the first trial of the series: its seed and checkpoint key)
    and ``attempt``. Used for heartbeat-stale trials and for interrupted ones.
    """
    attempt = int(trial.user_attrs.get("attempt", 1))
    if attempt >= MAX_ATTEMPTS:
        logger.warning("trial %d failed on attempt %d; not retried", trial.number, attempt)
        return
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
    user_attrs.update(retry_of=trial.user_attrs.get("retry_of", trial.number), attempt=attempt + 1)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            intermediate_values=trial.intermediate_values,
        )
    )
    logger.warning("trial %d failed; queued a retry with the same params", trial.number)


def is_transient_db_error(error: BaseException) -> bool:
    """Dropped connections, restarts, timeouts: worth retrying. Optuna wraps them in its
    ``StorageInternalError``, so the whole cause chain is searched."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OperationalError | InterfaceError | PendingRollbackError):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_schema_race(error: BaseException) -> bool:
    """Two processes creating the same tables at once (possible only if the lock guarding
    table creation was lost with a dropped connection)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, IntegrityError | ProgrammingError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def with_db_retries(
    action: Callable[[], T],
    what: str,
    budget_s: float = DB_RETRY_SECONDS,
    transient: Callable[[BaseException], bool] = is_transient_db_error,
) -> T:
    """Run ``action``, retrying transient database errors with backoff for ``budget_s``."""
    deadline = time.monotonic() + budget_s
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as error:
            if not transient(error) or time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "%s: database error, retrying in %.1fs: %s", what, delay, str(error).splitlines()[0]
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


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
        # SQLite is local: an flock beside the database file serialises its processes.
        path = Path(str(self.url.database)).expanduser()
        with open(f"{path}.hpsearch-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _advisory_lock(self, backend: str) -> Iterator[None]:
        # A session-level lock on a connection of its own: the server releases it if the
        # worker dies while holding it. One pooled connection, health-checked before use.
        if self._engine is None:
            self._engine = sqlalchemy.create_engine(
                self.url,
                pool_size=1,
                max_overflow=0,
                pool_pre_ping=True,
                connect_args={"connect_timeout": 10},
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


class Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds in a thread.

    A database error does not kill the thread: it logs and tries again sooner.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
                wait = self.interval
            except Exception as error:
                logger.warning(
                    "heartbeat for trial %d failed, retrying: %s",
                    self.trial_id,
                    str(error).splitlines()[0],
                )
                wait = min(1.0, self.interval)
            self._stop.wait(wait * random.uniform(0.9, 1.0))


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT): stop after marking the running trial."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Interrupted`` in the main thread while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        # One interrupt is enough: a second (Ctrl-C, then the pool's SIGTERM) must not cut
        # short the clean-up that marks the running trial.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int, cores: int | None = None) -> int:
    """CPU threads per local worker so that workers x threads <= cores."""
    cores = cores or usable_cores()
    return max(1, cores // max(workers, 1))


# A GPU worker's share of device memory: the CUDA context (~0.5 GiB), the data set on the
# device, and the largest default model's weights, activations and optimizer state.
GPU_WORKER_BYTES = 2 * 1024**3
MAX_WORKERS_PER_GPU = 8


def auto_workers(device_type: str, cores: int | None = None) -> int:
    """The default number of local workers.

    CPU: one single-threaded worker per core. Small models scale badly over threads (the
    report's USPS model trains 1.4x faster per core as 2 one-thread workers than as one
    two-thread worker; the house-price MLP 2x), so whole trials in parallel win
    (benchmarks/workers.py measures it).
    CUDA: per visible GPU, as many workers as its free memory holds at ``GPU_WORKER_BYTES``
    each, at most ``MAX_WORKERS_PER_GPU`` and at most one per CPU core (each worker's Python
    thread launches its kernels).
    """
    cores = cores or usable_cores()
    if device_type != "cuda":
        return cores
    import torch

    per_gpu = []
    for index in range(torch.cuda.device_count()):
        free, _total = torch.cuda.mem_get_info(index)
        per_gpu.append(max(1, min(MAX_WORKERS_PER_GPU, free // GPU_WORKER_BYTES)))
    return max(1, min(sum(per_gpu), cores))
