"""finalize's retrains as units of work the search's engine runs.

Each retrain (a configuration, a seed, and the rows it trains on) is a trial of the study's
companion ``<study>:finalize``, queued once, then claimed and trained as a search trial is, by
any worker on this machine or another: heartbeats, a retry that resumes from its checkpoint,
an exact count (``search.coordinator.Coordinator`` with ``queue_only``). A retrain's
validation scores are its trial's attributes, and its model is kept in the artifact store,
where ``results.finalize`` reads it back to score the final model and the ensemble.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from hpsearch import record
from hpsearch.errors import HpsearchError
from hpsearch.problems import Problem, get_problem
from hpsearch.problems.metrics import Metrics
from hpsearch.problems.splits import Splits
from hpsearch.search.checkpoints import CheckpointStore
from hpsearch.search.coordinator import retry_trial
from hpsearch.search.trial_end import Complete, Failed, Pruned, TrialEnd, failure
from hpsearch.search.worker import Worker
from hpsearch.settings import Settings
from hpsearch.storage.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    open_artifact_store,
    read_artifact,
    store_errors,
)
from hpsearch.storage.counts import load_study
from hpsearch.storage.database import open_storage
from hpsearch.storage.lock import StudyLock
from hpsearch.storage.urls import parse_url
from hpsearch.training import (
    Crashed,
    Diverged,
    Outcome,
    TrainConfig,
    Trainee,
    TrainState,
    seeded,
    train_many,
)
from hpsearch.training.devices import resolve_device
from hpsearch.training.stack import stack_capacity

logger = logging.getLogger(__name__)

TRAIN, ALL = "train", "train+validation"  # the rows a retrain trains on
# Checkpoints per retrain: a killed one loses at most a fifth of its epochs.
CHECKPOINTS_PER_RETRAIN = 5


@dataclass(frozen=True)
class Retrain:
    """One retrain: trial ``trial``'s configuration ``params`` with ``seed`` on ``rows``."""

    trial: int
    params: dict[str, Any]
    seed: int
    rows: str

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.trial, self.seed, self.rows)


def companion_name(study_name: str) -> str:
    """The name of the study that holds ``study_name``'s retrains."""
    return f"{study_name}:finalize"


def queue_retrains(
    study: optuna.Study, retrains: Sequence[Retrain], identity: str, settings: Settings
) -> int:
    """Queue ``retrains`` in ``study``'s companion: once (a finalize run again, or joined
    from another machine, finds them queued, running or done). A companion of another
    finalize (another ``identity``: other candidates or seeds) is replaced unless its
    retrains are running. Retrains already queued stay; the number queued in all.

    Raises:
        HpsearchError: another finalize's retrains are running.
    """
    name = companion_name(study.study_name)
    storage = open_storage(settings.storage)
    with StudyLock(parse_url(settings.storage), name).hold():
        try:
            companion: optuna.Study | None = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            companion = None
        if companion is not None and companion.user_attrs.get(record.RETRAINS) != identity:
            states = [t.state for t in companion.get_trials(deepcopy=False)]
            if TrialState.RUNNING in states and record.RETRAINS in companion.user_attrs:
                raise HpsearchError(
                    f"study {study.study_name!r}: another finalize (of other candidates or "
                    "seeds) is running its retrains; wait for it, or run the same command to "
                    "join it"
                )
            _forget(companion, settings)
            optuna.delete_study(study_name=name, storage=storage)
            companion = None
        if companion is None:
            companion = optuna.create_study(study_name=name, storage=storage)
            companion.set_user_attr(record.RETRAIN_OF, study.study_name)
            companion.set_user_attr(record.RETRAINS, identity)
        queued = {_key(t) for t in companion.get_trials(deepcopy=False)}
        for retrain in retrains:
            if retrain.key not in queued:
                companion.enqueue_trial(
                    {},
                    user_attrs={
                        record.RETRAIN_OF: retrain.trial,
                        record.CONFIG: retrain.params,
                        record.SEED: retrain.seed,
                        record.ROWS: retrain.rows,
                    },
                )
        return len({*queued, *(r.key for r in retrains)})


def _forget(companion: optuna.Study, settings: Settings) -> None:
    """Remove the models an earlier finalize's retrains kept in the artifact store."""
    if not settings.artifacts:
        return
    store = open_artifact_store(settings.artifacts)
    for trial in companion.get_trials(deepcopy=False):
        key = trial.user_attrs.get(record.WEIGHTS)
        if key is not None:
            with contextlib.suppress(ArtifactNotFound, *store_errors()):
                store.remove(key)


