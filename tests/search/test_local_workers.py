"""Local worker processes and signals through the `hpsearch run` command (the storage
contract across backends is tests/test_storage_contract.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpsearch.record import YIELDED
from hpsearch.storage.database import open_storage
from tests.cheap_worker import spawn
from tests.conftest import TINY_HOUSE
from tests.storage.test_storage_contract import check_exact, finish

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.mark.slow
def test_four_workers_on_sqlite_with_dashboard_reading(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    # 0.3 s a trial: alone, the first worker would need 12 s for the 40 trials, so the three
    # started after it (each importing torch first) surely take part.
    first = spawn(url, "cheap", 40, 1, seconds=0.1)
    time.sleep(2)  # one worker creates the study; the dashboard needs the file
    dashboard_log = tmp_path / "dashboard.log"
    exe = shutil.which("hpsearch")
    assert exe is not None
    with dashboard_log.open("w") as log:
        dashboard = subprocess.Popen(
            [exe, "dashboard", "--storage", url, "--port", "18641"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        workers = first + spawn(url, "cheap", 40, 3, seconds=0.1)
        # Poll the dashboard's API while the workers write.
        deadline = time.monotonic() + 240
        import urllib.request

        while any(p.poll() is None for p in workers) and time.monotonic() < deadline:
            try:
                urllib.request.urlopen("http://127.0.0.1:18641/api/studies", timeout=2).read()
            except OSError:
                pass
            time.sleep(0.2)
        finish(workers)  # exit 0, no traceback, no "database is locked"
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=20)
    study = check_exact(url, "cheap", 40)
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    # More than one worker really took part.
    assert len({t.user_attrs["pid"] for t in study.trials if "pid" in t.user_attrs}) > 1
    assert "database is locked" not in dashboard_log.read_text()
    # A worker started on the full study runs nothing.
    assert "ran 0 trials" in finish(spawn(url, "cheap", 40, 1))[0]


def hpsearch_cmd() -> list[str]:
    exe = shutil.which("hpsearch")
    assert exe is not None
    return [exe]


def _slow_house_study(tmp_path: Path, epochs: int = 600) -> Path:
    # A report (and checkpoint) every 20 epochs; 600 epochs: a few seconds per trial on a
    # fast core, time enough to act between its second report (written 2 s after its first,
    # storage.worker_view.FLUSH_S) and its end.
    path = tmp_path / "slow-house.toml"
    path.write_text(
        TINY_HOUSE.format(problem="house-prices")
        .replace("epochs = 20", f"epochs = {epochs}")
        .replace("eval_every = 5", "eval_every = 20")
        .replace("batch_size = 128", "batch_size = 32")
    )
    return path


def _wait_for_checkpoints(folder: Path, trials: int, timeout: float = 120) -> None:
    """Until ``trials`` trials have saved a checkpoint in the artifact folder ``folder``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(folder.glob("checkpoints/*/trial-*.pt"))) >= trials:
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def _wait_for_reports(url: str, name: str, reports: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=url)
            running = [t for t in study.trials if t.state == TrialState.RUNNING]
            if running and len(running[0].intermediate_values) >= reports:
                return
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError("no trial reached the wanted epoch in time")


@pytest.mark.slow
def test_ctrl_c_ends_running_trial_and_rerun_resumes_from_checkpoint(tmp_path: Path) -> None:
    # SIGKILL and SIGTERM of a worker, on every backend: tests/test_storage_contract.py.
    study_file = _slow_house_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'sig.db'}"
    args = [
        *hpsearch_cmd(),
        "run",
        str(study_file),
        "--trials",
        "2",
        "--storage",
        url,
        "--pruner",
        "none",
        "--group-size",
        "2",
    ]
    process = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_checkpoints(tmp_path / "hpsearch-artifacts", 2)  # both, after epoch 20
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    study = optuna.load_study(study_name="slow-house", storage=url)
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    # Both trials ran as one group: both were failed, and each is retried on its own.
    failed = [t.number for t in study.trials if t.state == TrialState.FAIL]
    assert failed == [0, 1]
    assert all(study.trials[n].user_attrs["fail_reason"].startswith("interrupted") for n in failed)

    rerun = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="slow-house", storage=url)
    assert sum(t.state in FINISHED for t in study.trials) == 2
    retries = {t.user_attrs["retry_of"]: t for t in study.trials if "retry_of" in t.user_attrs}
    assert sorted(retries) == failed
    assert all(t.user_attrs["resumed_from_epoch"] >= 20 for t in retries.values())
    # A rerun of the finished study adds nothing.
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to run" in again.stderr
    assert len(optuna.load_study(study_name="slow-house", storage=url).trials) == 4


