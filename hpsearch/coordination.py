"""The protocol of a trial across workers: claim under the study's exact total, heartbeat,
stale-trial detection, one retry with the same params and seed, and a clean stop on signals.

Each worker claims a trial inside a study-wide lock (``storage.StudyLock``) and only while
``finished + running < trials``, so the study ends with exactly ``trials`` finished trials
however many workers join, and whenever. (Optuna's ``MaxTrialsCallback`` overshoots by up to
workers - 1.)
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import random
import signal
import threading
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Literal

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from hpsearch.storage import StudyLock, rdb_storage, study_counts, with_db_retries

logger = logging.getLogger(__name__)

# A crashed or interrupted trial runs once more with the same params (attempt 2).
MAX_ATTEMPTS = 2


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


def claim_trial(
    study: optuna.Study, target: int, lock: StudyLock | None
) -> optuna.Trial | Literal["done", "wait"]:
    """Start a trial if the study still needs one: the trial, else ``"done"`` (``target``
    trials finished) or ``"wait"`` (the rest are running elsewhere and may yet fail).

    Counting and asking happen under the study lock, so no two workers both take the last
    slot; stale trials of dead workers are failed (and queued again) first.
    """
    with lock.hold() if lock is not None else contextlib.nullcontext():
        fail_stale_trials(study)
        counts = study_counts(study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished >= target:
            return "done"
        if finished + counts[TrialState.RUNNING] >= target:
            return "wait"
        with warnings.catch_warnings():
            # Optuna warns that heartbeats expect Study.optimize; this loop beats itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        storage = rdb_storage(study._storage)
        if storage is not None and storage.heartbeat_interval:
            # Beat once before leaving the lock, so that a worker dying from here on leaves
            # a stale trial that others retry. (Retried on its own: a failure must not make
            # the caller claim a second trial.)
            with_db_retries(lambda: storage.record_heartbeat(trial._trial_id), "first heartbeat")
        if storage is not None and _trials_before(storage, study, trial) >= target:
            # Only if the lock was lost with its connection (a database restart) can two
            # workers both pass the count; the later trial yields, so the total stays exact.
            with_db_retries(
                lambda: study.tell(trial, state=TrialState.FAIL, skip_if_finished=True),
                "yielding a surplus trial",
            )
            logger.warning("trial %d yielded: another worker took the last slot", trial.number)
            return "wait"
        return trial


def _trials_before(
    storage: optuna.storages.RDBStorage, study: optuna.Study, trial: optuna.Trial
) -> int:
    """Finished or running trials created before ``trial``."""
    query = sqlalchemy.text(
        "SELECT COUNT(*) FROM trials WHERE study_id = :study_id AND trial_id < :trial_id "
        "AND state IN ('COMPLETE', 'PRUNED', 'RUNNING')"
    )
    with storage.engine.connect() as connection:
        params = {"study_id": study._study_id, "trial_id": trial._trial_id}
        return int(connection.execute(query, params).scalar_one())


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and queue again) the RUNNING trials of dead workers.

    Optuna's check covers trials whose heartbeat went silent; a trial whose worker died
    (or lost the database) between creating it and its first heartbeat has no heartbeat at
    all, and is failed once it is older than the grace period.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    backend = rdb_storage(study._storage)
    if backend is None or not backend.heartbeat_interval:
        return
    grace = backend.grace_period or 2 * backend.heartbeat_interval
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h "
        "ON h.trial_id = t.trial_id WHERE t.study_id = :study_id AND t.state = 'RUNNING' "
        "AND h.trial_id IS NULL AND t.datetime_start < :cutoff"
    )
    with backend.engine.connect() as connection:
        orphans = [
            row[0]
            for row in connection.execute(query, {"study_id": study._study_id, "cutoff": cutoff})
        ]
    for trial_id in orphans:
        try:
            if backend.set_trial_state_values(trial_id, state=TrialState.FAIL):
                logger.warning("failed trial id %d: RUNNING without a heartbeat", trial_id)
                retry_trial(study, backend.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


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
