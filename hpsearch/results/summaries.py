"""Reading studies without training: every study's summary, a study's best trial, its trials
as a table. What ``hpsearch studies``, ``best`` and ``trials`` print; no torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch import record
from hpsearch.errors import HpsearchError
from hpsearch.record import objective_names, study_counts
from hpsearch.storage.counts import best_value, front_size, is_feasible, load_study
from hpsearch.storage.database import open_storage
from hpsearch.storage.files import replacing
from hpsearch.storage.urls import sqlite_file

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class StudySummary:
    name: str
    problem: str
    metrics: list[str]
    directions: list[str]
    counts: dict[str, int]  # trial state name -> trials
    best: float | None
    front: int | None = None  # of several objectives: feasible Pareto-optimal trials


def list_studies(url: str) -> list[StudySummary]:
    """Every study in the existing storage at ``url``."""
    storage = open_storage(url, create=False)
    summaries = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = study_counts(study)
        attrs = summary.user_attrs
        complete = counts[optuna.trial.TrialState.COMPLETE]
        summaries.append(
            StudySummary(
                name=summary.study_name,
                problem=str(attrs.get(record.PROBLEM, "-")),
                metrics=objective_names(study),
                directions=[d.name.lower() for d in summary.directions],
                counts={state.name: count for state, count in counts.items()},
                best=best_value(study) if complete else None,
                front=front_size(study) if complete else None,
            )
        )
    return summaries


def best_trial(study_name: str, url: str) -> dict[str, Any]:
    """The best feasible trial of a study of one objective: number, value, metric, searched
    params, the full configuration it trained with, and its other attributes (metrics,
    seed, timings). Of several objectives: the Pareto front, each trial so described under
    ``front``, with its values by objective.

    Raises:
        HpsearchError: no such study, or no complete (feasible) trial yet.
    """
    study = load_study(study_name, url)
    metrics = objective_names(study)
    if len(metrics) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number)
        if not front:
            raise HpsearchError(f"study {study_name!r} has no complete feasible trial yet")
        return {
            "study": study_name,
            "metrics": metrics,
            "directions": [d.name.lower() for d in study.directions],
            "constraints": study.user_attrs.get(record.CONSTRAINTS, []),
            "front": [_described(t, metrics) for t in front],
        }
    try:
        trial = study.best_trial
    except ValueError:
        raise HpsearchError(f"study {study_name!r} has no complete feasible trial yet") from None
    return {"study": study_name, "metric": metrics[0], **_described(trial, metrics)}


def _described(trial: optuna.trial.FrozenTrial, metrics: list[str]) -> dict[str, Any]:
    attrs = dict(trial.user_attrs)
    described: dict[str, Any] = {"trial": trial.number}
    if len(metrics) == 1:
        described["value"] = trial.value
    else:
        described["values"] = dict(zip(metrics, trial.values, strict=True))
    return described | {
        "params": trial.params,
        "config": attrs.pop(record.CONFIG, dict(trial.params)),
        "metrics": attrs,
    }


def trials_frame(study_name: str, url: str) -> pd.DataFrame:
    """A study's trials, one row each: number, value(s), state, whether it keeps the
    study's limits (``feasible``), duration, params and user attributes (pandas, through
    Optuna's ``trials_dataframe``)."""
    study = load_study(study_name, url)
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "duration", "params", "user_attrs")
    )
    frame = frame.drop(columns=[c for c in frame.columns if c == f"user_attrs_{record.CONFIG}"])
    if study.user_attrs.get(record.CONSTRAINTS):
        feasible = [is_feasible(t) for t in study.get_trials(deepcopy=False)]
        frame.insert(frame.columns.get_loc("state") + 1, "feasible", feasible)
    return frame


def write_csv(frame: pd.DataFrame, path: Path, storage: str) -> None:
    """Write ``frame`` (the trials of a study in ``storage``) to ``path``, whole or not at
    all.

    Raises:
        HpsearchError: ``path`` is the storage's own file, or cannot be written.
    """
    database = sqlite_file(storage)
    if database is not None and database.resolve() == path.resolve():
        raise HpsearchError(f"--csv {path} is the storage itself; give another file")
    with replacing(path) as partial:
        frame.to_csv(partial, index=False)
