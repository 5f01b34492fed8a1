"""The storage contract: what every backend hpsearch supports guarantees, checked with real
worker processes (tests/cheap_worker.py) on a real SQLite file and a real PostgreSQL server.

Every test runs on each backend of ``backend_url``; the PostgreSQL-only ones at the end
(dropped connections, a server killed and restarted) have no SQLite counterpart.
"""

from __future__ import annotations

import ast
import math
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError
from hpsearch.record import YIELDED
from hpsearch.search.coordinator import retry_trial
from hpsearch.search.worker import FunctionObjective, run_trials
from hpsearch.settings import Settings
from hpsearch.storage.database import open_storage
from tests import servers
from tests.cheap_worker import spawn
from tests.servers import fresh_database

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'contract.db'}"
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


def finish(processes: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    logs = []
    for process in processes:
        out, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, out
        assert "Traceback" not in out and "database is locked" not in out, out
        logs.append(out)
    return logs


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


def check_exact(url: str, name: str, trials: int) -> optuna.Study:
    """Exactly ``trials`` finished, nothing left running or waiting, values as computed."""
    study = load(url, name)
    states = [t.state for t in study.trials]
    assert sum(s in FINISHED for s in states) == trials
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(trial.params["x"] ** 2 + trial.params["y"])
            assert sorted(trial.intermediate_values) == [0, 1, 2]
    return study


def wait_for(predicate: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (KeyError, HpsearchError):  # no storage or study yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def running_reports(url: str, name: str) -> int:
    """The running trial's reports so far (of several objectives: its stored curve)."""
    running = [t for t in load(url, name).trials if t.state == TrialState.RUNNING]
    if not running:
        return 0
    return len(running[0].intermediate_values) or len(running[0].user_attrs.get("curve", {}))


def test_exact_total_with_concurrent_workers(backend_url: str) -> None:
    # Six workers start together on an empty database: one schema, one study, and exactly
    # 36 finished trials; at 0.15 s a trial no worker finishes alone while others import.
    logs = finish(spawn(backend_url, "cheap", 36, 6, seconds=0.05))
    study = check_exact(backend_url, "cheap", 36)
    assert optuna.get_all_study_names(open_storage(backend_url, create=False)) == ["cheap"]
    ran = [int(log.split("ran ")[1].split()[0]) for log in logs]
    # A trial that lost the race for one of the last slots yields before its objective.
    yielded = [t for t in study.trials if t.user_attrs.get("fail_reason") == YIELDED]
    assert all(t.state == TrialState.FAIL and not t.params for t in yielded)
    assert sum(ran) + len(yielded) == len(study.trials) and sum(r > 0 for r in ran) > 1
    # No two trials share a configuration: each trial's draws derive from its number.
    sampled = [(t.params["x"], t.params["y"]) for t in study.trials if t not in yielded]
    assert len(set(sampled)) == len(sampled)
    # A worker joining the full study runs nothing.
    assert "ran 0 trials" in finish(spawn(backend_url, "cheap", 36, 1))[0]


def test_exact_total_of_a_study_of_two_objectives_with_a_limit(backend_url: str) -> None:
    # Four workers on a study of two objectives (NSGA-II) with a limit: the same exact total,
    # every trial's values as computed, its limit recorded, and the front feasible.
    finish(spawn(backend_url, "front", 24, 4, seconds=0.02, sampler="nsga2"))
    study = load(backend_url, "front")
    states = [t.state for t in study.trials]
    assert sum(s in FINISHED for s in states) == 24 and TrialState.RUNNING not in states
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            x, y = trial.params["x"], trial.params["y"]
            assert trial.values == pytest.approx([x**2 + y, (x - 2) ** 2])
            assert trial.constraints == {"y<=": pytest.approx((y - 3) / 3)}
            assert sorted(trial.user_attrs["curve"]) == ["0", "1", "2"]
    assert study.best_trials
    assert all(t.params["y"] <= 3 for t in study.best_trials)


def test_same_draws_with_one_or_four_workers(backend_url: str) -> None:
    # TPE's first 10 trials are its random start-up: trial n's draws are the same however
    # many workers run the study.
    finish(spawn(backend_url, "one", 10, 1, seconds=0.0))
    finish(spawn(backend_url, "four", 10, 4, seconds=0.02))
    one, four = load(backend_url, "one"), load(backend_url, "four")
    ran = [t for t in four.trials if t.user_attrs.get("fail_reason") != YIELDED]
    assert [t.params for t in one.trials] == [t.params for t in ran]


def test_ten_processes_create_one_study(backend_url: str) -> None:
    finish(spawn(backend_url, "race", 10, 10, seconds=0.0))
    assert optuna.get_all_study_names(open_storage(backend_url, create=False)) == ["race"]
    check_exact(backend_url, "race", 10)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])  # nsga2: a study of two objectives
