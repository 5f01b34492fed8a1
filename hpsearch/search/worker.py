"""One worker: ``run_worker`` trains a study's trials in this process, and ``Worker`` is its
claim-train-tell loop, which shows a trial's whole life.

``trials`` is the study's total: a rerun resumes and stops once that many trials have
finished (complete or pruned) overall, across every worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import optuna

from hpsearch import record
from hpsearch.errors import TrialsFailing
from hpsearch.search.coordinator import Coordinator
from hpsearch.search.interrupts import signals_interrupt
from hpsearch.search.plan import RunPlan
from hpsearch.search.progress import ProgressReader, StudyProgress
from hpsearch.search.samplers import GridSearchSampler, groups_trials
from hpsearch.search.study import open_study
from hpsearch.search.trial_end import Complete, Failed, Pruned, TrialEnd, failure
from hpsearch.settings import Settings
from hpsearch.storage.errors import with_db_retries

if TYPE_CHECKING:  # it imports torch, which a worker's bookkeeping does not need
    from hpsearch.problems.splits import Splits

logger = logging.getLogger(__name__)

# A study whose every trial fails is broken (bad config, out of memory): stop, don't spin.
MAX_CONSECUTIVE_FAILURES = 5

Started = TypeVar("Started")


class TrialObjective(Protocol[Started]):
    """What the worker loop asks of an objective, for a trial group of one or more trials.

    ``search.objective.Objective`` is hpsearch's; ``FunctionObjective`` turns a plain
    ``objective(trial) -> float`` into one that runs a trial at a time.
    """

    def start(self, trial: optuna.Trial) -> Started | TrialEnd:
        """Sample ``trial``'s params and get it ready to train; how it ended, if it ended
        before training."""
        ...

    def group_capacity(self, started: Started, limit: int) -> int:
        """How many trials like ``started`` to train as one group, at most ``limit``."""
        ...

    def group_values(self, started: Started) -> dict[str, Any]:
        """The params of ``started`` that the other trials of its group take too."""
        ...

    def train(self, group: Sequence[Started]) -> Iterator[tuple[optuna.Trial, TrialEnd]]:
        """Train ``group`` (together where they can); yield each trial as it ends, with how
        it ended."""
        ...


class FunctionObjective:
    """A plain ``objective(trial) -> float`` as a ``TrialObjective``: one trial at a time, its
    ``optuna.TrialPruned`` a ``Pruned`` end and any other error a ``Failed`` one."""

    def __init__(self, objective: Callable[[optuna.Trial], float | Sequence[float]]) -> None:
        self.objective = objective

    def start(self, trial: optuna.Trial) -> optuna.Trial:
        return trial

    def group_capacity(self, started: optuna.Trial, limit: int) -> int:
        return 1

    def group_values(self, started: optuna.Trial) -> dict[str, Any]:
        return {}

    def train(self, group: Sequence[optuna.Trial]) -> Iterator[tuple[optuna.Trial, TrialEnd]]:
        for trial in group:
            yield trial, self._end(trial)

    def _end(self, trial: optuna.Trial) -> TrialEnd:
        # Optuna's objectives speak in exceptions; here they become ends, once.
        try:
            value = self.objective(trial)
        except optuna.TrialPruned as pruned:
            return Pruned(None, str(pruned) or "pruned")
        except Exception as error:
            return failure(error)
        values = (value,) if isinstance(value, int | float) else tuple(value)
        return Complete(tuple(float(v) for v in values))


def run_worker(
    plan: RunPlan,
    on_progress: Callable[[StudyProgress], None] | None = None,
    on_data: Callable[[Splits], None] | None = None,
) -> tuple[optuna.Study, StudyProgress]:
    """Run ``plan``'s study in this process until it holds ``plan.settings.trials`` finished
    trials: open it (``study.open_study``), load the data once (shown to ``on_data``), and
    run the loop."""
    config, settings = plan.config, plan.settings
    opened = open_study(plan)
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
    """One worker on ``study`` until it holds ``settings.trials`` finished trials, the
    timeout passes, or too many trials fail in a row (``Worker``)."""
    return Worker(study, objective, settings, on_progress).run()


class Worker(Generic[Started]):
    """One worker's loop: claim a trial, train it (with the trials of its group), tell each
    how it ended; until the study holds its total, the timeout passes, or too many trials
    fail in a row.

    Each claim starts a trial group: the claimed trial and, with ``settings.group_size`` > 1,
    up to that many more new trials that take its ``group_values`` (Optuna's
    ``PartialFixedSampler`` draws the rest), trained together; a trial alone is a group of
    one. SIGTERM and SIGINT fail the running trials and queue each again (its checkpoint
    lets the retry resume it) before ``Interrupted`` propagates: no trial is left RUNNING.
    Transient database errors are retried.
    """

    def __init__(
        self,
        study: optuna.Study,
        objective: TrialObjective[Started],
        settings: Settings,
        on_progress: Callable[[StudyProgress], None] | None = None,
        *,
        queue_only: bool = False,
    ) -> None:
        """``queue_only``: run only the study's queued trials, units of work made beforehand
        (finalize's retrains; ``Coordinator``)."""
        self.objective = objective
        self.settings = settings
        self.on_progress = on_progress
        self.coordinator = Coordinator(study, settings.trials, queue_only=queue_only)
        self.grid = study.sampler if isinstance(study.sampler, GridSearchSampler) else None
        self.group_size = (settings.group_size or 1) if groups_trials(settings.sampler) else 1
        self.read_progress = ProgressReader(
            study, settings.trials, list_trials=on_progress is not None
        )
        self.failures_in_a_row = 0
        self.running: dict[int, tuple[optuna.Trial, contextlib.ExitStack]] = {}

    def run(self) -> StudyProgress:
        """Claim, train and tell until done; the study's progress at the end."""
        started = time.monotonic()
        self.report(always=True)  # the counts before this run
        with signals_interrupt():
            while (leader := self.claim(started)) is not None:
                self.train_group(leader)
        return with_db_retries(self.read_progress, "reading progress")

    def claim(self, started: float) -> optuna.Trial | None:
        """The next trial to train, waiting while the rest run elsewhere; None once the
        study holds its total, the timeout has passed, or the grid is exhausted."""
        while True:
            timeout = self.settings.timeout
            if timeout is not None and time.monotonic() - started >= timeout:
                logger.info("timeout of %ss reached", timeout)
                return None
            if self.grid is not None and self.grid.is_exhausted(self.coordinator.study):
                logger.warning("every grid point has been tried")
                return None
            trial = self.coordinator.claim()
            if trial == "done":
                return None
            if trial != "wait":
                return trial
            time.sleep(min(self.coordinator.heartbeat_s or 1.0, 2.0))
            self.report()

    def train_group(self, leader: optuna.Trial) -> None:
        """Train ``leader`` with up to ``group_size - 1`` more trials that share its group
        values; tell each as it ends. On an interrupt the rest are failed and queued again
        (they resume from their checkpoints); on a stop (too many failures in a row) they
        end failed with the reason."""
        try:
            first = self.start(leader)
            if first is None:
                return
            group = [first, *self.members(first)]
            if len(group) > 1:  # for the dashboard and report
                for trial, _ in self.running.values():
                    trial.set_user_attr(record.GROUP, leader.number)
            if self.coordinator.queue_only:  # finalize prints each retrain as it starts
                self.report()
            for trial, end in self.objective.train(group):
                self.tell(trial, end)
        except BaseException as error:
            self.abandon(error)
            raise
        finally:
            for _, beat in self.running.values():
                beat.close()
            self.running.clear()

    def start(self, trial: optuna.Trial) -> Started | None:
        """Keep ``trial`` alive (its heartbeat) and start it; None if it ended at once (told)."""
        beat = contextlib.ExitStack()
        beat.enter_context(self.coordinator.heartbeat(trial))
        self.running[trial.number] = (trial, beat)
        started = self.objective.start(trial)
        if isinstance(started, Complete | Pruned | Failed):
            self.tell(trial, started)
            return None
        return started

    def members(self, first: Started) -> list[Started]:
        """New trials that take ``first``'s group values, as many as its group holds."""
        if self.group_size <= 1:
            return []
        try:
            size = self.objective.group_capacity(first, self.group_size)
        except Exception:  # a model whose forward pass fails: training will say so
            size = 1
        members: list[Started] = []
        if size > 1:
            with self.coordinator.fixing(self.objective.group_values(first)):
                while len(members) < size - 1:
                    trial = self.coordinator.claim(member=True)
                    if isinstance(trial, str):  # "done" or "wait": no more new trials
                        break
                    if (started := self.start(trial)) is not None:
                        members.append(started)
        return members

    def tell(self, trial: optuna.Trial, end: TrialEnd) -> None:
        """Tell Optuna how ``trial`` ended: complete with its values, pruned with the reason,
        or failed (and queued again where the failure was not the trial's own); stop the
        worker after ``MAX_CONSECUTIVE_FAILURES`` failures of its own in a row."""
        try:
            if isinstance(end, Complete):
                self.coordinator.complete(trial, end.values)
                self.failures_in_a_row = 0
            elif isinstance(end, Pruned):
                self.coordinator.prune(trial, end.reason)
                self.failures_in_a_row = 0
            elif end.stale:  # another worker failed it and queued its retry: drop this run
                logger.warning("trial %d was failed by another worker; dropped", trial.number)
            elif self.coordinator.fail(trial, end.reason, retry=end.retry):
                self._failed(trial, end)
        finally:
            self.running.pop(trial.number)[1].close()
        self.report()

    def _failed(self, trial: optuna.Trial, end: Failed) -> None:
        if end.retry:  # the database went away mid-trial: its retry resumes
            logger.warning("trial %d lost its database connection: %s", trial.number, end.reason)
            return
        logger.warning("trial %d failed: %s", trial.number, end.reason, exc_info=end.error)
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise TrialsFailing(
                f"{self.failures_in_a_row} trials failed in a row, last: {end.reason}"
            )

    def abandon(self, error: BaseException) -> None:
        """Fail the trials still running after ``error``: queued again when it is an
        interrupt (they resume from their checkpoints), else with the worker's stop as the
        reason."""
        interrupted = isinstance(error, KeyboardInterrupt)
        reason = _interrupted(error) if interrupted else f"worker stopped: {error}"
        for trial, _ in list(self.running.values()):
            try:
                self.coordinator.fail(trial, reason, retry=interrupted, quiet=interrupted)
            except Exception as failure:  # the database is gone: the trial goes stale
                logger.warning("trial %d left running: %s", trial.number, failure)

    def report(self, always: bool = False) -> None:
        """Show the study's progress to ``on_progress``; a worker nobody watches reads it
        only when ``always`` (its counts before the run)."""
        if self.on_progress is None and not always:
            return
        progress = with_db_retries(self.read_progress, "reading progress")
        if self.on_progress is not None:
            self.on_progress(progress)


def _interrupted(interrupt: BaseException) -> str:
    """A trial's fail reason for Ctrl-C or a signal (``Interrupted`` names the signal)."""
    return f"interrupted ({interrupt})" if str(interrupt) else "interrupted"
