"""One worker: ``run_worker`` trains a study's trials in this process, and ``run_trials`` is its
claim-train-tell loop, which shows a trial's whole life.

``trials`` is the study's total: a rerun resumes and stops once that many trials have
finished (complete or pruned) overall, across every worker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import optuna
from optuna.trial import TrialState

from hpsearch.errors import TrialsFailing
from hpsearch.search.coordinator import Coordinator
from hpsearch.search.interrupts import signals_interrupt
from hpsearch.search.progress import ProgressReader, StudyProgress
from hpsearch.search.samplers import GROUPLESS_SAMPLERS, GridSearchSampler
from hpsearch.search.study import open_run
from hpsearch.search.study_file import StudyConfig
from hpsearch.settings import Settings
from hpsearch.storage.errors import is_transient_db_error, with_db_retries

if TYPE_CHECKING:  # it imports torch, which a worker's bookkeeping does not need
    from hpsearch.problems.splits import Splits

logger = logging.getLogger(__name__)

# A study whose every trial fails is broken (bad config, out of memory): stop, don't spin.
MAX_CONSECUTIVE_FAILURES = 5

Run = TypeVar("Run")
# A trial's value (one per objective), or what ended it: computed when the worker tells it.
Result = Callable[[], float | Sequence[float]]


class TrialObjective(Protocol[Run]):
    """What the worker loop asks of an objective, for a trial group of one or more trials.

    ``search.objective.Objective`` is hpsearch's; ``FunctionObjective`` turns a plain
    ``objective(trial) -> float`` into one that runs a trial at a time.
    """

    def start(self, trial: optuna.Trial) -> Run:
        """Sample ``trial``'s params and get it ready to train."""
        ...

    def group_capacity(self, run: Run, limit: int) -> int:
        """How many trials like ``run`` to train as one group, at most ``limit``."""
        ...

    def group_values(self, run: Run) -> dict[str, Any]:
        """The params of ``run`` that the other trials of its group take too."""
        ...

    def train(self, runs: Sequence[Run]) -> Iterator[tuple[optuna.Trial, Result]]:
        """Train ``runs`` (together where they can); yield each trial as it ends, with its
        result: a value, or raising ``optuna.TrialPruned`` or what failed it."""
        ...


class FunctionObjective:
    """A plain ``objective(trial) -> float`` as a ``TrialObjective``: one trial at a time."""

    def __init__(self, objective: Callable[[optuna.Trial], float | Sequence[float]]) -> None:
        self.objective = objective

    def start(self, trial: optuna.Trial) -> optuna.Trial:
        return trial

    def group_capacity(self, run: optuna.Trial, limit: int) -> int:
        return 1

    def group_values(self, run: optuna.Trial) -> dict[str, Any]:
        return {}

    def train(self, runs: Sequence[optuna.Trial]) -> Iterator[tuple[optuna.Trial, Result]]:
        for trial in runs:
            yield trial, functools.partial(self.objective, trial)


def run_worker(
    config: StudyConfig,
    settings: Settings,
    on_progress: Callable[[StudyProgress], None] | None = None,
    on_data: Callable[[Splits], None] | None = None,
) -> tuple[optuna.Study, StudyProgress]:
    """Run ``config``'s study in this process until it holds ``settings.trials`` finished
    trials: open it (``study.open_run``), load the data once (shown to ``on_data``), and run
    the loop."""
    opened = open_run(config, settings)
    if opened.splits is None:  # nothing to run: no data was loaded
        return opened.study, finished_progress(opened.study, settings, on_progress)
    if on_data is not None:
        on_data(opened.splits)
    # Imported here: the loop above needs no torch, so a worker's bookkeeping stays light.
    import torch

    from hpsearch.search.checkpoints import CheckpointStore
    from hpsearch.search.objective import Objective

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    checkpoints = (
        CheckpointStore(opened.artifacts, settings.study_name) if opened.artifacts else None
    )
    objective = Objective(
        config, opened.splits, opened.device, seed=settings.seed, checkpoints=checkpoints
    )
    return opened.study, run_trials(opened.study, objective, settings, on_progress)


