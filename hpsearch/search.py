"""Running a study: sampler and pruner factories, and the ask-train-tell loop.

``trials`` is the study's total: a rerun resumes and stops once that many trials have
finished (complete or pruned) overall.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState

from hpsearch.checkpoints import CheckpointStore
from hpsearch.config import RunSettings, StudyConfig
from hpsearch.data import resolve_data_dir
from hpsearch.errors import HpsearchError
from hpsearch.objective import Objective
from hpsearch.storage import open_storage, parse_url
from hpsearch.workers import (
    Heartbeat,
    StudyLock,
    is_transient_db_error,
    retry_trial,
    signals_interrupt,
    with_db_retries,
    worker_threads,
)

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A retry re-reports the epochs its failed attempt had reported; Optuna keeps the first.
warnings.filterwarnings("ignore", message="The reported value is ignored because")
# A study whose every trial fails is broken (bad config, out of memory): stop, don't spin.
MAX_CONSECUTIVE_FAILURES = 5


class GridSearchSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` call, which only works inside
    ``study.optimize``; ``run_trials`` stops on ``is_exhausted`` instead."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        pass


def create_sampler(
    name: str, options: dict[str, Any], seed: int, config: StudyConfig
) -> optuna.samplers.BaseSampler:
    """Build a sampler by name; ``options`` come from the study file's ``[sampler]``.

    Raises:
        HpsearchError: an option the sampler does not take, or a space it cannot search.
    """
    from hpsearch.space import grid_search_space

    factories: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    try:
        if name == "grid":
            return GridSearchSampler(grid_search_space(config.space), seed=seed, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factories[name](seed=seed, **options)
    except (TypeError, ValueError) as error:
        raise HpsearchError(f"{config.source}: [sampler] {name}: {error}") from None


def create_pruner(
    name: str, options: dict[str, Any], config: StudyConfig
) -> optuna.pruners.BasePruner:
    """Build a pruner by name. Resource-based pruners measure in epochs, up to the space's
    largest epoch count."""
    options = dict(options)
    try:
        if name == "hyperband":
            options.setdefault("max_resource", config.max_epochs)
            return optuna.pruners.HyperbandPruner(**options)
        if name == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if name == "median":
            return optuna.pruners.MedianPruner(**options)
        return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as error:
        raise HpsearchError(f"{config.source}: [pruner] {name}: {error}") from None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise HpsearchError("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Progress:
    """Counts after one trial ends, for the CLI's live display."""

    target: int
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    started_at: float  # time.monotonic() of this run's start
    trials_this_run: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def study_counts(study: optuna.Study) -> dict[TrialState, int]:
    """Trials per state, read from the database itself.

    Optuna's trial cache can keep showing a trial this process finished as RUNNING (it
    never re-reads it once a later trial has finished), so exact totals across workers
    need a direct count.
    """
    counts = dict.fromkeys(TrialState, 0)
    backend = rdb_storage(study._storage)
    if backend is None:
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state] += 1
        return counts
    query = sqlalchemy.text(
        "SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state"
    )
    with backend.engine.connect() as connection:
        for state, count in connection.execute(query, {"study_id": study._study_id}):
            counts[TrialState[state.name if hasattr(state, "name") else state]] = count
    return counts


def read_progress(
    study: optuna.Study, target: int, started: float, trials_this_run: int
) -> Progress:
    """The study's counts and best value now, retrying database errors."""

    def read() -> Progress:
        counts = study_counts(study)
        return Progress(
            target=target,
            complete=counts[TrialState.COMPLETE],
            pruned=counts[TrialState.PRUNED],
            failed=counts[TrialState.FAIL],
            best_value=best_value(study),
            started_at=started,
            trials_this_run=trials_this_run,
        )

    return with_db_retries(read, "reading progress")


