"""The Optuna objective: the only place that touches ``trial``."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import warnings
from typing import Any

import optuna
import torch

from hpsearch.checkpoints import CheckpointStore
from hpsearch.data import Splits
from hpsearch.models import count_parameters
from hpsearch.space import suggest_params
from hpsearch.storage import is_transient_db_error
from hpsearch.study_file import StudyConfig
from hpsearch.training import EpochResult, NonFiniteLossError, TrainConfig, TrainState, train

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
        torch.manual_seed(seed)
        model = problem.build_model(params, self.splits.x_train.shape[1:]).to(self.device)
        trial.set_user_attr("n_params", count_parameters(model))
        metric = self.config.metric
        last: list[EpochResult] = []
        started = time.perf_counter()

        def record(result: EpochResult | None, **extra: Any) -> None:
            trial.set_user_attr("train_seconds", round(time.perf_counter() - started, 3))
            if result is not None:
                trial.set_user_attr("epochs_run", result.epoch)
                trial.set_user_attr("train_loss", result.train_loss)
                for name, value in result.metrics.items():
                    trial.set_user_attr(name, value)
            for name, value in extra.items():
                trial.set_user_attr(name, value)

        def on_epoch(result: EpochResult) -> None:
            last[:] = [result]
            value = result.metrics[metric]
            if not math.isfinite(value):
                raise NonFiniteLossError(result.epoch, value)
            with warnings.catch_warnings():
                # A retry re-reports its failed attempt's epochs; Optuna keeps the first.
                warnings.filterwarnings("ignore", message="The reported value is ignored")
                trial.report(value, result.epoch)
            if trial.should_prune():
                record(result, pruned_reason=f"pruner stopped it after epoch {result.epoch}")
                raise optuna.TrialPruned(f"pruned after epoch {result.epoch}")

        def on_checkpoint(state: TrainState) -> None:
            if self.checkpoints is not None:
                self.checkpoints.save(series, state, tag)

        try:
            train(
                model,
                self.splits.x_train,
                self.splits.y_train,
                self.problem.losses[params["loss"]],
                TrainConfig.from_params(params, seed=seed),
                evaluate=self.validation_metrics,
                on_epoch=on_epoch,
                eval_every=self.config.eval_every,
                resume=resume,
                on_checkpoint=on_checkpoint if self.checkpoints else None,
            )
        except NonFiniteLossError as error:
            # A diverged run (the lab report's SGD-to-NaN) ends pruned, so the study goes on and
            # the sampler learns that this region is bad.
            record(last[0] if last else None, pruned_reason=str(error))
            logger.info("trial %d: %s", trial.number, error)
            self._forget(series)
            raise optuna.TrialPruned(str(error)) from None
        except Exception as error:
            # Pruned, or a bug or an out-of-memory error: no retry will come. A lost database
            # connection is retried, and the retry resumes from the checkpoint; so is a trial
            # that another worker failed while this one stalled.
            stale = isinstance(error, optuna.exceptions.UpdateFinishedTrialError)
            if not (stale or is_transient_db_error(error)):
                self._forget(series)
            raise
        # Interrupts and crashes keep the checkpoint: the retry resumes from it.
        result = last[0]
        record(result)
        self._forget(series)
        return result.metrics[metric]

    def _forget(self, series: int) -> None:
        if self.checkpoints is not None:
            self.checkpoints.delete(series)
