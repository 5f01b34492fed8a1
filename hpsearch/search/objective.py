"""The Optuna objective: the only place that touches ``trial``. ``Objective`` builds, trains and
scores the trials the worker loop (``search.worker.run_trials``) hands it, one at a time or as
a trial group trained as one stack (``training.train_members``)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
import torch

from hpsearch.problems.splits import Splits
from hpsearch.search import constraints
from hpsearch.search.checkpoints import CheckpointStore
from hpsearch.search.pareto_pruning import DominatedPruner
from hpsearch.search.space import suggest_params
from hpsearch.search.study_file import StudyConfig
from hpsearch.storage.errors import is_transient_db_error
from hpsearch.storage.worker_view import CURVE
from hpsearch.training import (
    EpochResult,
    LossFn,
    Member,
    NonFiniteLossError,
    Outcome,
    TrainConfig,
    TrainState,
    seeded,
    train_members,
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
    of a crashed trial (``retry_of`` attribute) continues from its series' checkpoint.
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
        """Train one trial alone: its objectives' values, or ``optuna.TrialPruned``."""
        [(_, result)] = self.train([self.start(trial)])
        return result()

    def start(self, trial: optuna.Trial) -> TrialRun:
        """Sample ``trial``'s params, record them, find its checkpoint and build its model."""
        config, problem = self.config, self.problem
        params = suggest_params(trial, config.space, config.base_params, problem.per_layer)
        params |= self.splits.model_params  # the class count of a user's table
        # A retry keeps the seed and checkpoint of the first trial of its series.
        series = int(trial.user_attrs.get("retry_of", trial.number))
        seed = trial_seed(self.seed, series)
        # Only a retry resumes, and only from a checkpoint of the same configuration, data
        # options and seed (a file left by a same-named study in another database is not
        # this trial's).
        tag = json.dumps(
            {"params": params, "data": self.config.data, "seed": seed}, sort_keys=True, default=str
        )
        is_retry = "retry_of" in trial.user_attrs
        resume = self.checkpoints.load(series, tag) if self.checkpoints and is_retry else None
        if resume is not None:
            logger.info(
                "trial %d resumes trial %d after epoch %d", trial.number, series, resume.epoch
            )
            trial.set_user_attr("resumed_from_epoch", resume.epoch)
        trial.set_user_attr("config", params)
        trial.set_user_attr("seed", seed)
        # Which machine and process ran it: with workers on many hosts, where to look.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        shape = self.splits.x_train.shape[1:]
        model, rng = seeded(lambda: problem.build_model(params, shape), seed)
        model.to(self.device)
        # What the model costs (parameters, bytes, FLOPs, latency) is known before training:
        # recorded now, and a trial that breaks a limit on one stops here, untrained.
        costs = model_costs(model, self.splits.x_train[:1])
        for name, value in costs.items():
            trial.set_user_attr(name, value)
        run = TrialRun(
            self, trial, params, series, tag, model, rng, resume, problem.losses[params["loss"]]
        )
        run.costs = costs
        if broken := constraints.broken(config.limits, costs):
            run.record(None, pruned_reason=f"not trained: {', '.join(broken)}")
            raise optuna.TrialPruned(f"not trained: {', '.join(broken)}")
        return run

    def group_capacity(self, run: TrialRun, limit: int) -> int:
        """How many trials of ``run``'s shape to train as one stack, at most ``limit``
        (``training.stack.stack_capacity``: on a CPU, while a step's activations stay in
        cache)."""
        return stack_capacity(run.model, run.config, self.splits.x_train[:1], limit)

    def group_values(self, run: TrialRun) -> dict[str, Any]:
        """``run``'s values of the problem's ``group_params``, which the other trials of its
        group take: what sets the model's layers and shapes, the batch size and epochs."""
        shared = self.problem.group_params
        return {
            name: value
            for name, value in run.trial.params.items()
            if name in shared or name.rsplit("_", 1)[0] in shared
        }

    def train(
        self, runs: Sequence[TrialRun]
    ) -> Iterator[tuple[optuna.Trial, Callable[[], float | list[float]]]]:
        """Train ``runs``, as one stack where they share a shape (a retry or an enqueued trial
        may not match the rest; a model ``training.stack`` cannot fuse trains alone); yield
        each trial as its training ends, with its result (``trial_value``)."""
        members = [run.member(self) for run in runs]
        s = self.splits
        for index, outcome in train_members(members, s.x_train, s.y_train, group_size=len(runs)):
            run = runs[index]
            yield run.trial, functools.partial(self.trial_value, run, outcome)

    def trial_value(self, run: TrialRun, outcome: Outcome) -> float | list[float]:
        """The trial's value (of several objectives, its values) from its training outcome,
        or the exception its worker acts on: ``optuna.TrialPruned`` for a pruned or diverged
        run, else the error as raised."""
        trial = run.trial
        if isinstance(outcome, NonFiniteLossError):
            # A diverged run (the lab report's SGD-to-NaN) ends pruned, so the study goes on and
            # the sampler learns that this region is bad.
            run.record(run.last, pruned_reason=str(outcome))
            logger.info("trial %d: %s", trial.number, outcome)
            self._forget(run.series)
            raise optuna.TrialPruned(str(outcome)) from None
        if isinstance(outcome, BaseException):
            # Pruned, or a bug or an out-of-memory error: no retry will come. A lost database
            # connection is retried, and the retry resumes from the checkpoint; so is a trial
            # that another worker failed while this one stalled. Interrupts and crashes keep
            # the checkpoint: the retry resumes from it.
            stale = isinstance(outcome, optuna.exceptions.UpdateFinishedTrialError)
            if not (stale or is_transient_db_error(outcome)):
                self._forget(run.series)
            raise outcome
        result = run.last
        assert result is not None  # training reports the last epoch
        values = run.record(result)
        self._forget(run.series)
        if not self.config.multi_objective:
            return values[self.config.metric]
        return [values[metric] for metric in self.config.metrics]

    def _forget(self, series: int) -> None:
        if self.checkpoints is not None:
            self.checkpoints.delete(series)


