"""The Optuna objective: the only place that touches a trial while it trains. ``Objective``
samples, builds, trains and scores the trials the worker loop (``search.worker.Worker``) hands
it, one at a time or as a trial group trained as one stack (``training.train_many``), and
answers each with how it ended (``search.trial_end``)."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
import torch

from hpsearch import record
from hpsearch.problems.splits import Splits
from hpsearch.search import constraints
from hpsearch.search.checkpoints import CheckpointStore
from hpsearch.search.pareto_pruning import DominatedPruner
from hpsearch.search.space import suggest_params
from hpsearch.search.study_file import StudyConfig
from hpsearch.search.trial_end import Complete, Failed, Pruned, TrialEnd, failure
from hpsearch.training import (
    Crashed,
    Diverged,
    EpochResult,
    Outcome,
    TrainConfig,
    Trainee,
    TrainState,
    seeded,
    train_many,
)
from hpsearch.training.costs import model_costs
from hpsearch.training.stack import stack_capacity

logger = logging.getLogger(__name__)


def trial_seed(study_seed: int, trial_number: int) -> int:
    return study_seed + trial_number


class Objective:
    """Builds, trains and scores one model per trial (a ``search.worker.TrialObjective``).

    Data are loaded once by the caller and kept on ``device``; each trial samples its params,
    reports the validation metric every ``config.eval_every`` epochs and lets the pruner
    stop it. With ``checkpoints``, the training state is saved at every report, and a retry
    of a crashed trial (``record.RETRY_OF``) continues from its series' checkpoint.
    """

    def __init__(
        self,
        config: StudyConfig,
        splits: Splits,
        device: torch.device,
        *,
        seed: int,
        checkpoints: CheckpointStore | None = None,
    ) -> None:
        self.config = config
        self.problem = config.problem
        self.splits = splits.to(device)
        self.device = device
        self.seed = seed
        self.checkpoints = checkpoints

    def validation_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        s = self.splits
        metrics = self.problem.evaluate(model, s.x_val, s.y_val, s)
        return {f"val_{name}": value for name, value in metrics.items()}

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        """Train one trial alone, in Optuna's plain form (``study.optimize(objective)``): its
        objectives' values, else ``optuna.TrialPruned`` or the error that failed it."""
        started = self.start(trial)
        end = started if isinstance(started, TrialEnd) else next(self.train([started]))[1]
        if isinstance(end, Pruned):
            trial.set_user_attr(record.PRUNED_REASON, end.reason)
            raise optuna.TrialPruned(end.reason)
        if isinstance(end, Failed):
            raise end.error
        return end.values[0] if len(end.values) == 1 else list(end.values)

    def start(self, trial: optuna.Trial) -> StartedTrial | TrialEnd:
        """Sample ``trial``'s params, record them, find its checkpoint and build its model;
        how it ended, if it ends before training (a limit its model breaks, an error)."""
        try:
            return self._start(trial)
        except Exception as error:  # a model that cannot be built, a lost database
            return failure(error)

    def _start(self, trial: optuna.Trial) -> StartedTrial | TrialEnd:
        config, problem = self.config, self.problem
        params = suggest_params(trial, config.space, config.base_params, problem.per_layer)
        params |= self.splits.model_params  # the class count of a user's table
        # A retry keeps the seed and checkpoint of the first trial of its series.
        series = record.series(trial)
        seed = trial_seed(self.seed, series)
        # Only a retry resumes, and only from a checkpoint of the same configuration, data
        # options and seed (a file left by a same-named study in another database is not
        # this trial's).
        tag = json.dumps(
            {"params": params, "data": self.config.data, "seed": seed}, sort_keys=True, default=str
        )
        is_retry = record.RETRY_OF in trial.user_attrs
        resume = self.checkpoints.load(series, tag) if self.checkpoints and is_retry else None
        if resume is not None:
            logger.info(
                "trial %d resumes trial %d after epoch %d", trial.number, series, resume.epoch
            )
            trial.set_user_attr(record.RESUMED_FROM_EPOCH, resume.epoch)
        trial.set_user_attr(record.CONFIG, params)
        trial.set_user_attr(record.SEED, seed)
        trial.set_user_attr(record.WORKER, record.this_worker())
        shape = self.splits.x_train.shape[1:]
        model, rng = seeded(lambda: problem.build_model(params, shape), seed)
        model.to(self.device)
        # What the model costs (parameters, bytes, FLOPs, latency) is known before training:
        # recorded now, and a trial that breaks a limit on one stops here, untrained.
        costs = model_costs(model, self.splits.x_train[:1])
        for name, value in costs.items():
            trial.set_user_attr(name, value)
        started = StartedTrial(self, trial, series, tag, costs)
        if broken := constraints.broken(config.limits, costs):
            started.record(None)
            return Pruned(0, f"{record.NOT_TRAINED}: {', '.join(broken)}")
        started.trainee = Trainee(
            model,
            problem.losses[params["loss"]],
            TrainConfig.from_params(params, seed=seed),
            self.validation_metrics,
            on_epoch=started.on_epoch,
            on_checkpoint=started.on_checkpoint if self.checkpoints else None,
            resume=resume,
            rng=rng,
            eval_every=config.eval_every,
        )
        return started

    def group_capacity(self, started: StartedTrial, limit: int) -> int:
        """How many trials of ``started``'s shape to train as one stack, at most ``limit``
        (``training.stack.stack_capacity``: on a CPU, while a step's activations stay in
        cache)."""
        trainee = started.trainee
        return stack_capacity(trainee.model, trainee.config, self.splits.x_train[:1], limit)

    def group_values(self, started: StartedTrial) -> dict[str, Any]:
        """``started``'s values of the problem's ``group_params``, which the other trials of
        its group take: what sets the model's layers and shapes, the batch size and epochs."""
        shared = self.problem.group_params
        return {
            name: value
            for name, value in started.trial.params.items()
            if name in shared or name.rsplit("_", 1)[0] in shared
        }

    def train(self, group: Sequence[StartedTrial]) -> Iterator[tuple[optuna.Trial, TrialEnd]]:
        """Train ``group``, as one stack where its trials share a shape (a retry or an
        enqueued trial may not match the rest; a model ``training.stack`` cannot fuse trains
        alone); yield each trial as its training ends, with how it ended."""
        s = self.splits
        trainees = [started.trainee for started in group]
        for index, outcome in train_many(trainees, s.x_train, s.y_train, group_size=len(group)):
            started = group[index]
            end = started.end(outcome)
            if not (isinstance(end, Failed) and (end.retry or end.stale)) and self.checkpoints:
                # Its retry, if one comes, resumes from the checkpoint; nothing else will.
                self.checkpoints.delete(started.series)
            yield started.trial, end


