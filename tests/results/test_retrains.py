"""finalize's retrains on the search's engine (hpsearch.results.retrains): the same answer on one
worker, on two local workers and from two finalize processes at once; a retrain killed with
SIGKILL resumes from its checkpoint; a rerun reuses what is done."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import hpsearch
from hpsearch import record
from hpsearch.results.retrains import companion_name
from tests.conftest import TINY_HOUSE

pytestmark = pytest.mark.slow
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _searched(folder: Path, epochs: int = 20) -> str:
    """A finished tiny house-price study (3 trials) in ``folder/study.db``; its URL."""
    path = folder / "house.toml"
    path.write_text(
        TINY_HOUSE.format(problem="house-prices").replace("epochs = 20", f"epochs = {epochs}")
    )
    url = f"sqlite:///{folder / 'study.db'}"
    hpsearch.run(str(path), trials=3, storage=url, workers=1)
    return url


def _finalized(folder: Path, url: str, **settings: object) -> dict[str, object]:
    """``hpsearch finalize house --top-k 2 --seeds 2`` in its own process: finalize.json."""
    args = ["house", "--storage", url, "--top-k", "2", "--seeds", "2", "--out", str(folder / "f")]
    for name, value in settings.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch", "finalize", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("done on") >= 4  # each retrain's line as it ends
    return json.loads((folder / "f" / "finalize.json").read_text())  # type: ignore[no-any-return]


def test_one_worker_two_workers_and_two_processes_agree(tmp_path: Path) -> None:
    url = _searched(tmp_path)
    for copy in ("two", "joined"):
        (tmp_path / copy).mkdir()
        # SQLite's backup: the study whole, its write-ahead log included.
        with sqlite3.connect(tmp_path / "study.db") as source:
            with contextlib.closing(sqlite3.connect(tmp_path / copy / "study.db")) as target:
                source.backup(target)
    one = _finalized(tmp_path, url, workers=1)
    two = _finalized(tmp_path / "two", f"sqlite:///{tmp_path / 'two' / 'study.db'}", workers=2)
    # Two finalize processes at once, as on two machines: they share the retrains (and the
    # artifact store, where the models are).
    store = str(tmp_path / "joined" / "store")
    joined_url = f"sqlite:///{tmp_path / 'joined' / 'study.db'}"
    folders = [tmp_path / "joined" / name for name in ("a", "b")]
    command = [sys.executable, "-m", "hpsearch", "finalize", "house", "--storage", joined_url]
    command += ["--top-k", "2", "--seeds", "2", "--workers", "1", "--artifacts", store]
    processes = []
    for folder in folders:
        folder.mkdir()
        processes.append(
            subprocess.Popen(
                command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    joined = [
        json.loads((folder / "final-house" / "finalize.json").read_text()) for folder in folders
    ]
    for result in (two, *joined):
        assert result["chosen"]["trial"] == one["chosen"]["trial"]  # type: ignore[index]
        assert result["chosen"]["seeds"] == one["chosen"]["seeds"]  # type: ignore[index]
        for metric, value in one["test"].items():  # type: ignore[attr-defined]
            assert result["test"][metric] == pytest.approx(value, rel=1e-3)  # type: ignore[index]
    companion = optuna.load_study(study_name=companion_name("house"), storage=joined_url)
    retrains = [t for t in companion.trials if t.state in FINISHED]
    assert len(retrains) == len({(t.user_attrs["retrain_of"], t.user_attrs["seed"],
                                  t.user_attrs["rows"]) for t in retrains})  # fmt: skip
    assert len({t.user_attrs[record.WORKER] for t in retrains}) == 2  # both took part


def test_a_killed_retrain_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    url = _searched(tmp_path, epochs=600)  # retrains of seconds, a checkpoint every 120 epochs
    args = ["house", "--storage", url, "--top-k", "1", "--seeds", "1", "--workers", "1",
            "--heartbeat-interval", "1", "--no-ensemble"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "finalize", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def finalize() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "hpsearch", "finalize", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    checkpoints = tmp_path / "hpsearch-artifacts" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("*/trial-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # no chance to mark its retrain failed
    first.wait()
    assert list(checkpoints.glob("*/trial-*.pt")), "no checkpoint in time"
    again = finalize()
    assert again.returncode == 0, again.stderr
    companion = optuna.load_study(study_name=companion_name("house"), storage=url)
    states = [t.state for t in companion.trials]
    assert states[0] == TrialState.FAIL  # the killed one, failed when it went silent
    retry = next(t for t in companion.trials if t.user_attrs.get(record.RETRY_OF) == 0)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 120
    # Run again, finalize finds its retrains done: nothing trains.
    rerun = finalize()
    assert rerun.returncode == 0 and "started" not in rerun.stderr, rerun.stderr
    assert len(optuna.load_study(study_name=companion_name("house"), storage=url).trials) == len(
        states
    )