class TrialRun:
    """One trial's training: its params, model and the callbacks that report its epochs."""

    def __init__(
        self,
        objective: Objective,
        trial: optuna.Trial,
        params: dict[str, Any],
        series: int,
        tag: str,
        model: torch.nn.Module,
        rng: torch.Tensor,
        resume: TrainState | None,
        loss_fn: LossFn,
    ) -> None:
        self.objective, self.trial, self.params = objective, trial, params
        self.series, self.tag, self.model, self.rng = series, tag, model, rng
        self.resume, self.loss_fn = resume, loss_fn
        self.config = TrainConfig.from_params(params, seed=int(trial.user_attrs["seed"]))
        self.last: EpochResult | None = None
        self.started = time.perf_counter()
        self.costs: dict[str, float] = {}  # training.costs.model_costs, set by Objective.start
        # Several objectives: the learning curve, {"epoch": value} (a retry's copied one too).
        self.curve: dict[str, float] = dict(trial.user_attrs.get(CURVE, {}))

    def record(self, result: EpochResult | None, **extra: Any) -> dict[str, float]:
        """Store the trial's metrics after ``result`` (its last epoch) and how far each limit
        is from being broken (``Trial.set_constraint``); return every metric by name."""
        trial = self.trial
        values = dict(self.costs)
        values["train_seconds"] = round(time.perf_counter() - self.started, 3)
        trial.set_user_attr("train_seconds", values["train_seconds"])
        if result is not None:
            values |= result.metrics
            trial.set_user_attr("epochs_run", result.epoch)
            trial.set_user_attr("train_loss", result.train_loss)
            for name, value in result.metrics.items():
                trial.set_user_attr(name, value)
        for name, value in extra.items():
            trial.set_user_attr(name, value)
        for limit in self.objective.config.limits:
            # A limit on a metric a stopped trial never reached (its validation metric
            # before the first epoch) stays unset: Optuna reads no constraint as kept.
            if limit.metric in values and math.isfinite(values[limit.metric]):
                trial.set_constraint(limit.key, limit.violation(values[limit.metric]))
        return values

    def on_epoch(self, result: EpochResult) -> None:
        self.last = result
        trial = self.trial
        value = result.metrics[self.objective.config.metric]
        if not math.isfinite(value):
            raise NonFiniteLossError(result.epoch, value)
        if self.objective.config.multi_objective:
            # Optuna's report and should_prune take one objective: the curve is a user
            # attribute, which hpsearch's pruner (search.pareto_pruning) judges. A retry keeps
            # its failed attempt's epochs, as Optuna keeps a first report.
            self.curve.setdefault(str(result.epoch), value)
            trial.set_user_attr(CURVE, self.curve)
            pruner = trial.study.pruner
            prune = isinstance(pruner, DominatedPruner) and pruner.dominated(
                trial.study, result.epoch, value, self.costs
            )
        else:
            with warnings.catch_warnings():
                # A retry re-reports its failed attempt's epochs; Optuna keeps the first.
                warnings.filterwarnings("ignore", message="The reported value is ignored")
                trial.report(value, result.epoch)
            prune = trial.should_prune()
        if prune:
            self.record(result, pruned_reason=f"pruner stopped it after epoch {result.epoch}")
            raise optuna.TrialPruned(f"pruned after epoch {result.epoch}")

    def on_checkpoint(self, state: TrainState) -> None:
        if self.objective.checkpoints is not None:
            self.objective.checkpoints.save(self.series, state, self.tag)

    def member(self, objective: Objective) -> Member:
        """What training takes for this trial: its model, its stream, its callbacks."""
        return Member(
            self.model,
            self.loss_fn,
            self.config,
            objective.validation_metrics,
            on_epoch=self.on_epoch,
            on_checkpoint=self.on_checkpoint if objective.checkpoints else None,
            resume=self.resume,
            rng=self.rng,
            eval_every=objective.config.eval_every,
        )