def test_sigkill_stale_trial_retried_once_from_checkpoint(
    backend_url: str, tmp_path: Path, sampler: str
) -> None:
    ckpt = tmp_path / "ckpt"
    [victim] = spawn(backend_url, "kill", 1, 1, seconds=0.2, steps=20, ckpt=ckpt, sampler=sampler)
    wait_for(lambda: running_reports(backend_url, "kill") >= 3, "three reports")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    [killed] = load(backend_url, "kill").trials
    assert killed.state == TrialState.RUNNING  # until its heartbeat goes stale
    reported = running_reports(backend_url, "kill")

    finish(spawn(backend_url, "kill", 1, 1, seconds=0.01, steps=20, ckpt=ckpt, sampler=sampler))
    study = load(backend_url, "kill")
    original, *retries = study.trials
    assert original.state == TrialState.FAIL
    [retry] = retries  # exactly one
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.params == original.params
    assert retry.user_attrs["resumed_from_step"] >= reported
    if sampler == "nsga2":  # the retry's curve: the killed attempt's, then its own
        # (a kill loses up to FLUSH_S of reports; the checkpoint has the steps)
        resumed = retry.user_attrs["resumed_from_step"]
        steps = {*range(reported), *range(resumed, 20)}
        assert steps <= {int(step) for step in retry.user_attrs["curve"]}


def test_sigstop_past_grace_then_sigcont(backend_url: str) -> None:
    # A worker stopped (suspended, swapped out) for longer than the grace period loses its
    # trial to a retry elsewhere; when it wakes up, its late result is dropped: no crash,
    # nothing counted twice.
    [sleeper] = spawn(backend_url, "stop", 2, 1, seconds=0.25, steps=12)
    wait_for(lambda: running_reports(backend_url, "stop") >= 1, "a report")
    sleeper.send_signal(signal.SIGSTOP)
    try:
        [other] = spawn(backend_url, "stop", 2, 1, seconds=0.05, steps=12)
        wait_for(
            lambda: load(backend_url, "stop").trials[0].state == TrialState.FAIL,
            "the stopped worker's trial to go stale",
        )
    finally:
        sleeper.send_signal(signal.SIGCONT)
    logs = finish([sleeper, other])
    study = load(backend_url, "stop")
    assert sum(t.state in FINISHED for t in study.trials) == 2
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    assert [t.user_attrs.get("retry_of") for t in study.trials].count(0) == 1
    assert len(study.trials[0].intermediate_values) < 12  # the late reports were not written
    assert "failed by another worker" in logs[0] or "ran 1 trials" in logs[0]


def test_sigterm_fails_the_trial_and_queues_its_retry(backend_url: str) -> None:
    [worker] = spawn(backend_url, "term", 3, 1, seconds=0.2, steps=20)
    wait_for(lambda: running_reports(backend_url, "term") >= 1, "a report")
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 130 and "Traceback" not in out, out
    first, queued = load(backend_url, "term").trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith(
        "interrupted"
    )
    assert queued.state == TrialState.WAITING and queued.user_attrs["retry_of"] == 0