@pytest.mark.slow
def test_local_workers_flag(tmp_path: Path) -> None:
    study_file = tmp_path / "house.toml"
    study_file.write_text(TINY_HOUSE.format(problem="house-prices"))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    result = subprocess.run(
        [
            *hpsearch_cmd(),
            "run",
            str(study_file),
            "--trials",
            "6",
            "--workers",
            "2",
            "--storage",
            url,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "2 workers" in result.stderr
    study = optuna.load_study(study_name="house", storage=url)
    assert sum(t.state in FINISHED for t in study.trials) == 6
    # Beside them only trials that lost the race for the last slot, which yield untrained.
    others = [t for t in study.trials if t.state not in FINISHED]
    assert all(t.user_attrs.get("fail_reason") == YIELDED and not t.params for t in others)
    best = json.loads(
        subprocess.run(
            [*hpsearch_cmd(), "best", "house", "--json", "--storage", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert best["value"] > 0


def test_password_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPSEARCH_DB_PASSWORD", "p@ss:w/rd#1")
    from hpsearch.storage.urls import parse_url, redact

    parsed = parse_url("postgresql+psycopg://bob@127.0.0.1:1/db")
    assert parsed.password == "p@ss:w/rd#1"
    from typer.testing import CliRunner

    from hpsearch.cli import app

    result = CliRunner().invoke(
        app, ["run", "usps", "--storage", "postgresql+psycopg://bob@127.0.0.1:1/db"]
    )
    assert result.exit_code == 75  # nothing listens there: try again later
    assert "p@ss" not in result.stdout + result.stderr
    assert "p@ss" not in redact(parsed.render_as_string(hide_password=False))


@pytest.mark.postgres
def test_special_character_password_reaches_server(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trust auth ignores the password, but it must survive URL building unmangled.
    monkeypatch.setenv("HPSEARCH_DB_PASSWORD", "p@ss:w/rd#1%")
    bare = sqlalchemy.make_url(postgres_url).set(password=None).render_as_string(False)
    store = open_storage(bare)
    assert sqlalchemy.make_url(store.url).password == "p@ss:w/rd#1%"
    assert os.environ["HPSEARCH_DB_PASSWORD"] not in repr(store.engine.url)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_local_workers_group_leaves_nothing_running(tmp_path: Path, signum: int) -> None:
    # Trials twenty times as long as the slow study's: none ends before the signal, whichever
    # worker's reports the wait below sees first.
    study_file = _slow_house_study(tmp_path, epochs=3000)
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    args = [
        *hpsearch_cmd(),
        "run",
        str(study_file),
        "--trials",
        "4",
        "--storage",
        url,
        "--pruner",
        "none",
        "--workers",
        "2",
    ]
    # Its own process group, as a terminal gives it: Ctrl-C (or a SIGTERM to the group,
    # as a job scheduler sends it) reaches parent and workers.
    process = subprocess.Popen(
        args,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_reports(url, "slow-house", 2)
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "race condition" not in err, err
    # After the run's header and its data line, one line: interrupted, and how to resume.
    header = ("study ", "data: ")
    lines = [line for line in err.strip().splitlines() if not line.startswith(header)]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err
    # Each worker's trial failed and queued again, for the rerun (whose resuming the Ctrl-C
    # test above checks).
    study = optuna.load_study(study_name="slow-house", storage=url)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.FAIL) == states.count(TrialState.WAITING) >= 1


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([0, 75, 75], 75),  # the database went away: try again later
        ([2, 2], 2),  # bad input, found by every worker
        ([0, 1], 1),  # a crash (a traceback above)
        ([75, 2], 1),  # no one reason
        ([-9, 0], 1),  # killed
    ],
)
def test_local_workers_exit_code_is_their_reason(codes: list[int], expected: int) -> None:
    from hpsearch.search.local_workers import workers_failed

    assert workers_failed(codes).exit_code == expected  # type: ignore[arg-type]


def test_worker_that_lost_the_database_exits_75_in_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hpsearch.search import local_workers as workers
    from hpsearch.search.plan import resolve_plan

    def lose(*args: object) -> None:
        cause = ConnectionRefusedError("server closed the connection unexpectedly")
        raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, cause)

    monkeypatch.setattr(workers, "run_worker", lose)
    with pytest.raises(SystemExit) as caught:
        workers.worker_main(resolve_plan("usps"), 0)
    assert caught.value.code == 75
    (line,) = caplog.messages
    assert line.startswith("lost the database:") and "server closed the connection" in line
