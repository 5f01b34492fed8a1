"""The protocol of a trial across workers, in one place.

``Coordinator`` is what a worker's loop (``search.worker.Worker``) calls:

- ``claim()``: fail the trials of dead workers (and queue each again once), and start a
  trial only while the trials created before it leave a slot, so the study ends with exactly
  ``trials`` finished trials however many workers join, and whenever (Optuna's
  ``MaxTrialsCallback`` overshoots by up to workers - 1); no lock, so claims scale with
  workers;
- ``heartbeat(trial)``: a thread that keeps the trial alive for the other workers;
- ``complete``, ``prune`` and ``fail(trial, reason, retry=...)``: tell, unless another
  worker already failed the trial as stale (its late result is dropped, not counted twice).

It works through ``storage.worker_view.WorkerStorage``, the worker's batched view of the
shared storage.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import random
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import record
from hpsearch.storage import optuna_internals as internals
from hpsearch.storage.errors import with_db_retries
from hpsearch.storage.worker_view import WorkerStorage

logger = logging.getLogger(__name__)


def retry_trial(study: optuna.Study, trial: FrozenTrial, *, quiet: bool = False) -> None:
    """Queue a failed trial again with the same params, unless it already had its retry.

    The copy carries ``record.RETRY_OF`` (the first trial of the series: its seed and
    checkpoint key) and ``record.ATTEMPT``. Used for heartbeat-stale trials and for
    interrupted ones. (Optuna's ``RetryFailedTrialCallback`` does the same but records the
    series in system attributes, which an objective cannot read.)
    """
    user_attrs = record.retry_attrs(trial)
    if user_attrs is None:
        logger.warning("trial %d failed on its last attempt; not retried", trial.number)
        return
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            intermediate_values=trial.intermediate_values,
        )
    )
    logger.log(
        logging.INFO if quiet else logging.WARNING,
        "trial %d failed; queued a retry with the same params",
        trial.number,
    )


class Coordinator:
    """Claims, keeps alive and finishes one worker's trials of ``study``.

    On a database, works on its own handle of the study over a ``WorkerStorage``;
    ``self.study`` is the handle whose trials the objective gets. In memory (one process,
    tests) it uses ``study`` itself, and there is nothing to lock or beat.
    """

    def __init__(self, study: optuna.Study, target: int, *, queue_only: bool = False) -> None:
        """``queue_only``: claim only queued (waiting) trials, each a unit of work made
        beforehand (finalize's retrains), and be done once none is left waiting or running
        (a unit that failed twice is not retried again)."""
        self.target = target
        self.queue_only = queue_only
        self.rdb = internals.rdb_of(internals.storage_of(study))
        self.study = study
        self._plain = study
        self.view: WorkerStorage | None = None
        self.heartbeat_s: int | None = None
        self._stale_checked = -float("inf")
        self._ended_seen = -1  # trials ended (finished or failed) when the view last read
        if self.rdb is None:
            return
        storage = internals.storage_of(study)
        self.view = (
            storage
            if isinstance(storage, WorkerStorage)
            else WorkerStorage(storage, report_attrs=(record.CURVE,))
        )
        self.study = optuna.load_study(
            study_name=study.study_name,
            storage=self.view,
            sampler=study.sampler,
            pruner=study.pruner,
        )
        # Optuna's stale-trial check needs a study over its own (heartbeat-aware) storage.
        self._plain = optuna.load_study(study_name=study.study_name, storage=self.view.backend)
        self.heartbeat_s = self.rdb.heartbeat_interval

    def claim(self, member: bool = False) -> optuna.Trial | Literal["done", "wait"]:
        """Start a trial if the study still needs one: the trial, else ``"done"`` (the
        target reached) or ``"wait"`` (the rest are running elsewhere and may yet fail).

        A ``member`` of a trial group (sampled under ``fixing``) is a new trial: waiting ones
        (retries, enqueued trials) have params of their own and each leads a group, so
        ``"wait"`` while there are any. With ``queue_only``, members are the next waiting
        trials.
        """
        return with_db_retries(lambda: self._claim(member), "claiming a trial")

    @contextlib.contextmanager
    def fixing(self, fixed: dict[str, Any]) -> Iterator[None]:
        """While inside, the trials' params in ``fixed`` take those values and the sampler
        draws the rest (Optuna's ``PartialFixedSampler``): a trial group's shared shape."""
        sampler = self.study.sampler
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.sampler = optuna.samplers.PartialFixedSampler(fixed, sampler)
        try:
            yield
        finally:
            self.study.sampler = sampler

    def _claim(self, member: bool) -> optuna.Trial | Literal["done", "wait"]:
        # No lock: the count below only spares the ask; the check after it keeps the total.
        self.fail_stale_trials()  # each stale trial is failed by one worker only
        counts = record.study_counts(self._plain)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished >= self.target:
            return "done"  # finished trials only ever grow
        if self.queue_only and not counts[TrialState.WAITING]:
            return "wait" if counts[TrialState.RUNNING] else "done"
        if finished + counts[TrialState.RUNNING] >= self.target:
            return "wait"
        if member and counts[TrialState.WAITING] and not self.queue_only:
            return "wait"
        ended = finished + counts[TrialState.FAIL]
        if self.view is not None and (ended != self._ended_seen or counts[TrialState.WAITING]):
            self.view.refresh(internals.study_id(self.study))
            self._ended_seen = ended
        with warnings.catch_warnings():
            # Optuna warns that heartbeats expect Study.optimize; this loop beats itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask()
        if self.rdb is None:
            return trial
        # Optuna creates a trial with its study's row locked (SELECT ... FOR UPDATE), so trial
        # ids follow commit order: of two workers racing for the last slot, the later trial
        # sees the earlier one here and yields. Counting waiting trials leaves a queued retry
        # its slot. A worker dying before the trial's first heartbeat leaves a RUNNING trial
        # without one; fail_stale_trials finds those too.
        trial_id = internals.trial_id(trial)
        before = self.view.taken_before(trial_id) if self.view is not None else None
        if before is None:  # taken from the queue: not counted when it was created
            before = internals.trials_before(
                self.rdb.engine, internals.study_id(self.study), trial_id
            )
        if before >= self.target:
            trial.set_user_attr(record.FAIL_REASON, record.YIELDED)
            self._tell(trial, state=TrialState.FAIL)
            logger.info("trial %d yielded: another worker took the last slot", trial.number)
            return "wait"
        return trial

    def fail_stale_trials(self) -> None:
        """Fail (and queue again) the RUNNING trials of dead workers; at most once per
        heartbeat interval, since nothing goes stale faster.

        Optuna's check covers trials whose heartbeat went silent; a trial whose worker died
        (or lost the database) between creating it and its first heartbeat has no heartbeat
        at all, and is failed once it is older than the grace period.
        """
        if self.rdb is None or not self.heartbeat_s:
            return
        if time.monotonic() - self._stale_checked < self.heartbeat_s:
            return
        self._stale_checked = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self._plain)
        grace = self.rdb.grace_period or 2 * self.heartbeat_s
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
        orphans = internals.running_without_heartbeat(
            self.rdb.engine, internals.study_id(self.study), cutoff
        )
        for orphan in orphans:
            try:
                if self.rdb.set_trial_state_values(orphan, state=TrialState.FAIL):
                    logger.warning("failed trial id %d: RUNNING without a heartbeat", orphan)
                    retry_trial(self._plain, self.rdb.get_trial(orphan))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass

    @contextlib.contextmanager
    def heartbeat(self, trial: optuna.Trial) -> Iterator[None]:
        """Record the trial's heartbeat in a thread while inside (if heartbeats are on)."""
        if self.rdb is None or not self.heartbeat_s:
            yield
            return
        with Heartbeat(self.rdb, internals.trial_id(trial), self.heartbeat_s):
            yield

    def _tell(
        self,
        trial: optuna.Trial,
        value: float | Sequence[float] | None = None,
        state: TrialState | None = None,
    ) -> FrozenTrial | None:
        """Finish ``trial``; None if another worker already had (it went stale)."""

        def action() -> FrozenTrial | None:
            try:
                return self.study.tell(trial, value, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                return None

        told = with_db_retries(action, "telling a trial")
        if told is not None:
            self._ended_seen += 1  # the view has this trial already
        else:
            logger.warning("trial %d was failed by another worker; result dropped", trial.number)
        return told

    def complete(self, trial: optuna.Trial, values: Sequence[float]) -> None:
        """Tell a trial complete, with its values (one per objective)."""
        self._tell(trial, list(values))

    def prune(self, trial: optuna.Trial, reason: str) -> None:
        """Tell a trial pruned; the reason goes in its ``record.PRUNED_REASON``."""
        trial.set_user_attr(record.PRUNED_REASON, reason)
        self._tell(trial, state=TrialState.PRUNED)

    def fail(
        self, trial: optuna.Trial, reason: str, *, retry: bool = False, quiet: bool = False
    ) -> bool:
        """Fail ``trial`` (the reason goes in its ``record.FAIL_REASON``); with ``retry``,
        queue it again once with the same params (its checkpoint lets the retry resume);
        ``quiet`` when the user asked for it (an interrupt): the retry is logged as info.
        False if another worker had already failed it (it went stale), and nothing changed."""
        trial.set_user_attr(record.FAIL_REASON, reason)
        failed = self._tell(trial, state=TrialState.FAIL)
        if failed is None:  # whoever failed it has queued the retry
            return False
        if retry:
            queue = functools.partial(retry_trial, self._plain, failed, quiet=quiet)
            with_db_retries(queue, "queueing a retry")
        return True


class Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds in a thread.

    A database error does not kill the thread: it logs and tries again sooner.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{trial_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _beat(self) -> None:
        # The first beat after one interval, not at once: a trial with no beat is failed only
        # past the grace period (fail_stale_trials), and a trial shorter than an interval
        # then costs no heartbeat writes.
        wait = self.interval
        while not self._stop.wait(wait * random.uniform(0.9, 1.0)):
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
