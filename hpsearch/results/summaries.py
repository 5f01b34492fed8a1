"""Reading studies without training: every study's summary, a study's best trial, its trials
as a table. What ``hpsearch studies``, ``best`` and ``trials`` print; no torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch.errors import HpsearchError
from hpsearch.storage.counts import best_value, load_study, study_counts
from hpsearch.storage.database import open_storage

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class StudySummary:
    name: str
    problem: str
    metric: str
    direction: str
    counts: dict[str, int]  # trial state name -> trials
    best: float | None


def list_studies(url: str) -> list[StudySummary]:
    """Every study in the existing storage at ``url``."""
    storage = open_storage(url, create=False)
    summaries = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = study_counts(study)
        attrs = summary.user_attrs
        summaries.append(
            StudySummary(
                name=summary.study_name,
                problem=str(attrs.get("problem", "-")),
                metric=str(attrs.get("metric", "value")),
                direction=summary.direction.name.lower(),
                counts={state.name: count for state, count in counts.items()},
                best=best_value(study) if counts[optuna.trial.TrialState.COMPLETE] else None,
            )
        )
    return summaries


def best_trial(study_name: str, url: str) -> dict[str, Any]:
    """The best trial of a study: number, value, metric, searched params, the full
    configuration it trained with, and its other attributes (metrics, seed, timings).

    Raises:
        HpsearchError: no such study, or no complete trial yet.
    """
    study = load_study(study_name, url)
    try:
        trial = study.best_trial
    except ValueError:
        raise HpsearchError(f"study {study_name!r} has no complete trial yet") from None
    attrs = dict(trial.user_attrs)
    return {
        "study": study_name,
        "trial": trial.number,
        "value": trial.value,
        "metric": study.user_attrs.get("metric", "value"),
        "params": trial.params,
        "config": attrs.pop("config", dict(trial.params)),
        "metrics": attrs,
    }


def trials_frame(study_name: str, url: str) -> pd.DataFrame:
    """A study's trials, one row each: number, value, state, duration, params and user
    attributes (pandas, through Optuna's ``trials_dataframe``)."""
    study = load_study(study_name, url)
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "duration", "params", "user_attrs")
    )
    return frame.drop(columns=[c for c in frame.columns if c == "user_attrs_config"])


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path``.

    Raises:
        HpsearchError: the file cannot be written.
    """
    try:
        frame.to_csv(path, index=False)
    except OSError as error:
        raise HpsearchError(f"cannot write {path}: {error.strerror}") from None
