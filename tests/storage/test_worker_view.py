"""A worker's view of the shared storage (hpsearch.storage.worker_view.WorkerStorage): a running
trial's writes batched, the study read once per refresh, other workers' rows left as they
are."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.storage import optuna_internals as internals
from hpsearch.storage.database import open_storage
from hpsearch.storage.worker_view import WorkerStorage


def studies(url: str, flush_s: float = 3600.0) -> tuple[optuna.Study, optuna.Study]:
    """The same study through a worker's view and through a plain reader's storage."""
    optuna.create_study(storage=url, study_name="s")
    view = WorkerStorage(open_storage(url), flush_s=flush_s)
    return optuna.load_study(study_name="s", storage=view), optuna.load_study(
        study_name="s", storage=url
    )


def test_reports_are_batched_and_written_whole_by_the_tell(sqlite_url: str) -> None:
    worker, reader = studies(sqlite_url)
    trial = worker.ask()
    trial.suggest_float("x", 0, 1)
    trial.report(0.5, 0)  # the first report is written at once, with the params
    trial.report(0.4, 1)
    trial.set_user_attr("note", "kept")
    written = reader.trials[0]
    assert written.state == TrialState.RUNNING and written.params == trial.params
    assert written.intermediate_values == {0: 0.5}  # step 1 waits for the next flush
    # The worker's own view already has it all.
    mine = worker.trials[0]
    assert mine.intermediate_values == {0: 0.5, 1: 0.4} and mine.user_attrs == {"note": "kept"}
    worker.tell(trial, 0.3)
    told = reader.trials[0]
    assert told.state == TrialState.COMPLETE and told.value == 0.3
    assert told.intermediate_values == {0: 0.5, 1: 0.4} and told.user_attrs == {"note": "kept"}


def test_the_study_is_read_at_a_refresh_and_own_trials_always_show(sqlite_url: str) -> None:
    worker, reader = studies(sqlite_url)
    view = internals.storage_of(worker)
    assert isinstance(view, WorkerStorage)
    assert worker.trials == []
    reader.optimize(lambda t: 1.0, n_trials=2)  # another worker's trials
    assert worker.trials == []  # as at the last refresh
    mine = worker.ask()  # created since the last refresh: in the view anyway
    # and with it the trials numbered below it: trial n is the n-th (GA samplers index so)
    assert [t.number for t in worker.trials] == [0, 1, mine.number]
    reader.optimize(lambda t: 1.0, n_trials=1)  # numbered after this worker's newest
    assert [t.number for t in worker.trials] == [0, 1, 2]
    view.refresh(internals.study_id(worker))
    assert [t.number for t in worker.trials] == [0, 1, 2, 3]
    worker.tell(mine, 2.0)
    # Finished by this worker: finished in its view, whatever its cache last read.
    assert worker.trials[2].state == TrialState.COMPLETE


def test_a_trial_finished_by_another_worker_takes_no_more_writes(sqlite_url: str) -> None:
    worker, reader = studies(sqlite_url, flush_s=0.0)
    trial = worker.ask()
    trial.report(1.0, 0)
    rdb = internals.rdb_of(internals.storage_of(reader))
    assert rdb is not None
    rdb.set_trial_state_values(internals.trial_id(trial), TrialState.FAIL)  # it went stale
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.report(2.0, 1)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        worker.tell(trial, 1.0)
    assert reader.trials[0].state == TrialState.FAIL
    assert reader.trials[0].intermediate_values == {0: 1.0}


def test_only_a_database_storage_has_a_worker_view() -> None:
    with pytest.raises(TypeError, match="database storage only"):
        WorkerStorage(optuna.storages.InMemoryStorage())
