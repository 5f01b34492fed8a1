"""A worker process with a cheap, checkable objective, for the multi-worker tests.

usage: python -m tests.cheap_worker URL STUDY TRIALS [SECONDS_PER_STEP]
The value of every trial is x**2 + y, so a test can check it against the params.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

from hpsearch.search import run_trials
from hpsearch.settings import Settings
from hpsearch.storage import StudyLock, open_storage, parse_url


def objective(trial: optuna.Trial, seconds_per_step: float) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 5)
    for step in range(3):
        time.sleep(seconds_per_step)
        trial.report(x**2 + y + 3 - step, step)
    trial.set_user_attr("pid", os.getpid())
    return x**2 + y


REPO = Path(__file__).resolve().parent.parent


def spawn(
    url: str, name: str, trials: int, count: int, seconds: float = 0.01
) -> list[subprocess.Popen[str]]:
    """Start ``count`` cheap worker processes on one study; output merged into stdout."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.cheap_worker", url, name, str(trials), str(seconds)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]


def main() -> None:
    url, name, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.01
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat_interval=1)
    with StudyLock(parse_url(url), name).hold():
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(),
        )
    settings = Settings(storage=url, study_name=name, trials=trials)
    ran = []  # the trials this worker claimed and ran, whatever their end

    def counted(trial: optuna.Trial) -> float:
        ran.append(trial.number)
        return objective(trial, seconds)

    run_trials(study, counted, settings)
    print(f"ran {len(ran)} trials", flush=True)


if __name__ == "__main__":
    main()