def test_nan_reports_and_raising_trials(backend_url: str) -> None:
    storage = open_storage(backend_url, heartbeat_interval=1, on_stale_trial=retry_trial)
    study = optuna.create_study(storage=storage, study_name="odd")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:
            trial.report(math.nan, 0)
            trial.report(math.inf, 1)
            raise optuna.TrialPruned("diverged")
        if trial.number == 1:
            raise ValueError("boom")
        trial.report(x, 0)
        return x

    odd = Settings(storage=backend_url, study_name="odd", trials=3)
    run_trials(study, FunctionObjective(objective), odd)
    trials = load(backend_url, "odd").trials
    assert [t.state for t in trials] == [
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert math.isnan(trials[0].intermediate_values[0]) and trials[0].intermediate_values[1] > 1
    assert trials[1].user_attrs["fail_reason"] == "ValueError: boom"


def test_older_optuna_schema_is_refused_unchanged(backend_url: str) -> None:
    optuna.create_study(storage=open_storage(backend_url), study_name="old")
    engine = sqlalchemy.create_engine(backend_url, poolclass=sqlalchemy.NullPool)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v3.0.0.a'"))
    with pytest.raises(HpsearchError) as caught:
        open_storage(backend_url)
    message = str(caught.value)
    assert "\n" not in message and "optuna storage upgrade --storage" in message
    with engine.connect() as connection:
        version = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
        assert version.scalar_one() == "v3.0.0.a"
    engine.dispose()


@pytest.mark.postgres
def test_workers_survive_dropped_connections(postgres_url: str) -> None:
    with fresh_database(postgres_url) as url:
        workers = spawn(url, "drops", 30, 3, seconds=0.2)
        admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        terminate = sqlalchemy.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :n AND pid <> pg_backend_pid()"
        )
        killed = 0
        try:
            # Once trials are running, cut every connection the workers hold, again and
            # again, until they finish.
            wait_for(
                lambda: sum(t.state in FINISHED for t in load(url, "drops").trials) >= 3,
                "three trials",
            )
            while any(p.poll() is None for p in workers):
                time.sleep(0.7)
                with admin.connect() as connection:
                    database = sqlalchemy.make_url(url).database
                    killed += sum(row[0] for row in connection.execute(terminate, {"n": database}))
        finally:
            admin.dispose()
        assert killed >= 3
        finish(workers)
        check_exact(url, "drops", 30)


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, list[str]]]:
    """A PostgreSQL server of this test's own: its URL, and the pg_ctl command."""
    with servers.own_postgres() as server:
        yield server


@pytest.mark.postgres
def test_server_killed_and_restarted_loses_no_finished_trial(
    own_postgres: tuple[str, list[str]],
) -> None:
    url, ctl = own_postgres
    workers = spawn(url, "crash", 24, 3, seconds=0.1)
    wait_for(lambda: sum(t.state in FINISHED for t in load(url, "crash").trials) >= 4, "4 trials")
    # An immediate stop is a crash: no checkpoint, unflushed WAL lost.
    subprocess.run([*ctl, "stop", "-m", "immediate"], check=True, capture_output=True)
    time.sleep(1)
    subprocess.run([*ctl, "start"], check=True, capture_output=True)
    logs = finish(workers)
    study = check_exact(url, "crash", 24)
    # Every trial whose objective returned was told, and is in the database as COMPLETE,
    # unless another worker had failed it as stale meanwhile (then it has its retry).
    states = {t.number: t for t in study.trials}
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for log in logs:
        completed = ast.literal_eval(log.split("completed ")[1].splitlines()[0])
        for number in completed:
            trial = states[number]
            assert trial.state == TrialState.COMPLETE or (
                trial.state == TrialState.FAIL and number in retried
            ), (number, trial.state)


def test_sqlite_contract_file_is_plain_optuna(tmp_path: Path) -> None:
    # What the workers write is read by stock Optuna and by sqlite3 alone.
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    finish(spawn(url, "plain", 3, 1))
    assert len(optuna.load_study(study_name="plain", storage=url).trials) == 3
    with sqlite3.connect(tmp_path / "plain.db") as connection:
        assert (
            connection.execute("SELECT COUNT(*) FROM trial_intermediate_values").fetchone()[0] == 9
        )
