"""Running a study: ``run_study`` (the library form of ``hpsearch run``), one worker's
claim-train-tell loop (``run_trials``), and the sampler, pruner and progress it uses.

``trials`` is the study's total: a rerun resumes and stops once that many trials have
finished (complete or pruned) overall, across every worker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.coordination import Coordinator, retry_trial, signals_interrupt
from hpsearch.errors import HpsearchError
from hpsearch.settings import Settings
from hpsearch.space import grid_search_space
from hpsearch.storage import (
    StudyLock,
    best_value,
    count_finished,
    is_transient_db_error,
    load_study,
    open_storage,
    parse_url,
    study_counts,
    with_db_retries,
)
from hpsearch.study_file import StudyConfig

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Samplers whose trials run one at a time whatever --group-size says (run_trials).
GROUPLESS_SAMPLERS = frozenset({"grid", "qmc", "cmaes"})
# A study whose every trial fails is broken (bad config, out of memory): stop, don't spin.
MAX_CONSECUTIVE_FAILURES = 5


def run_study(
    config: StudyConfig,
    settings: Settings,
    on_progress: Callable[[StudyProgress], None] | None = None,
) -> tuple[optuna.Study, StudyProgress]:
    """Run (or resume) ``config``'s study until it holds ``settings.trials`` finished trials:
    in this process, or in ``settings.workers`` local worker processes.

    Everything that can be checked is checked before the storage is touched (sampler and
    pruner options, device, artifact store, data files), so bad input writes nothing.
    """
    # Imported here: the loop below needs no torch, so a worker's bookkeeping stays light.
    from hpsearch.artifacts import open_artifact_store
    from hpsearch.checkpoints import CheckpointStore
    from hpsearch.objective import Objective
    from hpsearch.training import resolve_device

    sampler = create_sampler(config, settings)
    pruner = create_pruner(config, settings)
    device = resolve_device(settings.device)
    artifacts = open_artifact_store(settings.artifacts) if settings.artifacts else None
    if count_finished(settings.storage, settings.study_name) >= settings.trials:
        # Nothing to run: no data to load, no worker to start.
        study = load_study(settings.study_name, settings.storage)
        check_same_study(study, config)
        progress = ProgressReader(study, settings.trials)()
        if on_progress is not None:
            on_progress(progress)
        return study, progress
    splits = config.problem.load_data(settings.data_dir, **config.data)
    storage = open_storage(
        settings.storage,
        heartbeat_interval=settings.heartbeat_interval,
        on_stale_trial=retry_trial,
    )
    study = with_db_retries(
        lambda: open_study(storage, config, settings.study_name, sampler, pruner),
        "opening the study",
    )
    if settings.workers is not None and settings.workers > 1:
        from hpsearch.workers import run_local_workers

        return study, run_local_workers(study, config, settings, on_progress)
    if settings.threads is not None:
        import torch

        torch.set_num_threads(settings.threads)
    checkpoints = CheckpointStore(artifacts, settings.study_name) if artifacts else None
    objective = Objective(config, splits, device, seed=settings.seed, checkpoints=checkpoints)
    return study, run_trials(study, objective, settings, on_progress)


def create_study(config: StudyConfig, settings: Settings) -> optuna.Study:
    """Create ``config``'s study in ``settings.storage`` without running a trial (a cluster's
    set-up step, before its workers start); an existing study of the same problem is kept."""
    sampler = create_sampler(config, settings)
    pruner = create_pruner(config, settings)
    storage = open_storage(settings.storage)
    return with_db_retries(
        lambda: open_study(storage, config, settings.study_name, sampler, pruner),
        "creating the study",
    )


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    settings: Settings,
    on_progress: Callable[[StudyProgress], None] | None = None,
) -> StudyProgress:
    """One worker: claim, train and tell until the study holds ``settings.trials`` finished
    trials, the timeout passes, or too many trials fail in a row.

    SIGTERM and SIGINT mark the running trial failed and queue it again (its checkpoint
    lets the rerun resume it) before ``Interrupted`` propagates: no trial is left RUNNING.
    Transient database errors are retried.
    """
    started = time.monotonic()
    consecutive_failures = 0
    coordinator = Coordinator(study, settings.trials)
    # Trial groups need an objective that can train several trials as one (Objective), and a
    # sampler that draws each trial's params: grid and QMC assign trial n its point n, which
    # a group's shared shape would override, and CMA-ES keeps one search distribution over
    # every param, which fixed params break.
    groupable = hasattr(objective, "train_group") and settings.sampler not in GROUPLESS_SAMPLERS
    group_size = (settings.group_size or 1) if groupable else 1
    read_progress = ProgressReader(study, settings.trials, list_trials=on_progress is not None)

    def report() -> StudyProgress | None:
        # A worker nobody watches reads the study's progress once, at the end.
        if on_progress is None:
            return None
        state = with_db_retries(read_progress, "reading progress")
        on_progress(state)
        return state

    def settle(trial: optuna.Trial, compute: Callable[[], float]) -> None:
        """Tell ``trial`` the outcome of ``compute()``: its value, pruned, or failed (and
        queued again where the failure was not the trial's own)."""
        nonlocal consecutive_failures
        try:
            value = compute()
        except optuna.TrialPruned:
            coordinator.finish(trial, state=TrialState.PRUNED)
            consecutive_failures = 0
        except KeyboardInterrupt as interrupt:
            coordinator.fail(trial, _interrupted(interrupt), retry=True, quiet=True)
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            # This worker stalled (stopped, suspended) past the grace period and
            # another one failed the trial and queued its retry: drop this run.
            logger.warning("trial %d was failed by another worker; dropped", trial.number)
        except Exception as error:
            if is_transient_db_error(error):
                # The database went away mid-trial (a restart, a dropped connection):
                # fail it and queue it again; the retry resumes from its checkpoint.
                logger.warning(
                    "trial %d lost its database connection: %s",
                    trial.number,
                    str(error).splitlines()[0],
                )
                coordinator.fail(trial, "database connection lost", retry=True)
                return
            logger.warning("trial %d failed: %s", trial.number, error, exc_info=True)
            coordinator.fail(trial, f"{type(error).__name__}: {error}")
            consecutive_failures += 1
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise HpsearchError(
                    f"{consecutive_failures} trials failed in a row, last: "
                    f"{type(error).__name__}: {error}"
                ) from None
        else:
            coordinator.finish(trial, value)
            consecutive_failures = 0

    def run_group(leader: optuna.Trial) -> None:
        """Train ``leader`` with up to ``group_size - 1`` more trials of its shape as one
        model; each is told as it ends, and an interrupt fails (and queues) the rest."""
        group: Any = objective  # an Objective: prepare, group_capacity, train_group, ...
        running: dict[int, tuple[optuna.Trial, contextlib.ExitStack]] = {}

        def start(trial: optuna.Trial) -> Any:
            beat = contextlib.ExitStack()
            beat.enter_context(coordinator.heartbeat(trial))
            running[trial.number] = (trial, beat)
            try:
                return group.prepare(trial)
            except Exception as error:
                done(trial, functools.partial(_raise, error))
                return None

        def done(trial: optuna.Trial, compute: Callable[[], float]) -> None:
            try:
                settle(trial, compute)
            finally:
                running.pop(trial.number)[1].close()
            report()

        try:
            runs = [start(leader)]
            if runs[0] is None:
                return
            try:
                size = group.group_capacity(runs[0], group_size)
            except Exception:  # a model whose forward pass fails: training will say so
                size = 1
            with coordinator.fixing(group.group_params(leader)):  # while members sample
                while len(runs) < size:
                    member = coordinator.claim(member=True)
                    if isinstance(member, str):
                        break
                    if (run := start(member)) is not None:
                        runs.append(run)
            for run in runs if len(runs) > 1 else []:  # for the dashboard and report
                run.trial.set_user_attr("group", leader.number)
            group.train_group(
                runs,
                lambda run, outcome: done(
                    run.trial, functools.partial(group.conclude, run, outcome)
                ),
            )
        except BaseException as error:
            # Interrupted: the rest are queued again, and resume from their checkpoints.
            # Stopped (too many failures in a row): the rest end failed with the reason.
            interrupted = isinstance(error, KeyboardInterrupt)
            reason = _interrupted(error) if interrupted else f"worker stopped: {error}"
            for trial, _ in list(running.values()):
                try:
                    coordinator.fail(trial, reason, retry=interrupted, quiet=interrupted)
                except Exception as failure:  # the database is gone: the trial goes stale
                    logger.warning("trial %d left running: %s", trial.number, failure)
            raise
        finally:
            for _, beat in running.values():
                beat.close()

    if report() is None:
        with_db_retries(read_progress, "reading progress")  # the counts before this run
    with signals_interrupt(), contextlib.closing(coordinator):
        while True:
            if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
                logger.info("timeout of %ss reached", settings.timeout)
                break
            if isinstance(study.sampler, GridSearchSampler) and study.sampler.is_exhausted(study):
                logger.warning("every grid point has been tried")
                break
            trial = coordinator.claim()
            if trial == "done":
                break
            if trial == "wait":
                time.sleep(min(coordinator.heartbeat_s or 1.0, 2.0))
                report()
                continue
            if group_size > 1:
                run_group(trial)  # reports as each member ends
            else:
                with coordinator.heartbeat(trial):
                    settle(trial, functools.partial(objective, trial))
                report()
    return with_db_retries(read_progress, "reading progress")


@dataclass(frozen=True)
class StudyProgress:
    """A study's counts, for the live display: read after each trial ends."""

    target: int
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    started_at: float  # time.monotonic() of this run's start
    trials_this_run: int  # finished (complete or pruned) since this run started
    # Trials that finished (complete, pruned or failed) since the last reading, by number.
    new_trials: tuple[FrozenTrial, ...] = ()

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


@dataclass
class ProgressReader:
    """Reads a study's progress; each call also returns the trials finished since the last."""

    study: optuna.Study
    target: int
    list_trials: bool = True  # False: counts only (a worker nobody watches)
    started: float = field(default_factory=time.monotonic)
    _finished_before: int | None = field(default=None, init=False)
    _seen: set[int] | None = field(default=None, init=False)  # trials already listed
    _ended_last: int = field(default=-1, init=False)

    def __call__(self) -> StudyProgress:
        counts = study_counts(self.study)
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        ended = finished + counts[TrialState.FAIL]
        new: list[FrozenTrial] = []
        if self.list_trials and ended != self._ended_last:  # read trials only when some ended
            self._ended_last = ended
            states = (*FINISHED, TrialState.FAIL)
            trials = self.study.get_trials(deepcopy=False, states=states)
            if self._seen is None:  # the first reading: what ended before this run
                self._seen = {t.number for t in trials}
            else:
                new = [t for t in trials if t.number not in self._seen]
                self._seen.update(t.number for t in new)
        if self._finished_before is None:
            self._finished_before = finished
        return StudyProgress(
            target=self.target,
            complete=counts[TrialState.COMPLETE],
            pruned=counts[TrialState.PRUNED],
            failed=counts[TrialState.FAIL],
            best_value=best_value(self.study) if counts[TrialState.COMPLETE] else None,
            started_at=self.started,
            trials_this_run=finished - self._finished_before,
            new_trials=tuple(new),
        )


def open_study(
    storage: optuna.storages.RDBStorage,
    config: StudyConfig,
    study_name: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study, or load it if it exists; refuse a study of another problem.

    Runs under the study lock, so workers starting together create one study and enqueue
    the study file's first trials once.

    Raises:
        HpsearchError: the study exists with another problem, metric or direction.
    """
    lock = StudyLock(parse_url(storage.url), study_name)
    with lock.hold():
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=study_name,
                sampler=sampler,
                pruner=pruner,
                direction=config.direction,  # type: ignore[arg-type]
                load_if_exists=True,
            )
            check_same_study(study, config)
            if "problem" not in study.user_attrs:
                with warnings.catch_warnings():  # experimental since Optuna 3.2
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([config.metric])  # the dashboard's axis label
                study.set_user_attr("problem", config.problem.name)
                study.set_user_attr("metric", config.metric)
                study.set_user_attr("study_file", config.source)
                study.set_user_attr("data", dict(config.data))  # to rebuild the splits
                for params in config.enqueue:
                    study.enqueue_trial(params, skip_if_exists=True)
        finally:
            lock.close()
    return study


def check_same_study(study: optuna.Study, config: StudyConfig) -> None:
    """Refuse to add ``config``'s trials to a study of another problem, metric or direction.

    Raises:
        HpsearchError: naming what the stored study holds.
    """
    attrs = study.user_attrs
    stored = (attrs.get("problem", config.problem.name), attrs.get("metric", config.metric))
    if stored != (config.problem.name, config.metric):
        raise HpsearchError(
            f"study {study.study_name!r} holds {stored[0]} / {stored[1]} trials, not "
            f"{config.problem.name} / {config.metric}; pick another --study-name"
        )
    if study.direction.name.lower() != config.direction:
        raise HpsearchError(
            f"study {study.study_name!r} has direction {study.direction.name.lower()}"
        )


def _raise(error: BaseException) -> float:
    raise error


def _interrupted(interrupt: BaseException) -> str:
    """A trial's fail reason for Ctrl-C or a signal (``Interrupted`` names the signal)."""
    return f"interrupted ({interrupt})" if str(interrupt) else "interrupted"


class GridSearchSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` call, which only works inside
    ``study.optimize``; ``run_trials`` stops on ``is_exhausted`` instead."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        pass


def trial_sampler_seed(study_seed: int, trial_number: int) -> int:
    """The seed of trial ``trial_number``'s random draws: mixed, so that nearby study
    seeds do not share trials' streams."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler whose random draws for trial n derive from the study seed and n.

    Every worker seeds its sampler from the same study file, so plain seeding repeats the
    same random (start-up) draws in each worker. Here each trial gets a fresh sampler
    seeded by ``trial_sampler_seed``: trial n's random draws are the same whichever worker
    runs it and however many there are. (Model-based draws also depend on which trials
    had finished when n started.) Optuna's samplers keep their learning in the study, not
    in the sampler object, so a fresh one per trial loses nothing but caches.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self.make = make
        self.seed = seed
        self.sampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler = self.make(trial_sampler_seed(self.seed, trial.number))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def create_sampler(config: StudyConfig, settings: Settings) -> optuna.samplers.BaseSampler:
    """The sampler of ``settings.sampler``, seeded per trial from ``settings.seed``
    (``TrialSeededSampler``); the study file's ``[sampler]`` options apply when it names the
    same sampler. Grid and QMC keep the study seed: it fixes the order of their points,
    and they take point n for trial n already.

    Raises:
        HpsearchError: an option the sampler does not take, or a space it cannot search.
    """
    name = settings.sampler
    options = config.sampler_options if name == config.sampler else {}
    factories: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
    }

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if name == "grid":
            return GridSearchSampler(grid_search_space(config.space), seed=seed, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factories[name](seed=seed, **options)

    try:
        if name in ("grid", "qmc"):
            return make(settings.seed)
        return TrialSeededSampler(make, settings.seed)
    except (TypeError, ValueError) as error:
        raise HpsearchError(f"{config.source}: [sampler] {name}: {error}") from None


def create_pruner(config: StudyConfig, settings: Settings) -> optuna.pruners.BasePruner:
    """The pruner of ``settings.pruner``, with the study file's ``[pruner]`` options when it
    names the same one. Resource-based pruners measure in epochs, up to the space's largest
    epoch count.

    Raises:
        HpsearchError: an option the pruner does not take.
    """
    name = settings.pruner
    options = dict(config.pruner_options if name == config.pruner else {})
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
