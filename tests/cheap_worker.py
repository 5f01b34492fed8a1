"""A worker process with a cheap, checkable objective, for the multi-worker tests.

usage: python -m tests.cheap_worker URL STUDY TRIALS [SECONDS_PER_STEP] [STEPS] [CKPT_DIR]
                                    [SAMPLER]
The value of every trial is x**2 + y, so a test can check it against the params. With
CKPT_DIR, each step is "checkpointed" to a file per trial series, and a retry resumes from
it (``resumed_from_step``), like hpsearch's objective. The study is sampled by TPE (or
SAMPLER=random, whose draws cost nothing) seeded per trial from seed 7
(``search.TrialSeededSampler``), as ``hpsearch run`` does. SAMPLER=nsga2 makes a study of
two objectives, (x**2 + y, (x - 2)**2), with the limit y <= 3, its curve recorded as
hpsearch's objective records one (the ``curve`` user attribute).

For benchmarks: CHEAP_WORKER_HEARTBEAT_S sets the heartbeat interval (1 s by default, so that
the tests' stale trials go stale fast), and with CHEAP_WORKER_BARRIER=FOLDER each worker
opens the study, touches FOLDER/ready-PID and claims nothing before FOLDER/go exists.
CHEAP_WORKER_PLAIN=1 runs plain Optuna instead (its RDBStorage and ``Study.optimize``, the
total kept by ``MaxTrialsCallback``, which overshoots by up to workers - 1): the baseline.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpsearch.search.coordinator import retry_trial
from hpsearch.search.samplers import TrialSeededSampler
from hpsearch.search.worker import FunctionObjective, run_trials
from hpsearch.settings import Settings
from hpsearch.storage.database import open_storage

SEED = 7


def objective(
    trial: optuna.Trial, seconds_per_step: float, steps: int = 3, ckpt: Path | None = None
) -> float | list[float]:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 5)
    series = int(trial.user_attrs.get("retry_of", trial.number))
    start = 0
    if ckpt is not None and (ckpt / f"{series}").exists():
        start = int((ckpt / f"{series}").read_text())
        trial.set_user_attr("resumed_from_step", start)
    trial.set_user_attr("pid", os.getpid())
    several = len(trial.study.directions) > 1
    curve = dict(trial.user_attrs.get("curve", {}))
    for step in range(start, steps):
        time.sleep(seconds_per_step)
        if several:
            curve.setdefault(str(step), x**2 + y + steps - step)
            trial.set_user_attr("curve", curve)
        else:
            trial.report(x**2 + y + steps - step, step)
        if ckpt is not None:
            ckpt.mkdir(exist_ok=True)
            # Written whole or not at all: a SIGKILL mid-write leaves the last checkpoint.
            partial = ckpt / f"{series}.{os.getpid()}.tmp"
            partial.write_text(str(step + 1))
            os.replace(partial, ckpt / f"{series}")
    if several:
        trial.set_constraint("y<=", (y - 3) / 3)
        return [x**2 + y, (x - 2) ** 2]
    return x**2 + y


REPO = Path(__file__).resolve().parent.parent


def spawn(
    url: str,
    name: str,
    trials: int,
    count: int,
    seconds: float = 0.01,
    steps: int = 3,
    ckpt: Path | None = None,
    sampler: str = "tpe",
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start ``count`` cheap worker processes on one study; output merged into stdout;
    ``env``: variables added to this process's environment."""
    args = [url, name, str(trials), str(seconds), str(steps), str(ckpt or ""), sampler]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.cheap_worker", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for _ in range(count)
    ]


def main() -> None:
    url, name, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.01
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    ckpt = Path(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] else None
    name_of_sampler = sys.argv[7] if len(sys.argv) > 7 else "tpe"
    sampler = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=8),
    }[name_of_sampler]
    directions = ["minimize"] * (2 if name_of_sampler == "nsga2" else 1)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    heartbeat = int(os.environ.get("CHEAP_WORKER_HEARTBEAT_S", "1"))
    plain = os.environ.get("CHEAP_WORKER_PLAIN") == "1"
    storage: optuna.storages.BaseStorage
    if plain:  # Optuna's own storage, with its heartbeats
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat)
    else:
        storage = open_storage(
            url, heartbeat_interval=heartbeat, on_stale_trial=retry_trial, pre_ping=False
        )
    # Optuna's own create-or-load is safe when workers race (its study has no set-up to
    # finish, unlike hpsearch's study.open_study).
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        directions=directions,
        sampler=TrialSeededSampler(lambda seed: sampler(seed=seed), SEED),
    )
    if barrier := os.environ.get("CHEAP_WORKER_BARRIER"):
        # Start claiming together: say this worker is ready, wait for the go.
        (Path(barrier) / f"ready-{os.getpid()}").touch()
        while not (Path(barrier) / "go").exists():
            time.sleep(0.05)
    settings = Settings(storage=url, study_name=name, trials=trials)
    ran = []  # the trials this worker claimed and ran, whatever their end
    completed = []  # the trials whose objective returned

    def counted(trial: optuna.Trial) -> float | list[float]:
        ran.append(trial.number)
        value = objective(trial, seconds, steps, ckpt)
        completed.append(trial.number)
        return value

    try:
        if plain:
            finished = (TrialState.COMPLETE, TrialState.PRUNED)
            until = optuna.study.MaxTrialsCallback(trials, states=finished)
            study.optimize(counted, callbacks=[until])
        else:
            run_trials(study, FunctionObjective(counted), settings)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise SystemExit(130) from None
    print(f"ran {len(ran)} trials", flush=True)
    print(f"completed {completed}", flush=True)


if __name__ == "__main__":
    main()
