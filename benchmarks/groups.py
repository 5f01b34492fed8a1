"""Trials per minute of one fixed shape, trained one at a time or in trial groups, through
real `hpsearch run` processes, side by side in one run.

    python benchmarks/groups.py                      # both problems, groups of 1, 2, 4, 8
    python benchmarks/groups.py --problem usps --trials 16 --sizes 1 4

Each case is `hpsearch run STUDY --workers W --threads T --group-size G` on a fresh SQLite
file, where STUDY fixes the model (the lab report's USPS conv net for 3 epochs, or the lab
report's house-price MLP for --house-epochs epochs, or a small model of the default USPS
space: 2 conv x 16, batch 64) and searches only the learning rate, so
every trial has the same shape and the same work. Trials per minute count from the first
trial's start to the last trial's end (process start-up is measured by first_epoch.py).
The ratios are against groups of 1 with the same workers (the CPU default); with --rounds R
the sizes run interleaved R times and the medians are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

STUDY = """
[study]
problem = "{problem}"
seed = 0
trials = {trials}
{extra}
[sampler]
name = "random"

[pruner]
name = "none"

[fixed]
epochs = {epochs}
{fixed}
[space.lr]
type = "float"
low = {low}
high = {high}
log = true
"""
PROBLEMS = {
    # The lab report's best USPS model (3 conv x 64, Adam, batch 50, dropout 0.1), 3 epochs.
    "usps": {"epochs": 3, "low": 3e-3, "high": 3e-2, "extra": ""},
    # A small model of the default USPS space: 2 conv x 16, batch 64, cosine schedule.
    "usps-small": {
        "epochs": 3,
        "low": 3e-3,
        "high": 3e-2,
        "extra": "",
        "fixed": 'n_conv_layers = 2\nchannels = 16\nbatch_size = 64\nlr_schedule = "cosine"\n',
    },
    # The lab report's house-price MLP (3 x 128, Adam, batch 100, its 4 features).
    "house-prices": {"epochs": 200, "low": 1e-4, "high": 1e-3, "extra": "eval_every = 50\n"},
}


def trials_per_minute(
    problem: str, trials: int, size: int, workers: int, threads: int, folder: Path, epochs: int
) -> float:
    options = {"fixed": "", **PROBLEMS[problem], "epochs": epochs}
    if problem == "house-prices":
        options["extra"] += '[data]\nfeatures = "lab-report"\nlog_target = false\n'
    study = folder / f"{problem}-{size}.toml"
    name = problem.removesuffix("-small")
    study.write_text(STUDY.format(problem=name, trials=trials, **options))
    url = f"sqlite:///{folder / f'{problem}-{size}.db'}"
    command = [sys.executable, "-m", "hpsearch", "run", str(study), "--storage", url]
    command += ["--workers", str(workers), "--threads", str(threads), "--group-size", str(size)]
    with (folder / "log.txt").open("a") as log:
        code = subprocess.call(command, stdout=log, stderr=log, cwd=folder, env=os.environ)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}); see {folder / 'log.txt'}")
    done = optuna.load_study(study_name=None, storage=url).get_trials(
        states=[optuna.trial.TrialState.COMPLETE]
    )
    start = min(t.datetime_start for t in done if t.datetime_start)
    end = max(t.datetime_complete for t in done if t.datetime_complete)
    return len(done) / ((end - start).total_seconds() / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=list(PROBLEMS), nargs="+", default=list(PROBLEMS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--trials", type=int, default=16, help="per case (default 16)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats; medians")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--usps-epochs", type=int, default=3)
    parser.add_argument("--house-epochs", type=int, default=200)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"{args.workers} workers x {args.threads} threads, {args.trials} trials per case, "
        f"{args.rounds} round(s), sizes interleaved in each"
    )
    print(f"{'problem':<14}{'group size':>11}{'trials/min':>12}{'vs size 1':>11}{'rounds':>24}")
    with tempfile.TemporaryDirectory() as tmp:
        for problem in args.problem:
            epochs = args.house_epochs if problem == "house-prices" else args.usps_epochs
            rates: dict[int, list[float]] = {size: [] for size in args.sizes}
            for round_ in range(args.rounds):  # drift of the machine hits every size alike
                for size in args.sizes:
                    folder = Path(tmp) / f"{round_}"
                    folder.mkdir(exist_ok=True)
                    rate = trials_per_minute(
                        problem, args.trials, size, args.workers, args.threads, folder, epochs
                    )
                    rates[size].append(rate)
            base = statistics.median(rates[1]) if 1 in rates else None
            for size, values in rates.items():
                rate = statistics.median(values)
                ratio = f"{rate / base:.2f}x" if base else "-"
                each = " ".join(f"{v:.1f}" for v in values)
                print(f"{problem:<14}{size:>11}{rate:>12.1f}{ratio:>11}{each:>24}", flush=True)


if __name__ == "__main__":
    main()