class StartedTrial:
    """A trial the objective has started: its series, costs, learning curve and the
    ``Trainee`` its model trains as; it reports the trainee's epochs to Optuna and records the
    trial's metrics."""

    trainee: Trainee

    def __init__(
        self,
        objective: Objective,
        trial: optuna.Trial,
        series: int,
        tag: str,
        costs: dict[str, float],
    ) -> None:
        self.objective, self.trial, self.series, self.tag = objective, trial, series, tag
        self.costs = costs  # training.costs.model_costs
        self.config = objective.config
        self.started = time.perf_counter()
        self.last: EpochResult | None = None
        # Several objectives: the learning curve, {"epoch": value} (a retry's copied one too).
        self.curve: dict[str, float] = dict(trial.user_attrs.get(record.CURVE, {}))
        # A failure while reporting (a lost database): the end it stopped training with.
        self.failed: Failed | None = None

    def end(self, outcome: Outcome) -> TrialEnd:
        """How the trial ended, from how its training ended; its metrics recorded."""
        if isinstance(outcome, Crashed):  # a bug or out of memory: no retry will come
            return failure(outcome.error)
        if isinstance(outcome, Diverged):
            # A diverged run (the lab report's SGD-to-NaN) ends pruned, so the study goes on
            # and the sampler learns that this region is bad.
            self.record(self.last)
            logger.info("trial %d: %s", self.trial.number, outcome)
            return Pruned(outcome.epoch, str(outcome))
        if self.failed is not None:
            return self.failed
        values = self.record(self.last)
        if outcome.stopped is not None:
            return Pruned(outcome.epochs_run, outcome.stopped)
        return Complete(tuple(values[metric] for metric in self.config.metrics))

    def record(self, result: EpochResult | None) -> dict[str, float]:
        """Store the trial's metrics after ``result`` (its last epoch) and how far each limit
        is from being broken (``Trial.set_constraint``); return every metric by name."""
        trial = self.trial
        values = dict(self.costs)
        values["train_seconds"] = round(time.perf_counter() - self.started, 3)
        trial.set_user_attr(record.TRAIN_SECONDS, values["train_seconds"])
        if result is not None:
            values |= result.metrics
            trial.set_user_attr(record.EPOCHS_RUN, result.epoch)
            trial.set_user_attr(record.TRAIN_LOSS, result.train_loss)
            for name, value in result.metrics.items():
                trial.set_user_attr(name, value)
        for limit in self.config.limits:
            # A limit on a metric a stopped trial never reached (its validation metric
            # before the first epoch) stays unset: Optuna reads no constraint as kept.
            if limit.metric in values and math.isfinite(values[limit.metric]):
                trial.set_constraint(limit.key, limit.violation(values[limit.metric]))
        return values

    def on_epoch(self, result: EpochResult) -> str | None:
        """Report an evaluated epoch; why training stops here (pruned, a non-finite
        metric, a failure to report), or None."""
        self.last = result
        value = result.metrics[self.config.metric]
        if not math.isfinite(value):
            return f"non-finite {self.config.metric} ({value}) in epoch {result.epoch}"
        try:
            prune = self._report(result.epoch, value)
        except Exception as error:  # the database lost, or another worker failed the trial
            self.failed = failure(error)
            return self.failed.reason
        return f"pruner stopped it after epoch {result.epoch}" if prune else None

    def _report(self, epoch: int, value: float) -> bool:
        """Report ``value`` at ``epoch``; whether the pruner stops the trial there."""
        trial = self.trial
        if self.config.multi_objective:
            # Optuna's report and should_prune take one objective: the curve is a user
            # attribute, which hpsearch's pruner (search.pareto_pruning) judges. A retry keeps
            # its failed attempt's epochs, as Optuna keeps a first report.
            self.curve.setdefault(str(epoch), value)
            trial.set_user_attr(record.CURVE, self.curve)
            pruner = trial.study.pruner
            return isinstance(pruner, DominatedPruner) and pruner.dominated(
                trial.study, epoch, value, self.costs
            )
        with warnings.catch_warnings():
            # A retry re-reports its failed attempt's epochs; Optuna keeps the first.
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            trial.report(value, epoch)
        return trial.should_prune()

    def on_checkpoint(self, state: TrainState) -> None:
        assert self.objective.checkpoints is not None  # passed only with a store
        self.objective.checkpoints.save(self.series, state, self.tag)
