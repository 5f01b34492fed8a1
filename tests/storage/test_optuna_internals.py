"""Each function that goes below Optuna's public API, checked against the installed Optuna
on both databases: a release that renames a table, a column or an attribute fails here."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hpsearch.storage import optuna_internals as internals
from hpsearch.storage.database import open_storage
from tests.servers import fresh_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def rdb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[optuna.storages.RDBStorage]:
    if request.param == "sqlite":
        yield open_storage(f"sqlite:///{tmp_path / 'internals.db'}")
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        storage = open_storage(url)
        yield storage
        storage.engine.dispose()


def test_the_tables_and_columns_used_exist(rdb: optuna.storages.RDBStorage) -> None:
    inspector = sqlalchemy.inspect(rdb.engine)
    tables = inspector.get_table_names()
    columns = {t: {c["name"] for c in inspector.get_columns(t)} for t in tables}
    assert {"study_id", "study_name"} <= columns["studies"]
    assert {"trial_id", "study_id", "number", "state", "datetime_start"} <= columns["trials"]
    assert {"trial_id", "heartbeat"} <= columns["trial_heartbeats"]
    assert {"trial_id", "step", "intermediate_value", "intermediate_value_type"} <= columns[
        "trial_intermediate_values"
    ]
    assert {"trial_id", "param_name", "param_value", "distribution_json"} <= columns["trial_params"]
    assert {"trial_id", "key", "value_json"} <= columns["trial_user_attributes"]


def test_ids_counts_and_orphans(rdb: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=rdb, study_name="ids")
    assert internals.rdb_of(internals.storage_of(study)) is rdb
    assert internals.study_id(study) == rdb.get_study_id_from_name("ids")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.tell(study.ask(), state=TrialState.PRUNED)
    # A failed trial counts; one left out by its attribute (one that yielded its slot and
    # never ran, to hpsearch) does not.
    failed = study.ask()
    failed.set_user_attr("why", "error")
    study.tell(failed, state=TrialState.FAIL)
    yielded = study.ask()
    yielded.set_user_attr("why", "yielded")
    study.tell(yielded, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5})
    running = study.ask()  # takes the queued trial
    waiting = study.ask()
    study.enqueue_trial({"x": 0.25})
    assert internals.trial_id(running) == rdb.get_trial_id_from_study_id_trial_number(
        internals.study_id(study), running.number
    )
    leave_out = ("why", "yielded")
    counts = internals.state_counts(
        rdb.engine, study_id=internals.study_id(study), leave_out=leave_out
    )
    assert counts == internals.state_counts(rdb.engine, study_name="ids", leave_out=leave_out)
    expected = dict.fromkeys(TrialState, 0)
    for trial in rdb.get_all_trials(internals.study_id(study)):
        expected[trial.state] += trial.number != yielded.number
    assert counts == expected and counts[TrialState.WAITING] == 1
    assert counts[TrialState.FAIL] == 1
    every = internals.state_counts(rdb.engine, study_id=internals.study_id(study))
    assert every[TrialState.FAIL] == 2 and every[TrialState.COMPLETE] == 2
    # Trials created before ``waiting``: 2 complete, 1 pruned, 1 running.
    before = internals.trials_before(
        rdb.engine, internals.study_id(study), internals.trial_id(waiting)
    )
    assert before == 4
    # Neither running trial has a heartbeat; one with a beat is not an orphan.
    rdb.record_heartbeat(internals.trial_id(waiting))
    later = datetime.datetime.now() + datetime.timedelta(minutes=1)
    orphans = internals.running_without_heartbeat(rdb.engine, internals.study_id(study), later)
    assert orphans == [internals.trial_id(running)]
    earlier = datetime.datetime.now() - datetime.timedelta(minutes=1)
    assert internals.running_without_heartbeat(rdb.engine, internals.study_id(study), earlier) == []


def test_new_trial_matches_optunas_own_reading(rdb: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=rdb, study_name="new")
    study.optimize(lambda t: 1.0, n_trials=2)  # two finished: slots taken
    study.tell(study.ask(), state=TrialState.FAIL)  # a failed one holds none
    study.enqueue_trial({})  # a waiting one holds one
    optuna.create_study(storage=rdb, study_name="other").ask()  # another study's: none
    trial_id = rdb.create_new_trial(internals.study_id(study))  # as Study.ask creates one
    read, before = internals.new_trial(rdb.engine, trial_id)
    assert read == rdb.get_trial(trial_id)
    assert before == 3 == internals.trials_before(rdb.engine, internals.study_id(study), trial_id)


def test_batched_rows_read_back_as_optunas_own(rdb: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=rdb, study_name="rows")
    by_optuna, batched = study.ask(), study.ask()
    float_dist, cat_dist = FloatDistribution(0, 1, log=False), CategoricalDistribution(["a", "b"])
    values = {0: 1.5, 1: math.inf, 2: -math.inf, 3: math.nan}
    attrs = {"config": {"lr": 0.1}, "seed": 3, "note": "x"}
    for name, value, dist in (("lr", 0.25, float_dist), ("act", 1.0, cat_dist)):
        rdb.set_trial_param(internals.trial_id(by_optuna), name, value, dist)
    for step, value in values.items():
        rdb.set_trial_intermediate_value(internals.trial_id(by_optuna), step, value)
    for key, value in attrs.items():
        rdb.set_trial_user_attr(internals.trial_id(by_optuna), key, value)

    params = {"lr": (0.25, float_dist), "act": (1.0, cat_dist)}
    written = internals.write_trial_rows(
        rdb.engine, internals.trial_id(batched), params, dict(list(values.items())[:2]), attrs
    )
    # A second batch adds steps and overwrites an attribute.
    assert internals.write_trial_rows(
        rdb.engine, internals.trial_id(batched), {}, dict(list(values.items())[2:]), {"seed": 3}
    )
    assert written
    theirs = rdb.get_trial(internals.trial_id(by_optuna))
    ours = rdb.get_trial(internals.trial_id(batched))
    assert ours.params == theirs.params == {"lr": 0.25, "act": "b"}
    assert ours.distributions == theirs.distributions
    assert ours.user_attrs == theirs.user_attrs
    assert list(ours.intermediate_values) == list(theirs.intermediate_values)
    for step in values:
        a, b = ours.intermediate_values[step], theirs.intermediate_values[step]
        assert a == b or (math.isnan(a) and math.isnan(b))
    # A finished trial takes no more rows.
    study.tell(batched, 1.0)
    assert not internals.write_trial_rows(rdb.engine, internals.trial_id(batched), {}, {9: 1.0}, {})
    assert 9 not in rdb.get_trial(internals.trial_id(batched)).intermediate_values
