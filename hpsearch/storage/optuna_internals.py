"""Every place hpsearch goes below Optuna's public API, one function each.

Optuna offers no public way to name a study's or trial's storage id, to count a study's
trials by state without reading them all, or to write several rows of a trial in one
transaction; the functions here do, against the tables of ``optuna.storages.RDBStorage``.
``tests/test_optuna_internals.py`` checks each against the installed Optuna, so a release
that changes the schema or these attributes fails there, loudly, and not in a worker.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Collection
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages._rdb.models import (
    TrialIntermediateValueModel,
    TrialModel,
    TrialParamModel,
    TrialUserAttributeModel,
)
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object a study reads and writes through."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (its ``number`` counts within the study)."""
    return trial._trial_id


def rdb_of(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The database storage behind ``storage`` (Optuna wraps it in a cache; hpsearch's
    worker view wraps that), or None for in-memory and journal storages."""
    while not isinstance(storage, optuna.storages.RDBStorage):
        inner = getattr(storage, "_backend", None) or getattr(storage, "backend", None)
        if inner is None:
            return None
        storage = inner
    return storage


def state_counts(
    engine: sqlalchemy.Engine,
    *,
    study_id: int | None = None,
    study_name: str | None = None,
    leave_out: tuple[str, Any] | None = None,
) -> dict[TrialState, int]:
    """Trials per state, counted by the database: one query, no trial read. Exact totals
    across workers need it, since a process's trial cache lags behind other processes.
    ``leave_out = (key, value)``: FAIL trials whose user attribute ``key`` holds ``value``
    are not counted."""
    counts = dict.fromkeys(TrialState, 0)
    query = "SELECT t.state, COUNT(*) FROM trials t "
    if study_name is not None:
        query += "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :key "
    else:
        query += "WHERE t.study_id = :key "
    values: dict[str, Any] = {"key": study_name if study_name is not None else study_id}
    if leave_out is not None:
        query += (
            "AND NOT (t.state = 'FAIL' AND EXISTS (SELECT 1 FROM trial_user_attributes a "
            "WHERE a.trial_id = t.trial_id AND a.key = :attr AND a.value_json = :value)) "
        )
        values |= {"attr": leave_out[0], "value": json.dumps(leave_out[1])}
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text(query + "GROUP BY t.state"), values)
        for state, count in rows:
            counts[TrialState[getattr(state, "name", state)]] = int(count)
    return counts


# The states of trials that hold one of a study's slots: finished, running or waiting.
SLOT_STATES = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING]


def trials_before(engine: sqlalchemy.Engine, study_id: int, trial_id: int) -> int:
    """Finished, running or waiting trials of the study created before the trial
    ``trial_id``: the slots taken before it."""
    with engine.connect() as connection:
        return int(connection.execute(_slots_before(study_id, trial_id)).scalar_one())


def _slots_before(study_id: Any, trial_id: Any) -> sqlalchemy.Select[int]:
    """The count of ``trials_before``; ``study_id`` and ``trial_id`` are values or columns
    (``new_trial`` counts for the row it reads)."""
    earlier = TrialModel.__table__.alias("earlier")
    return sqlalchemy.select(sqlalchemy.func.count()).where(
        earlier.c.study_id == study_id,
        earlier.c.trial_id < trial_id,
        earlier.c.state.in_(SLOT_STATES),
    )


def running_without_heartbeat(
    engine: sqlalchemy.Engine, study_id: int, started_before: datetime.datetime
) -> list[int]:
    """Ids of RUNNING trials that never recorded a heartbeat and started before the
    cutoff: their worker died between creating them and beating once, which Optuna's own
    stale check (heartbeats gone silent) cannot see."""
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h "
        "ON h.trial_id = t.trial_id WHERE t.study_id = :study_id AND t.state = 'RUNNING' "
        "AND h.trial_id IS NULL AND t.datetime_start < :cutoff"
    )
    with engine.connect() as connection:
        rows = connection.execute(query, {"study_id": study_id, "cutoff": started_before})
        return [int(row[0]) for row in rows]


def param_distributions(
    engine: sqlalchemy.Engine, study_id: int
) -> dict[str, list[BaseDistribution]]:
    """Each param's distributions in the study's trials (one, unless its space changed),
    read in one query: what ``Study.get_trials`` would give, without reading every trial."""
    trials, params = TrialModel.__table__, TrialParamModel.__table__
    query = (
        sqlalchemy.select(params.c.param_name, params.c.distribution_json)
        .distinct()
        .join(trials, trials.c.trial_id == params.c.trial_id)
        .where(trials.c.study_id == study_id)
    )
    found: dict[str, list[BaseDistribution]] = {}
    with engine.connect() as connection:
        for name, text in connection.execute(query):
            distribution = json_to_distribution(text)
            if distribution not in found.setdefault(name, []):
                found[name].append(distribution)
    return found


def study_of_trial(engine: sqlalchemy.Engine, trial_id: int) -> int:
    """The id of the study that holds the trial ``trial_id``."""
    trials = TrialModel.__table__
    query = sqlalchemy.select(trials.c.study_id).where(trials.c.trial_id == trial_id)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def new_trial(engine: sqlalchemy.Engine, trial_id: int) -> tuple[FrozenTrial, int]:
    """The trial ``trial_id`` just created by ``Study.ask``, and the slots taken before it
    (``trials_before``), read in one query (Optuna's ``get_trial`` makes six to fetch what a
    new trial cannot have yet)."""
    trials = TrialModel.__table__
    taken = _slots_before(trials.c.study_id, trials.c.trial_id).scalar_subquery()
    with engine.connect() as connection:
        number, started, before = connection.execute(
            sqlalchemy.select(trials.c.number, trials.c.datetime_start, taken).where(
                trials.c.trial_id == trial_id
            )
        ).one()
    trial = FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=started,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )
    return trial, int(before)


def write_trial_rows(
    engine: sqlalchemy.Engine,
    trial_id: int,
    params: dict[str, tuple[float, BaseDistribution]],
    intermediate_values: dict[int, float],
    user_attrs: dict[str, Any],
    replace_params: Collection[str] = (),
    replace_steps: Collection[int] = (),
) -> bool:
    """Write a running trial's new params (internal value, distribution), reports and user
    attributes in one transaction; False (nothing written) if the trial has finished. The
    rows of ``replace_params`` and ``replace_steps``, written before, are replaced.

    Optuna writes each of these in a transaction of its own (three to five statements);
    one batch per flush is what makes 30 reports cost milliseconds instead of a hundred.
    The rows are Optuna's own (its table objects and value encoding), so every reader
    sees an ordinary trial.
    """
    trials = TrialModel.__table__
    with engine.begin() as connection:
        state = connection.execute(
            sqlalchemy.select(trials.c.state).where(trials.c.trial_id == trial_id)
        ).scalar_one()
        if getattr(state, "name", state) != TrialState.RUNNING.name:
            return False
        for table, column, replaced in (
            (TrialParamModel.__table__, "param_name", replace_params),
            (TrialIntermediateValueModel.__table__, "step", replace_steps),
        ):
            if replaced:
                connection.execute(
                    sqlalchemy.delete(table).where(
                        table.c.trial_id == trial_id, table.c[column].in_(list(replaced))
                    )
                )
        if params:
            connection.execute(
                sqlalchemy.insert(TrialParamModel.__table__),
                [
                    {
                        "trial_id": trial_id,
                        "param_name": name,
                        "param_value": value,
                        "distribution_json": distribution_to_json(distribution),
                    }
                    for name, (value, distribution) in params.items()
                ],
            )
        if intermediate_values:
            rows = []
            for step, value in intermediate_values.items():
                stored, kind = TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                rows.append(
                    {
                        "trial_id": trial_id,
                        "step": step,
                        "intermediate_value": stored,
                        "intermediate_value_type": kind,
                    }
                )
            connection.execute(sqlalchemy.insert(TrialIntermediateValueModel.__table__), rows)
        if user_attrs:
            table = TrialUserAttributeModel.__table__
            connection.execute(
                sqlalchemy.delete(table).where(
                    table.c.trial_id == trial_id, table.c.key.in_(list(user_attrs))
                )
            )
            connection.execute(
                sqlalchemy.insert(table),
                [
                    {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                    for key, value in user_attrs.items()
                ],
            )
    return True