def best_value(study: optuna.Study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:  # no complete trial yet
        return None


def open_study(
    storage: optuna.storages.BaseStorage,
    config: StudyConfig,
    settings: RunSettings,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study, or load it if it exists; refuse a study of another problem.

    Runs under the study lock, so workers starting together create one study and enqueue
    the study file's first trials once.
    """
    lock = study_lock(storage, settings.study_name)
    try:
        return _create_or_load(storage, config, settings, sampler, pruner, lock)
    finally:
        if lock is not None:
            lock.close()


def _create_or_load(
    storage: optuna.storages.BaseStorage,
    config: StudyConfig,
    settings: RunSettings,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    lock: StudyLock | None,
) -> optuna.Study:
    with lock.hold() if lock is not None else contextlib.nullcontext():
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            sampler=sampler,
            pruner=pruner,
            direction=config.direction,  # type: ignore[arg-type]
            load_if_exists=True,
        )
        attrs = study.user_attrs
        if "problem" in attrs and (attrs["problem"], attrs.get("metric")) != (
            config.problem.name,
            config.metric,
        ):
            raise HpsearchError(
                f"study {settings.study_name!r} holds {attrs['problem']} / "
                f"{attrs.get('metric')} trials, not {config.problem.name} / {config.metric}; "
                "pick another --study-name"
            )
        if study.direction.name.lower() != config.direction:
            raise HpsearchError(
                f"study {settings.study_name!r} has direction {study.direction.name.lower()}"
            )
        if "problem" not in attrs:
            study.set_user_attr("problem", config.problem.name)
            study.set_user_attr("metric", config.metric)
            study.set_user_attr("study_file", config.source)
            study.set_user_attr("data", dict(config.data))  # to rebuild the splits
            for params in config.enqueue:
                study.enqueue_trial(params, skip_if_exists=True)
    return study


def rdb_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The database storage behind ``storage`` (Optuna wraps it in a cache), if any."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def study_lock(storage: optuna.storages.BaseStorage, study_name: str) -> StudyLock | None:
    backend = rdb_storage(storage)
    if backend is None:
        return None  # in-memory storage: one process, nothing to coordinate
    return StudyLock(parse_url(backend.url), study_name)


def claim_trial(study: optuna.Study, target: int, lock: StudyLock | None) -> optuna.Trial | str:
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


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    settings: RunSettings,
    on_progress: Callable[[Progress], None] | None = None,
) -> Progress:
    """Claim, train and tell until the study holds ``settings.trials`` finished trials, the
    timeout passes, or too many trials fail in a row.

    SIGTERM and SIGINT mark the running trial failed and queue it again (its checkpoint
    lets the rerun resume it) before ``Interrupted`` propagates: no trial is left RUNNING.
    Transient database errors are retried.
    """
    started = time.monotonic()
    trials_this_run = 0
    consecutive_failures = 0
    lock = study_lock(study._storage, study.study_name)
    storage = rdb_storage(study._storage)
    heartbeat_s = storage.heartbeat_interval if storage is not None else None

    def progress() -> Progress:
        return read_progress(study, settings.trials, started, trials_this_run)

    def tell(
        trial: optuna.Trial,
        value: float | None = None,
        state: TrialState | None = None,
        reason: str | None = None,
    ) -> optuna.trial.FrozenTrial | None:
        """Finish ``trial``; ``None`` if another worker already had (it went stale)."""

        def action() -> optuna.trial.FrozenTrial | None:
            if study._storage.get_trial(trial._trial_id).state.is_finished():
                return None
            try:
                if reason is not None:
                    trial.set_user_attr("fail_reason", reason)
                return study.tell(trial, value, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                return None

        return with_db_retries(action, "telling a trial")

    def fail_and_retry(trial: optuna.Trial, reason: str) -> None:
        failed = tell(trial, state=TrialState.FAIL, reason=reason)
        if failed is not None:  # else whoever failed it has queued the retry
            with_db_retries(functools.partial(retry_trial, study, failed), "queueing a retry")

    state = progress()
    if on_progress is not None:
        on_progress(state)
    release_lock = contextlib.closing(lock) if lock is not None else contextlib.nullcontext()
    with signals_interrupt(), release_lock:
        while True:
            if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
                logger.info("timeout of %ss reached", settings.timeout)
                break
            if isinstance(study.sampler, GridSearchSampler) and study.sampler.is_exhausted(study):
                logger.warning("every grid point has been tried; stopping at %d", state.finished)
                break
            claim = with_db_retries(
                lambda: claim_trial(study, settings.trials, lock), "claiming a trial"
            )
            if claim == "done":
                break
            if claim == "wait":
                time.sleep(min(heartbeat_s or 1.0, 2.0))
                state = progress()
                if on_progress is not None:
                    on_progress(state)
                continue
            assert isinstance(claim, optuna.Trial)
            trial = claim
            beat = (
                Heartbeat(storage, trial._trial_id, heartbeat_s)  # type: ignore[arg-type]
                if heartbeat_s
                else contextlib.nullcontext()
            )
            with beat:
                try:
                    value = objective(trial)
                except optuna.TrialPruned:
                    tell(trial, state=TrialState.PRUNED)
                    consecutive_failures = 0
                except KeyboardInterrupt as interrupt:
                    fail_and_retry(
                        trial, f"interrupted ({interrupt})" if str(interrupt) else "interrupted"
                    )
                    raise
                except Exception as error:
                    if is_transient_db_error(error):
                        # The database went away mid-trial (a restart, a dropped connection):
                        # fail it and queue it again; the retry resumes from its checkpoint.
                        logger.warning(
                            "trial %d lost its database connection: %s",
                            trial.number,
                            str(error).splitlines()[0],
                        )
                        fail_and_retry(trial, "database connection lost")
                        trials_this_run += 1
                        continue
                    logger.warning("trial %d failed: %s", trial.number, error, exc_info=True)
                    tell(trial, state=TrialState.FAIL, reason=f"{type(error).__name__}: {error}")
                    consecutive_failures += 1
                    if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                        raise HpsearchError(
                            f"{consecutive_failures} trials failed in a row, last: "
                            f"{type(error).__name__}: {error}"
                        ) from None
                else:
                    tell(trial, value)
                    consecutive_failures = 0
            trials_this_run += 1
            state = progress()
            if on_progress is not None:
                on_progress(state)
    return state


def prepare_study(config: StudyConfig, settings: RunSettings) -> tuple[optuna.Study, Objective]:
    """Validate everything, load the data, then open the storage and the study.

    Everything that can be checked is checked before the storage is touched, so bad input
    writes nothing.
    """
    device = resolve_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    # The study file's options belong to its own sampler / pruner, not to one from a flag.
    sampler_options = config.sampler_options if settings.sampler == config.sampler else {}
    pruner_options = config.pruner_options if settings.pruner == config.pruner else {}
    sampler = create_sampler(settings.sampler, sampler_options, settings.seed, config)
    pruner = create_pruner(settings.pruner, pruner_options, config)
    splits = config.problem.load_data(resolve_data_dir(settings.data_dir), **config.data)
    storage = open_storage(settings.storage, heartbeat_interval=settings.heartbeat_interval)
    study = with_db_retries(
        lambda: open_study(storage, config, settings, sampler, pruner), "opening the study"
    )
    checkpoints = (
        CheckpointStore(settings.checkpoint_dir, settings.study_name)
        if settings.checkpoint_dir
        else None
    )
    objective = Objective(config, splits, device, seed=settings.seed, checkpoints=checkpoints)
    return study, objective


def run_study(
    config: StudyConfig,
    settings: RunSettings,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[optuna.Study, Progress]:
    """The library form of ``hpsearch run``: one worker in this process, or
    ``settings.workers`` local worker processes."""
    study, objective = prepare_study(config, settings)
    if settings.workers > 1:
        return study, run_local_workers(study, config, settings, on_progress)
    return study, run_trials(study, objective, settings, on_progress)


def _worker_main(source: str, settings: RunSettings, index: int) -> None:
    """One local worker process: load the study file again and run trials."""
    from hpsearch.config import load_study_file

    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        config = load_study_file(source)
        study, objective = prepare_study(config, settings)
        run_trials(study, objective, settings)
    except HpsearchError as error:
        logger.error("%s", error)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each local worker: CUDA workers are spread over the visible GPUs."""
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return [resolved.type] * workers
    count = torch.cuda.device_count()
    return [f"cuda:{i % count}" for i in range(workers)]


def run_local_workers(
    study: optuna.Study,
    config: StudyConfig,
    settings: RunSettings,
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = 1.0,
) -> Progress:
    """Run ``settings.workers`` worker processes on this machine and report their combined
    progress. CPU threads are split so that workers x threads <= cores.

    Raises:
        HpsearchError: a worker exited with an error.
        Interrupted: on SIGTERM/SIGINT, after every worker has stopped cleanly.
    """
    context = multiprocessing.get_context("spawn")
    threads = settings.threads or worker_threads(settings.workers)
    processes = [
        context.Process(
            target=_worker_main,
            args=(config.source, replace(settings, workers=1, threads=threads, device=dev), i),
            name=f"hpsearch-worker-{i}",
        )
        for i, dev in enumerate(worker_devices(settings.device, settings.workers))
    ]
    started = time.monotonic()
    finished_before = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))

    def progress() -> Progress:
        state = read_progress(study, settings.trials, started, 0)
        return replace(state, trials_this_run=state.finished - finished_before)

    for process in processes:
        process.start()
    try:
        with signals_interrupt():
            while any(p.is_alive() for p in processes):
                if on_progress is not None:
                    on_progress(progress())
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
        raise
    for process in processes:
        process.join()
    state = progress()
    if on_progress is not None:
        on_progress(state)
    codes = [p.exitcode for p in processes]
    if any(code != 0 for code in codes):
        raise HpsearchError(f"worker exit codes {codes}; see the messages above")
    return state
