"""A trial's protocol across workers (hpsearch.search.coordinator.Coordinator), with two
coordinators in one process standing in for two workers on one SQLite file."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.record import MAX_ATTEMPTS
from hpsearch.search.coordinator import Coordinator, retry_trial
from hpsearch.storage import optuna_internals as internals
from hpsearch.storage.database import open_storage


def worker(
    url: str,
    target: int,
    heartbeat: int | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> Coordinator:
    """One worker's coordinator over a storage of its own (as a separate process has)."""
    storage = open_storage(url, heartbeat_interval=heartbeat, on_stale_trial=retry_trial)
    study = optuna.create_study(
        storage=storage,
        study_name="s",
        load_if_exists=True,
        sampler=sampler or optuna.samplers.RandomSampler(0),
    )
    return Coordinator(study, target)


def states(url: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name="s", storage=url).trials]


def test_two_workers_claim_exactly_the_total(sqlite_url: str) -> None:
    a, b = worker(sqlite_url, 3), worker(sqlite_url, 3)
    claimed = [a.claim(), b.claim(), a.claim()]
    assert all(isinstance(t, optuna.Trial) for t in claimed)
    # Three running trials fill the total: the next claim waits, as any may still fail.
    assert b.claim() == "wait" and a.claim() == "wait"
    first, second, third = claimed
    assert isinstance(first, optuna.Trial) and isinstance(second, optuna.Trial)
    assert isinstance(third, optuna.Trial)
    a.complete(first, [1.0])
    b.fail(second, "out of memory")  # failed, not queued: the slot opens again
    assert states(sqlite_url) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    fourth = b.claim()
    assert isinstance(fourth, optuna.Trial) and fourth.number == 3
    a.prune(third, "pruned")  # pruned counts as finished
    b.complete(fourth, [2.0])
    assert a.claim() == "done" and b.claim() == "done"


def test_a_failure_with_retry_is_queued_once(sqlite_url: str) -> None:
    a = worker(sqlite_url, 5)
    trial = a.claim()
    assert isinstance(trial, optuna.Trial)
    trial.suggest_float("x", 0, 1)
    a.fail(trial, "interrupted", retry=True)
    study = optuna.load_study(study_name="s", storage=sqlite_url)
    failed, retry = study.trials
    assert failed.user_attrs["fail_reason"] == "interrupted"
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert (retry.user_attrs["retry_of"], retry.user_attrs["attempt"]) == (0, 2)
    # The retry is claimed first, and it has no retry of its own.
    again = a.claim()
    assert isinstance(again, optuna.Trial) and again.number == retry.number
    assert MAX_ATTEMPTS == 2
    a.fail(again, "interrupted", retry=True)
    assert states(sqlite_url) == [TrialState.FAIL, TrialState.FAIL]


def test_a_group_member_waits_for_queued_trials_and_takes_the_fixed_params(
    sqlite_url: str,
) -> None:
    a = worker(sqlite_url, 5)
    leader = a.claim()
    assert isinstance(leader, optuna.Trial)
    with a.fixing({"width": 16}):
        member = a.claim(member=True)
        assert isinstance(member, optuna.Trial)
        assert member.suggest_categorical("width", [8, 16, 32]) == 16
        assert 0 <= member.suggest_float("lr", 0, 1) <= 1  # drawn by the study's sampler
    optuna.load_study(study_name="s", storage=sqlite_url).enqueue_trial({"width": 8})
    # A queued trial has params of its own: it leads a group, it joins none.
    assert a.claim(member=True) == "wait"


def test_a_late_result_of_a_trial_failed_elsewhere_is_dropped(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = worker(sqlite_url, 2), worker(sqlite_url, 2)
    trial = a.claim()
    assert isinstance(trial, optuna.Trial)
    # Another worker found it stale and failed it.
    assert b.rdb is not None
    b.rdb.set_trial_state_values(internals.trial_id(trial), TrialState.FAIL)
    with caplog.at_level(logging.WARNING):
        a.complete(trial, [1.0])
    assert states(sqlite_url) == [TrialState.FAIL]
    assert "failed by another worker; result dropped" in caplog.text


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(
    sqlite_url: str,
) -> None:
    dead = worker(sqlite_url, 3, heartbeat=1)
    orphan = dead.claim()  # never beats: its worker "died" right after claiming it
    assert isinstance(orphan, optuna.Trial)
    alive = worker(sqlite_url, 3, heartbeat=1)
    time.sleep(3.5)  # past the grace period of three heartbeats
    claimed = alive.claim()
    assert isinstance(claimed, optuna.Trial)
    study = optuna.load_study(study_name="s", storage=sqlite_url)
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[1].user_attrs["retry_of"] == 0
    assert claimed.number == 1  # the retry, claimed first


class FinishedSeen(optuna.samplers.RandomSampler):
    """Random sampling that records, at each ask, the finished trials a sampler reads."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[dict[int, float | None]] = []

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        self.seen.append({t.number: t.value for t in finished})
        super().before_trial(study, trial)


def test_a_claim_shows_the_sampler_every_trial_finished_elsewhere(sqlite_url: str) -> None:
    """The worker's view reads other workers' writes at a claim, not at once (by design,
    ``WorkerStorage``): Optuna's samplers read the study only when a trial is asked for, at
    the claim, so each sees every trial finished until then, as on a plain storage. A pruner
    judges a running trial against the other trials as they were at its claim, as it would
    on a plain storage had the other workers been that much slower."""
    spy = FinishedSeen()
    a, b = worker(sqlite_url, 10), worker(sqlite_url, 10, sampler=spy)
    mine = b.claim()
    assert isinstance(mine, optuna.Trial) and spy.seen == [{}]
    first, second = a.claim(), a.claim()
    assert isinstance(first, optuna.Trial) and isinstance(second, optuna.Trial)
    second.report(0.5, 0)
    a.complete(first, [1.0])
    a.prune(second, "pruned")
    b.complete(mine, [2.0])
    running = b.claim()
    assert isinstance(running, optuna.Trial)
    assert spy.seen[-1] == {
        0: 2.0,
        1: 1.0,
        2: 0.5,
    }  # its own, and both of a's (pruned: its last report)
    view = b.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    database = optuna.load_study(study_name="s", storage=sqlite_url).get_trials(
        states=(TrialState.COMPLETE, TrialState.PRUNED)
    )
    assert [(t.number, t.values, t.intermediate_values) for t in view] == [
        (t.number, t.values, t.intermediate_values) for t in database
    ]
    # While b's trial runs, a trial finished elsewhere shows at b's next claim, not before.
    later = a.claim()
    assert isinstance(later, optuna.Trial)
    a.complete(later, [3.0])
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    assert [t.number for t in b.study.get_trials(states=finished)] == [0, 1, 2]
    b.complete(running, [4.0])
    assert isinstance(b.claim(), optuna.Trial)
    assert spy.seen[-1] == {0: 2.0, 1: 1.0, 2: 0.5, 3: 4.0, 4: 3.0}
