"""The protocol of a trial across workers, in one place.

``Coordinator`` is what a worker's loop (``search.run_trials``) calls:

- ``claim()``: under a study-wide lock, fail the trials of dead workers (and queue each
  again once), count, and start a trial only while ``finished + running < trials``, so the
  study ends with exactly ``trials`` finished trials however many workers join, and
  whenever (Optuna's ``MaxTrialsCallback`` overshoots by up to workers - 1);
- ``heartbeat(trial)``: a thread that keeps the trial alive for the other workers;
- ``finish(trial, ...)`` and ``fail(trial, reason, retry=...)``: tell, unless another
  worker already failed the trial as stale (its late result is dropped, not counted twice).

``WorkerStorage`` is the worker's view of the shared storage that makes bookkeeping cheap:
the running trial's writes are batched and the study is read once per claim.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import logging
import random
import signal
import threading
import time
import warnings
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch import optuna_internals as internals
from hpsearch.storage import StudyLock, parse_url, study_counts, with_db_retries

logger = logging.getLogger(__name__)

# A crashed or interrupted trial runs once more with the same params (attempt 2).
MAX_ATTEMPTS = 2
# The longest a running trial's reports wait before they reach the database (and the
# dashboard); the first report and the tell are written at once.
FLUSH_S = 2.0


def retry_trial(study: optuna.Study, trial: FrozenTrial, *, quiet: bool = False) -> None:
    """Queue a failed trial again with the same params, unless it already had its retry.

    The copy carries ``retry_of`` (the first trial of the series: its seed and checkpoint key)
    and ``attempt``. Used for heartbeat-stale trials and for interrupted ones. (Optuna's
    ``RetryFailedTrialCallback`` does the same but records the series in system attributes,
    which an objective cannot read.)
    """
    attempt = int(trial.user_attrs.get("attempt", 1))
    if attempt >= MAX_ATTEMPTS:
        logger.warning("trial %d failed on attempt %d; not retried", trial.number, attempt)
        return
    # Not copied: what describes the failed attempt (why it failed, where it ran).
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("fail_reason", "worker")}
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
    logger.log(
        logging.INFO if quiet else logging.WARNING,
        "trial %d failed; queued a retry with the same params",
        trial.number,
    )


@dataclass
class _Pending:
    """A running trial's rows not yet written, and when they last were."""

    params: dict[str, tuple[float, BaseDistribution]] = field(default_factory=dict)
    values: dict[int, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    flushed_at: float | None = None


class WorkerStorage(optuna.storages.BaseStorage):
    """One worker's view of a shared storage, built on Optuna's storage interface.

    - The running trials' params, reports and user attributes (one trial, or a group's
      several) are kept here and written in one transaction per trial: at its first report,
      then at most every ``FLUSH_S``, and before its tell
      (``optuna_internals.write_trial_rows``). A killed worker loses at most the last
      ``FLUSH_S`` of reports (its checkpoint has them anyway); one killed before its trial's
      first report leaves a trial without params, whose retry samples afresh.
    - The study's trials are read at most once per claim (``refresh``), and only when
      another worker has finished one since: the sampler and the pruner see the study as
      it was when the trial started, plus this worker's own trials and reports.
    - Trials this worker finished stay finished in its view (Optuna 5.0's trial cache can
      keep showing them RUNNING once a later trial has finished).

    Every other call passes straight to ``backend``; readers (the dashboard, ``optuna``)
    see ordinary Optuna rows.
    """

    def __init__(self, backend: optuna.storages.BaseStorage, flush_s: float = FLUSH_S) -> None:
        self.backend = optuna.storages.get_storage(backend)
        rdb = internals.rdb_of(self.backend)
        if rdb is None:
            raise TypeError("WorkerStorage batches writes to a database storage only")
        self.rdb = rdb
        self.flush_s = flush_s
        self._trials: dict[int, list[FrozenTrial]] = {}  # study id -> trials at last refresh
        self._finished: dict[int, FrozenTrial] = {}  # trial id -> as this worker told it
        self._running: dict[int, FrozenTrial] = {}  # trial id -> as this worker has it
        self._pending: dict[int, _Pending] = {}

    # Reading the study.

    def refresh(self, study_id: int) -> None:
        """Read the study's trials (only those changed since the last read)."""
        self._trials[study_id] = self.backend.get_all_trials(study_id, deepcopy=False)

    def _view(self, trial: FrozenTrial) -> FrozenTrial:
        id_ = internals.trial_id(trial)
        return self._own(id_) or self._finished.get(id_, trial)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        if study_id not in self._trials:
            self.refresh(study_id)
        snapshot = self._trials[study_id]
        # This worker's trials created since the last refresh are not in the snapshot.
        known = {internals.trial_id(t) for t in snapshot}
        own = [*self._finished.values(), *self._running.values()]
        trials = [self._view(t) for t in snapshot]
        trials += [t for t in own if internals.trial_id(t) not in known]
        trials.sort(key=lambda t: t.number)
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trial(self, trial_id: int) -> FrozenTrial:
        mine = self._own(trial_id) or self._finished.get(trial_id)
        return copy.deepcopy(mine) if mine is not None else self.backend.get_trial(trial_id)

    # The running trials: kept here, written in batches.

    def _start(self, trial: FrozenTrial) -> None:
        id_ = internals.trial_id(trial)
        self._running[id_] = trial
        self._pending[id_] = _Pending()

    def _own(self, id_: int) -> FrozenTrial | None:
        """This worker's running trial ``id_``, if it is one."""
        return self._running.get(id_)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        created = self.backend.create_new_trial(study_id, template_trial)
        if template_trial is None:  # Study.ask: a RUNNING trial for this worker
            self._start(internals.new_trial(self.rdb.engine, created))
        return created

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        running = self._own(trial_id)
        if running is None:
            self.backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        running.params[param_name] = distribution.to_external_repr(param_value_internal)
        running.distributions[param_name] = distribution
        self._pending[trial_id].params[param_name] = (param_value_internal, distribution)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        running = self._own(trial_id)
        if running is None:
            self.backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
            return
        running.intermediate_values[step] = intermediate_value
        pending = self._pending[trial_id]
        pending.values[step] = intermediate_value
        if pending.flushed_at is None or time.monotonic() - pending.flushed_at >= self.flush_s:
            self.flush(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        running = self._own(trial_id)
        if running is None:
            self.backend.set_trial_user_attr(trial_id, key, value)
            return
        running.user_attrs[key] = value
        self._pending[trial_id].attrs[key] = value

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # Rare (the successive-halving pruner's rungs), and read by other workers: at once.
        self.backend.set_trial_system_attr(trial_id, key, value)
        running = self._own(trial_id)
        if running is not None:
            running.system_attrs[key] = value

    def flush(self, trial_id: int) -> None:
        """Write the running trial ``trial_id``'s pending rows in one transaction.

        Raises:
            UpdateFinishedTrialError: another worker has failed the trial (it went stale).
        """
        running, pending = self._running.get(trial_id), self._pending.get(trial_id)
        if running is None or pending is None:
            return
        rows = (pending.params, pending.values, pending.attrs)
        if any(rows):
            engine = self.rdb.engine
            written = with_db_retries(
                lambda: internals.write_trial_rows(engine, trial_id, *rows), "writing reports"
            )
            if not written:
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"trial {running.number} was finished by another worker"
                )
            for written_rows in rows:
                written_rows.clear()
        pending.flushed_at = time.monotonic()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        running = self._own(trial_id)
        if running is None:
            changed = self.backend.set_trial_state_values(trial_id, state, values)
            if changed and state == TrialState.RUNNING:  # Study.ask took a waiting trial
                self._start(self.backend.get_trial(trial_id))
            return changed
        try:
            self.flush(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            del self._running[trial_id], self._pending[trial_id]  # another worker failed it
            raise
        changed = self.backend.set_trial_state_values(trial_id, state, values)
        if changed and state.is_finished():
            finished = copy.deepcopy(running)
            finished.state = state
            finished.values = list(values) if values is not None else None
            finished.datetime_complete = datetime.datetime.now()
            self._finished[trial_id] = finished
            del self._running[trial_id], self._pending[trial_id]
        return changed

    # Everything else: straight through.

    def create_new_study(
        self, directions: Sequence[optuna.study.StudyDirection], study_name: str | None = None
    ) -> int:
        return self.backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.backend.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.backend.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[optuna.study.StudyDirection]:
        return self.backend.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:  # FrozenStudy, which Optuna does not export
        return self.backend.get_all_studies()

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)


class Coordinator:
    """Claims, keeps alive and finishes one worker's trials of ``study``.

    On a database, works on its own handle of the study over a ``WorkerStorage``;
    ``self.study`` is the handle whose trials the objective gets. In memory (one process,
    tests) it uses ``study`` itself, and there is nothing to lock or beat.
    """

    def __init__(self, study: optuna.Study, target: int) -> None:
        self.target = target
        self.rdb = internals.rdb_of(internals.storage_of(study))
        self.study = study
        self._plain = study
        self.view: WorkerStorage | None = None
        self.lock: StudyLock | None = None
        self.heartbeat_s: int | None = None
        self._stale_checked = -float("inf")
        self._ended_seen = -1  # trials ended (finished or failed) when the view last read
        if self.rdb is None:
            return
        storage = internals.storage_of(study)
        self.view = storage if isinstance(storage, WorkerStorage) else WorkerStorage(storage)
        self.study = optuna.load_study(
            study_name=study.study_name,
            storage=self.view,
            sampler=study.sampler,
            pruner=study.pruner,
        )
        # Optuna's stale-trial check needs a study over its own (heartbeat-aware) storage.
        self._plain = optuna.load_study(study_name=study.study_name, storage=self.view.backend)
        self.heartbeat_s = self.rdb.heartbeat_interval
        self.lock = StudyLock(parse_url(self.rdb.url), study.study_name)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.close()

    def claim(self, member: bool = False) -> optuna.Trial | Literal["done", "wait"]:
        """Start a trial if the study still needs one: the trial, else ``"done"`` (the
        target reached) or ``"wait"`` (the rest are running elsewhere and may yet fail).

        A ``member`` of a trial group (sampled under ``fixing``) is a new trial: waiting ones
        (retries, enqueued trials) have params of their own and each leads a group, so
        ``"wait"`` while there are any.
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
        # Outside the lock, which every worker waits for: failing stale trials (each is
        # failed by one worker only) and reading the study for the sampler.
        self.fail_stale_trials()
        counts = study_counts(self._plain)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished >= self.target:
            return "done"  # finished trials only ever grow
        ended = finished + counts[TrialState.FAIL]
        if self.view is not None and (ended != self._ended_seen or counts[TrialState.WAITING]):
            self.view.refresh(internals.study_id(self.study))
            self._ended_seen = ended
        with self.lock.hold() if self.lock is not None else contextlib.nullcontext():
            counts = study_counts(self._plain)
            finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            if finished >= self.target:
                return "done"
            if finished + counts[TrialState.RUNNING] >= self.target:
                return "wait"
            if member and counts[TrialState.WAITING]:
                return "wait"
            with warnings.catch_warnings():
                # Optuna warns that heartbeats expect Study.optimize; this loop beats itself.
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
        if self.rdb is None:
            return trial
        # Only if the lock was lost with its connection (a database restart) can two workers
        # both pass the count; the later trial yields, so the total stays exact. (Trials
        # created after this one do not change the count, so it needs no lock.)
        # A worker dying before the trial's first heartbeat leaves a RUNNING trial without
        # one; fail_stale_trials finds those too.
        before = internals.trials_before(
            self.rdb.engine, internals.study_id(self.study), internals.trial_id(trial)
        )
        if before >= self.target:
            self._tell(trial, state=TrialState.FAIL)
            logger.warning("trial %d yielded: another worker took the last slot", trial.number)
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
        self, trial: optuna.Trial, value: float | None = None, state: TrialState | None = None
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

    def finish(
        self, trial: optuna.Trial, value: float | None = None, state: TrialState | None = None
    ) -> None:
        """Tell a trial's result (``value``, or ``state`` PRUNED)."""
        self._tell(trial, value, state)

    def fail(
        self, trial: optuna.Trial, reason: str, *, retry: bool = False, quiet: bool = False
    ) -> None:
        """Fail ``trial`` (the reason goes in its ``fail_reason`` attribute); with ``retry``,
        queue it again once with the same params (its checkpoint lets the retry resume);
        ``quiet`` when the user asked for it (an interrupt): the retry is logged as info."""
        trial.set_user_attr("fail_reason", reason)
        failed = self._tell(trial, state=TrialState.FAIL)
        if retry and failed is not None:  # else whoever failed it has queued the retry
            queue = functools.partial(retry_trial, self._plain, failed, quiet=quiet)
            with_db_retries(queue, "queueing a retry")


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


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Interrupted`` in the main thread while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        # One interrupt is enough: a second (Ctrl-C, then the pool's SIGTERM) must not cut
        # short the clean-up that marks the running trial. A no-op handler, not SIG_IGN: a
        # signal already on its way when SIG_IGN is set prints "Signal 15 ignored due to
        # race condition" with a traceback.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