def _key(trial: FrozenTrial) -> tuple[int, int, str]:
    attrs = trial.user_attrs
    return (int(attrs[record.RETRAIN_OF]), int(attrs[record.SEED]), str(attrs[record.ROWS]))


def open_retrains(study_name: str, url: str) -> optuna.Study:
    """The companion study of ``study_name``'s retrains, opened to read."""
    return load_study(companion_name(study_name), url)


def finished_retrains(companion: optuna.Study) -> dict[tuple[int, int, str], FrozenTrial]:
    """The finished (complete, or pruned when it diverged) trial of each retrain in
    ``companion``, by ``Retrain.key``."""
    done = companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return {_key(trial): trial for trial in done}


def failed_retrains(companion: optuna.Study) -> list[FrozenTrial]:
    """Retrains in ``companion`` that failed on their last attempt (no retry left)."""
    trials = companion.get_trials(deepcopy=False)
    done = {_key(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    waiting = {_key(t) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and record.RETRAIN_OF in t.user_attrs
        and _key(t) not in done | waiting
        and record.retry_attrs(t) is None
    ]


def model_of(
    retrain: FrozenTrial, problem: Problem, shape: Sequence[int], store: ArtifactStore
) -> nn.Module:
    """The model a finished retrain saved, rebuilt from its configuration and weights.

    Raises:
        HpsearchError: the weights are not in ``store`` (another machine's, not shared).
    """
    key = retrain.user_attrs[record.WEIGHTS]
    try:
        data = read_artifact(store, key)
    except ArtifactNotFound:
        raise HpsearchError(
            f"the model of retrain {retrain.number} ({retrain.user_attrs.get(record.WORKER)}) "
            f"is not in the artifact store ({key}): finalize's workers on several machines "
            "need one store they all reach (--artifacts s3://... or a shared folder)"
        ) from None
    model = problem.build_model(retrain.user_attrs[record.CONFIG], shape)
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.eval()


def run_retrains(
    study_name: str,
    settings: Settings,
    splits: Splits | None = None,
    on_progress: Callable[[], None] | None = None,
) -> None:
    """One worker on ``study_name``'s queued retrains, in this process, until none is left
    waiting or running (``splits``: the data, if already loaded here).

    Raises:
        TrialsFailing: retrain after retrain failed in this worker.
    """
    study = load_study(study_name, settings.storage)
    attrs = study.user_attrs
    problem = get_problem(attrs[record.PROBLEM])
    device = resolve_device(settings.device)
    if splits is None:
        splits = problem.load_data(settings.data_dir, **attrs[record.DATA])
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    store = open_artifact_store(settings.artifacts)
    name = companion_name(study_name)
    storage = open_storage(
        settings.storage,
        heartbeat_interval=settings.heartbeat_interval,
        on_stale_trial=retry_trial,
        pre_ping=False,
    )
    companion = optuna.load_study(study_name=name, storage=storage)
    objective = RetrainObjective(problem, splits.to(device), store, name, attrs[record.DATA])
    target = len({_key(t) for t in companion.get_trials(deepcopy=False)})
    report = (lambda _: on_progress()) if on_progress is not None else None
    Worker(companion, objective, replace(settings, trials=target), report, queue_only=True).run()


def retrain_worker_main(study_name: str, settings: Settings, index: int) -> None:
    """One local worker process of ``hpsearch finalize --workers W``: its share of the
    retrains; a failure is one line and its exit code (as a search worker's)."""
    from hpsearch.search.local_workers import exit_with_reason

    exit_with_reason(index, functools.partial(run_retrains, study_name, settings))


@dataclass
class StartedRetrain:
    """A retrain the objective has started: its trial, what it trains on, its trainee."""

    trial: optuna.Trial
    retrain: Retrain
    trainee: Trainee
    started: float


class RetrainObjective:
    """Trains queued retrains (a ``search.worker.TrialObjective``): each builds its model
    from its trial's configuration and seed, trains on its rows (as one stack where several
    of a group share a shape and rows), and ends complete, with its validation metrics
    (training rows) or its model in the store (training and validation rows), or pruned
    when it diverged."""

    def __init__(
        self,
        problem: Problem,
        splits: Splits,
        store: ArtifactStore,
        companion: str,
        data: dict[str, Any],
    ) -> None:
        self.problem, self.splits, self.store, self.data = problem, splits, store, data
        self.prefix = "retrains/" + re.sub(r"[^A-Za-z0-9_.-]", "_", companion)
        self.checkpoints = CheckpointStore(store, companion)
        s = splits
        self.rows = {
            TRAIN: (s.x_train, s.y_train),
            ALL: (torch.cat([s.x_train, s.x_val]), torch.cat([s.y_train, s.y_val])),
        }

    def start(self, trial: optuna.Trial) -> StartedRetrain | TrialEnd:
        try:
            return self._start(trial)
        except Exception as error:
            return failure(error)

    def _start(self, trial: optuna.Trial) -> StartedRetrain:
        attrs = trial.user_attrs
        retrain = Retrain(
            int(attrs[record.RETRAIN_OF]),
            {**attrs[record.CONFIG], **self.splits.model_params},
            int(attrs[record.SEED]),
            str(attrs[record.ROWS]),
        )
        x, _ = self.rows[retrain.rows]
        problem, params = self.problem, retrain.params
        model, rng = seeded(
            functools.partial(problem.build_model, params, tuple(x.shape[1:])), retrain.seed
        )
        config = TrainConfig.from_params(params, seed=retrain.seed)
        series = record.series(trial)
        tag = json.dumps(
            {"params": params, "seed": retrain.seed, "rows": retrain.rows, "data": self.data},
            sort_keys=True,
            default=str,
        )
        resume = self.checkpoints.load(series, tag) if record.RETRY_OF in attrs else None
        if resume is not None:
            trial.set_user_attr(record.RESUMED_FROM_EPOCH, resume.epoch)
        trial.set_user_attr(record.WORKER, record.this_worker())
        evaluate: Callable[[nn.Module], Metrics] = (
            self._validation if retrain.rows == TRAIN else lambda model: {}
        )
        trainee = Trainee(
            model.to(x.device),
            problem.losses[params["loss"]],
            config,
            evaluate,
            on_checkpoint=functools.partial(self._checkpoint, series, tag),
            resume=resume,
            rng=rng,
            eval_every=max(1, config.epochs // CHECKPOINTS_PER_RETRAIN),
        )
        return StartedRetrain(trial, retrain, trainee, time.perf_counter())

    def _validation(self, model: nn.Module) -> Metrics:
        s = self.splits
        return self.problem.evaluate(model, s.x_val, s.y_val, s)

    def _checkpoint(self, series: int, tag: str, state: TrainState) -> None:
        self.checkpoints.save(series, state, tag)

    def group_capacity(self, started: StartedRetrain, limit: int) -> int:
        trainee = started.trainee
        return stack_capacity(trainee.model, trainee.config, self.splits.x_train[:1], limit)

    def group_values(self, started: StartedRetrain) -> dict[str, Any]:
        return {}  # a group is the next queued retrains, whatever their configuration

    def train(self, group: Sequence[StartedRetrain]) -> Iterator[tuple[optuna.Trial, TrialEnd]]:
        """Train ``group``, the retrains of each rows together (as one stack where they
        share a shape); yield each trial as it ends, with how it ended."""
        for rows, (x, y) in self.rows.items():
            alike = [started for started in group if started.retrain.rows == rows]
            trainees = [started.trainee for started in alike]
            for index, outcome in train_many(trainees, x, y, group_size=len(alike)):
                started = alike[index]
                yield started.trial, self._end(started, outcome)

    def _end(self, started: StartedRetrain, outcome: Outcome) -> TrialEnd:
        trial, retrain = started.trial, started.retrain
        if isinstance(outcome, Crashed):
            return failure(outcome.error)
        if isinstance(outcome, Diverged):  # this seed is out; the rest of finalize goes on
            self.checkpoints.delete(record.series(trial))
            return Pruned(outcome.epoch, str(outcome))
        trial.set_user_attr(record.TRAIN_SECONDS, round(time.perf_counter() - started.started, 3))
        trial.set_user_attr(record.EPOCHS_RUN, outcome.epochs_run)
        trial.set_user_attr(record.TRAIN_LOSS, outcome.train_loss)
        model = started.trainee.model
        if retrain.rows == TRAIN:
            for name, value in outcome.metrics.items():
                trial.set_user_attr(f"val_{name}", value)
            calibration = self.problem.calibration
            if calibration is not None:
                statistic = calibration.statistic(model, self.splits.x_val, self.splits.y_val)
                trial.set_user_attr(record.CALIBRATION, statistic)
        else:
            key = f"{self.prefix}/trial-{trial.number}.pt"
            buffer = io.BytesIO()
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
            buffer.seek(0)
            try:
                self.store.write(key, buffer)
            except store_errors() as error:  # a full disk, S3 away: queued again, once
                return Failed(error, retry=True)
            trial.set_user_attr(record.WEIGHTS, key)
        self.checkpoints.delete(record.series(trial))
        return Complete((float(outcome.train_loss),))