def finished_progress(
    study: optuna.Study,
    settings: Settings,
    on_progress: Callable[[StudyProgress], None] | None = None,
) -> StudyProgress:
    """The progress of a study that already holds its trials, reported once."""
    progress = ProgressReader(study, settings.trials)()
    if on_progress is not None:
        on_progress(progress)
    return progress


def run_trials(
    study: optuna.Study,
    objective: TrialObjective[Any],
    settings: Settings,
    on_progress: Callable[[StudyProgress], None] | None = None,
) -> StudyProgress:
    """One worker: claim, train and tell until the study holds ``settings.trials`` finished
    trials, the timeout passes, or too many trials fail in a row.

    Each claim starts a trial group: the claimed trial and, with ``settings.group_size`` > 1,
    up to that many more new trials that take its ``group_values`` (Optuna's
    ``PartialFixedSampler`` draws the rest), trained together; a trial alone is a group of
    one. SIGTERM and SIGINT mark the running trials failed and queue each again (its
    checkpoint lets the rerun resume it) before ``Interrupted`` propagates: no trial is
    left RUNNING. Transient database errors are retried.
    """
    started = time.monotonic()
    consecutive_failures = 0
    coordinator = Coordinator(study, settings.trials)
    grouped = settings.sampler not in GROUPLESS_SAMPLERS
    group_size = (settings.group_size or 1) if grouped else 1
    read_progress = ProgressReader(study, settings.trials, list_trials=on_progress is not None)

    def report() -> StudyProgress | None:
        # A worker nobody watches reads the study's progress once, at the end.
        if on_progress is None:
            return None
        state = with_db_retries(read_progress, "reading progress")
        on_progress(state)
        return state

    def tell(trial: optuna.Trial, result: Result) -> None:
        """Tell ``trial`` its ``result``: its value, pruned, or failed (and queued again
        where the failure was not the trial's own)."""
        nonlocal consecutive_failures
        try:
            value = result()
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
                coordinator.fail(trial, f"database connection lost: {error}", retry=True)
                return
            logger.warning("trial %d failed: %s", trial.number, error, exc_info=True)
            coordinator.fail(trial, f"{type(error).__name__}: {error}")
            consecutive_failures += 1
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise TrialsFailing(
                    f"{consecutive_failures} trials failed in a row, last: "
                    f"{type(error).__name__}: {error}"
                ) from None
        else:
            coordinator.finish(trial, value)
            consecutive_failures = 0

    def run_group(leader: optuna.Trial) -> None:
        """Train ``leader`` with up to ``group_size - 1`` more trials that share its group
        values; each is told as it ends, and an interrupt fails (and queues) the rest."""
        running: dict[int, tuple[optuna.Trial, contextlib.ExitStack]] = {}

        def start(trial: optuna.Trial) -> Any:
            beat = contextlib.ExitStack()
            beat.enter_context(coordinator.heartbeat(trial))
            running[trial.number] = (trial, beat)
            try:
                return objective.start(trial)
            except Exception as error:
                done(trial, functools.partial(_raise, error))
                return None

        def done(trial: optuna.Trial, result: Result) -> None:
            try:
                tell(trial, result)
            finally:
                running.pop(trial.number)[1].close()
            report()

        try:
            runs = [start(leader)]
            if runs[0] is None:
                return
            size = 1
            if group_size > 1:
                try:
                    size = objective.group_capacity(runs[0], group_size)
                except Exception:  # a model whose forward pass fails: training will say so
                    size = 1
            if size > 1:
                with coordinator.fixing(objective.group_values(runs[0])):  # while members sample
                    while len(runs) < size:
                        member = coordinator.claim(member=True)
                        if isinstance(member, str):
                            break
                        if (run := start(member)) is not None:
                            runs.append(run)
            if len(runs) > 1:  # for the dashboard and report
                for trial, _ in running.values():
                    trial.set_user_attr("group", leader.number)
            for trial, result in objective.train(runs):
                done(trial, result)
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
    with signals_interrupt():
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
            run_group(trial)  # reports as each trial ends
    return with_db_retries(read_progress, "reading progress")


def _raise(error: BaseException) -> float:
    raise error


def _interrupted(interrupt: BaseException) -> str:
    """A trial's fail reason for Ctrl-C or a signal (``Interrupted`` names the signal)."""
    return f"interrupted ({interrupt})" if str(interrupt) else "interrupted"
