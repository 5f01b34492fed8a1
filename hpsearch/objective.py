"""The Optuna objective: the only place that touches ``trial``."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch

from hpsearch.checkpoints import CheckpointStore
from hpsearch.data import Splits
from hpsearch.groups import (
    GroupMember,
    Outcome,
    group_capacity,
    group_key,
    seeded,
    train_group,
)
from hpsearch.models import count_parameters
from hpsearch.space import suggest_params
from hpsearch.storage import is_transient_db_error
from hpsearch.study_file import StudyConfig
from hpsearch.training import (
    EpochResult,
    LossFn,
    NonFiniteLossError,
    TrainConfig,
    TrainState,
    train,
)

logger = logging.getLogger(__name__)


def trial_seed(study_seed: int, trial_number: int) -> int:
    return study_seed + trial_number


class Objective:
    """Builds, trains and scores one model per trial.

    Data are loaded once by the caller and kept on ``device``; each call samples params,
    reports the validation metric every ``config.eval_every`` epochs and lets the pruner
    stop the trial. With ``checkpoints``, the training state is saved at every report, and a
    retry of a crashed trial (``retry_of`` attribute) continues from its series' checkpoint.
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

    def __call__(self, trial: optuna.Trial) -> float:
        """Train one trial alone; its validation metric, or ``optuna.TrialPruned``."""
        run = self.prepare(trial)
        return self.conclude(run, self._train_alone(run))

    def prepare(self, trial: optuna.Trial) -> TrialRun:
        """Sample ``trial``'s params, record them, find its checkpoint and build its model."""
        config, problem = self.config, self.problem
        params = suggest_params(trial, config.space, config.base_params, problem.per_layer)
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
        trial.set_user_attr("n_params", count_parameters(model))
        return TrialRun(
            self, trial, params, series, tag, model, rng, resume, problem.losses[params["loss"]]
        )

    def group_params(self, trial: optuna.Trial) -> dict[str, Any]:
        """The params of ``trial`` that the other members of its group share: what sets the
        model's tensor shapes, the batch size and the epochs (``Problem.group_params``)."""
        shared = self.problem.group_params
        return {
            name: value
            for name, value in trial.params.items()
            if name in shared or name.rsplit("_", 1)[0] in shared
        }

    def group_capacity(self, run: TrialRun, limit: int) -> int:
        """How many trials of ``run``'s shape to train as one, at most ``limit``
        (``groups.group_capacity``: on a CPU, while a step's activations stay in cache)."""
        return group_capacity(run.model, run.config, self.splits.x_train[:1], limit)

    def train_group(
        self, runs: Sequence[TrialRun], on_done: Callable[[TrialRun, Outcome], None]
    ) -> None:
        """Train ``runs`` together, as groups of the same shape (a retry or an enqueued trial
        may not match the rest; a model ``groups`` cannot fuse trains alone); ``on_done`` is
        called as each run ends, with its result or the exception that ended it."""
        subgroups: dict[Any, list[TrialRun]] = {}
        for run in runs:
            key = group_key(run.model, run.config)
            subgroups.setdefault(id(run) if key is None else key, []).append(run)
        for members in subgroups.values():
            if len(members) == 1:
                on_done(members[0], self._train_alone(members[0]))
                continue
            group = [
                GroupMember(
                    run.model,
                    run.loss_fn,
                    run.config,
                    run.rng,
                    self.validation_metrics,
                    on_epoch=run.on_epoch,
                    on_checkpoint=run.on_checkpoint if self.checkpoints else None,
                    resume=run.resume,
                )
                for run in members
            ]
            ended: set[int] = set()
            reporting = [False]  # an error while on_done records a trial is the worker's

            def member_done(
                index: int,
                outcome: Outcome,
                runs: list[TrialRun] = members,
                ended: set[int] = ended,
                reporting: list[bool] = reporting,
            ) -> None:
                ended.add(index)
                reporting[0] = True
                on_done(runs[index], outcome)
                reporting[0] = False

            try:
                train_group(
                    group,
                    self.splits.x_train,
                    self.splits.y_train,
                    eval_every=self.config.eval_every,
                    on_done=member_done,
                )
            except Exception as error:
                if reporting[0]:  # telling a trial failed (database lost, worker stopping)
                    raise
                # Training failed for the whole group (out of memory, a bug): each member
                # not yet ended ends with that error, as it would have alone.
                for index, run in enumerate(members):
                    if index not in ended:
                        on_done(run, error)

    def _train_alone(self, run: TrialRun) -> Outcome:
        """``training.train`` of one run: its result, or the exception that ended it."""
        # The random stream its model was built with: other trials were built since.
        torch.random.set_rng_state(run.rng)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(run.config.seed)
        try:
            return train(
                run.model,
                self.splits.x_train,
                self.splits.y_train,
                run.loss_fn,
                run.config,
                evaluate=self.validation_metrics,
                on_epoch=run.on_epoch,
                eval_every=self.config.eval_every,
                resume=run.resume,
                on_checkpoint=run.on_checkpoint if self.checkpoints else None,
            )
        except Exception as error:
            return error

    def conclude(self, run: TrialRun, outcome: Outcome) -> float:
        """The trial's value from its training outcome, or the exception its worker acts on:
        ``optuna.TrialPruned`` for a pruned or diverged run, else the error as raised."""
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
        assert result is not None  # train reports the last epoch
        run.record(result)
        self._forget(run.series)
        return result.metrics[self.config.metric]

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

    def record(self, result: EpochResult | None, **extra: Any) -> None:
        trial = self.trial
        trial.set_user_attr("train_seconds", round(time.perf_counter() - self.started, 3))
        if result is not None:
            trial.set_user_attr("epochs_run", result.epoch)
            trial.set_user_attr("train_loss", result.train_loss)
            for name, value in result.metrics.items():
                trial.set_user_attr(name, value)
        for name, value in extra.items():
            trial.set_user_attr(name, value)

    def on_epoch(self, result: EpochResult) -> None:
        self.last = result
        trial = self.trial
        value = result.metrics[self.objective.config.metric]
        if not math.isfinite(value):
            raise NonFiniteLossError(result.epoch, value)
        with warnings.catch_warnings():
            # A retry re-reports its failed attempt's epochs; Optuna keeps the first.
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            trial.report(value, result.epoch)
        if trial.should_prune():
            self.record(result, pruned_reason=f"pruner stopped it after epoch {result.epoch}")
            raise optuna.TrialPruned(f"pruned after epoch {result.epoch}")

    def on_checkpoint(self, state: TrainState) -> None:
        if self.objective.checkpoints is not None:
            self.objective.checkpoints.save(self.series, state, self.tag)
