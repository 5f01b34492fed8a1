"""Reading a study without its trials: finished trials counted by the database (exact across
workers, whose trial caches lag), the study loaded by name, its params' distributions, its
best value, which trials keep its limits."""

from __future__ import annotations

from pathlib import Path

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from hpsearch.errors import HpsearchError
from hpsearch.storage.database import check_reachable, open_storage
from hpsearch.storage.optuna_internals import (
    param_distributions,
    rdb_of,
    state_counts,
    storage_of,
    study_id,
)
from hpsearch.storage.urls import parse_url


def count_finished(url: str, study_name: str) -> int:
    """Finished (complete or pruned) trials of the study ``study_name``, read without
    creating anything: 0 where the storage, its tables or the study do not exist yet.

    Raises:
        HpsearchError: a bad URL, or a database server that cannot be reached.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not Path(str(parsed.database)).expanduser().exists():
            return 0
    else:
        check_reachable(parsed)
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.NullPool)
    try:
        counts = state_counts(engine, study_name=study_name)
    except SQLAlchemyError:  # no Optuna tables yet
        return 0
    finally:
        engine.dispose()
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]


def load_study(name: str, url: str) -> optuna.Study:
    """The study ``name`` in the existing storage at ``url``.

    Raises:
        HpsearchError: no such storage, or no such study in it (the message lists them).
    """
    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise HpsearchError(f"no study named {name!r} in the storage (studies: {names})") from None


def distributions_of(study: optuna.Study) -> dict[str, list[BaseDistribution]]:
    """Each param's distributions in the study's trials (one, unless its space changed),
    read without the trials on a database (``optuna_internals.param_distributions``)."""
    rdb = rdb_of(storage_of(study))
    if rdb is not None:
        return param_distributions(rdb.engine, study_id(study))
    found: dict[str, list[BaseDistribution]] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, distribution in trial.distributions.items():
            if distribution not in found.setdefault(name, []):
                found[name].append(distribution)
    return found


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether ``trial`` keeps every limit of its study (Optuna's rule: every constraint
    value <= 0; a trial checked against none is feasible)."""
    return all(value <= 0.0 for value in trial.constraints.values())


def front_size(study: optuna.Study) -> int | None:
    """How many feasible trials a study of several objectives has on its Pareto front; None
    for a study of one."""
    if len(study.directions) == 1:
        return None
    return len(study.best_trials)


def best_value(study: optuna.Study) -> float | None:
    """The best value of a single-objective study's feasible trials, None before its first
    complete one (a study of several objectives has a front, not a value: None)."""
    if len(study.directions) > 1:
        return None
    try:
        return float(study.best_value)
    except ValueError:
        return None
