"""What hpsearch keeps on a study and on each of its trials, as Optuna user attributes: every
key with its meaning, and the reads and writes that take more than a key.

Every module reads and writes these attributes through the names here, never a bare string;
optuna-dashboard, ``hpsearch trials`` and plain Optuna show them as they are stored. Besides
the keys below, a trial holds each metric it reached under the metric's own name
(``val_accuracy``, ..., and the costs ``params``, ``size_bytes``, ``flops``, ``latency_ms``,
``train_seconds``).
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.storage.optuna_internals import rdb_of, state_counts, storage_of, study_id

# The study's, written once when the study is set up (``write_study_definition``).
PROBLEM = "problem"  # the problem's registry name; written last: the set-up is complete
METRIC = "metric"  # the validation metric reported every evaluated epoch: the learning curve
METRICS = "metrics"  # the objectives, in the order of the study's directions
CONSTRAINTS = "constraints"  # the hard limits, as text ("params <= 5000")
STUDY_FILE = "study_file"  # where the study's definition came from: a file, "the study dict"
DATA = "data"  # the study's [data] options: finalize loads the same splits with them
FINALIZE = "finalize"  # finalize's summary (results.final_result), once it has run

# A trial's, written by the objective as the trial trains and by the worker loop as it ends.
CONFIG = "config"  # every hyperparameter its model was built with: sampled, fixed, defaults
SEED = "seed"  # its model's and training's seed: study seed + its series' first trial number
WORKER = "worker"  # the host and process that ran it, "host:pid"
GROUP = "group"  # in a trial group (trained as one stack): the number of the group's first
RETRY_OF = "retry_of"  # a retry's: the first trial of its series (its seed and checkpoint)
ATTEMPT = "attempt"  # a retry's: which run of its series it is (2; a trial runs at most twice)
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # a retry that resumed from a checkpoint: its epoch
# Of several objectives, the learning curve {"epoch": value} (Optuna's reports take one).
CURVE = "curve"
EPOCHS_RUN = "epochs_run"  # epochs trained
TRAIN_LOSS = "train_loss"  # the mean training loss of its last epoch
TRAIN_SECONDS = "train_seconds"  # from its start to the end of its training
PRUNED_REASON = "pruned_reason"  # why it stopped early: the pruner, divergence, a limit
FAIL_REASON = "fail_reason"  # why it failed

# finalize's retrains: the trials of a study's companion ``<study>:finalize``, one per
# configuration, seed and rows (results.retrains).
RETRAINS = "retrains"  # the companion's: the retrains it holds, as a digest; written last
RETRAIN_OF = "retrain_of"  # a retrain's: the number of the study's trial it retrains
ROWS = "rows"  # a retrain's: what it trains on, "train" or "train+validation"
WEIGHTS = "weights"  # a retrain's: its model's artifact id in the artifact store
CALIBRATION = "calibration"  # a retrain's: the problem's calibration statistic on validation

# The pruned reason of a trial whose model broke a limit before training starts with this.
NOT_TRAINED = "not trained"
# The fail reason of a trial that lost the race for its study's last slot and never ran
# (search.coordinator): a FAIL by Optuna's states, not a failure to count.
YIELDED = "yielded: another worker took the study's last slot"
# A crashed or interrupted trial runs once more with the same params (attempt 2).
MAX_ATTEMPTS = 2


def write_study_definition(
    study: optuna.Study,
    *,
    problem: str,
    metric: str,
    metrics: Sequence[str],
    constraints: Sequence[str],
    study_file: str,
    data: dict[str, Any],
) -> None:
    """Store what a study is (its problem, objectives, limits and data); ``PROBLEM`` last, so
    that a worker that finds it knows the set-up is complete."""
    with warnings.catch_warnings():  # experimental since Optuna 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(metrics))  # the dashboard's axes
    study.set_user_attr(METRIC, metric)
    study.set_user_attr(METRICS, list(metrics))
    study.set_user_attr(CONSTRAINTS, list(constraints))
    study.set_user_attr(STUDY_FILE, study_file)
    study.set_user_attr(DATA, dict(data))
    study.set_user_attr(PROBLEM, problem)


def is_set_up(study: optuna.Study) -> bool:
    """Whether hpsearch has finished setting the study up (``write_study_definition``)."""
    return PROBLEM in study.user_attrs


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives by name (``values_0``... for a study not made by hpsearch)."""
    attrs = study.user_attrs
    if METRICS in attrs:
        return list(attrs[METRICS])
    if len(study.directions) == 1:
        return [str(attrs.get(METRIC, "value"))]
    return [f"values_{i}" for i in range(len(study.directions))]


def curve_index(study: optuna.Study) -> int:
    """Which objective is the learning curve, the validation metric reported every epoch
    (``METRIC``; the first objective of a study not made by hpsearch)."""
    metric = study.user_attrs.get(METRIC)
    names = objective_names(study)
    return names.index(metric) if metric in names else 0


def this_worker() -> str:
    """A trial's ``WORKER``: this machine and process, where to look with workers on many
    hosts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def series(trial: FrozenTrial | optuna.Trial) -> int:
    """The first trial of ``trial``'s series (itself, unless it is a retry): its seed and
    checkpoint are the series'."""
    return int(trial.user_attrs.get(RETRY_OF, trial.number))


def retry_attrs(trial: FrozenTrial) -> dict[str, Any] | None:
    """The user attributes of ``trial``'s retry (its own, less what describes the failed
    run, with ``RETRY_OF`` and ``ATTEMPT``); None when it has had its retry
    (``MAX_ATTEMPTS`` runs)."""
    attempt = int(trial.user_attrs.get(ATTEMPT, 1))
    if attempt >= MAX_ATTEMPTS:
        return None
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in (FAIL_REASON, WORKER)}
    return attrs | {RETRY_OF: series(trial), ATTEMPT: attempt + 1}


def is_yielded(trial: FrozenTrial) -> bool:
    """Whether ``trial`` lost the race for its study's last slot and never ran: a FAIL to
    Optuna, no failure to a user."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get(FAIL_REASON) == YIELDED


def study_counts(study: optuna.Study) -> dict[TrialState, int]:
    """Trials per state, counted by the database itself (a process's trial cache lags
    behind the other workers'); yielded trials, which never ran, left out."""
    rdb = rdb_of(storage_of(study))
    if rdb is not None:
        return state_counts(rdb.engine, study_id=study_id(study), leave_out=(FAIL_REASON, YIELDED))
    return trial_counts(study.get_trials(deepcopy=False))


def trial_counts(trials: Iterable[FrozenTrial]) -> dict[TrialState, int]:
    """``trials`` per state, yielded trials left out: ``study_counts`` of trials already
    read."""
    counts = dict.fromkeys(TrialState, 0)
    for trial in trials:
        counts[trial.state] += not is_yielded(trial)
    return counts
