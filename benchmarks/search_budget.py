"""Best validation score vs wall time: hpsearch's default search against random search
without pruning (or against another study's space, ``--against``), on the same wall-clock
budget, over several seeds, in one run.

    python benchmarks/search_budget.py house-prices --budget 60 --seeds 0 1 2
    python benchmarks/search_budget.py usps --budget 240 --seeds 0 1 2
    python benchmarks/search_budget.py usps.toml --against usps-no-aug.toml --budget 240
    python benchmarks/search_budget.py usps --groups 4 --budget 240 --seeds 0 1 2

Each run is a real `hpsearch run STUDY --timeout BUDGET` (default workers, a fresh SQLite
file); only trials finished within BUDGET seconds of the first trial's start count. The table
gives the best validation score at a quarter, half and all of the budget (mean and spread
over seeds), and the time each strategy needs to reach the target: by default the score
the second strategy (random search, the ``--against`` study, or with ``--groups G`` the same
search one trial at a time against groups of G) reaches on every seed by the end of its
budget. Only validation scores are read: the test split plays no part.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import optuna

RANDOM_FLAGS = ["--sampler", "random", "--pruner", "none"]


def run(study: str, args: list[str], seed: int, budget: float, folder: Path, tag: int) -> tuple:
    """One search; returns (direction, [(seconds since start, value)] of finished trials)."""
    url = f"sqlite:///{folder / f'{seed}-{tag}.db'}"
    if Path(study).is_file():  # the search runs in ``folder``
        study = str(Path(study).resolve())
    command = [sys.executable, "-m", "hpsearch", "run", study, "--storage", url]
    command += ["--trials", "100000", "--timeout", str(budget), "--seed", str(seed), *args]
    log = folder / "log.txt"
    with log.open("a") as out:
        code = subprocess.call(command, stdout=out, stderr=out, cwd=folder, env={**os.environ})
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}); see {log}")
    loaded = optuna.load_study(study_name=None, storage=url)
    # The clock starts with the first trial: process start-up is the same for both.
    started = min(t.datetime_start for t in loaded.trials if t.datetime_start is not None)
    finished = [
        ((t.datetime_complete - started).total_seconds(), t.value)
        for t in loaded.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if t.datetime_complete is not None and t.value is not None
    ]
    return loaded.direction, sorted(finished)


def best_by(points: list[tuple[float, float]], seconds: float, maximize: bool) -> float | None:
    values = [value for at, value in points if at <= seconds]
    if not values:
        return None
    return max(values) if maximize else min(values)


def time_to(points: list[tuple[float, float]], target: float, maximize: bool) -> float | None:
    for at, value in points:
        if (value >= target) if maximize else (value <= target):
            return at
    return None


def summary(values: list[float | None], fmt: str) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    text = format(statistics.mean(present), fmt)
    if len(present) > 1:
        text += " ±" + format(statistics.stdev(present), fmt)
    missing = len(values) - len(present)
    return text + (f" ({missing} none)" if missing else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="problem or study file, as for hpsearch run")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument(
        "--against", default=None, help="compare with this study's default search, not random"
    )
    parser.add_argument(
        "--groups", type=int, default=None, help="compare trial groups of G with one at a time"
    )
    args = parser.parse_args()
    study = args.study
    strategies: dict[str, tuple[str, list[str]]] = {f"{Path(study).stem} (default)": (study, [])}
    if args.groups:
        strategies = {
            f"groups of {args.groups}": (study, ["--group-size", str(args.groups)]),
            "one at a time": (study, ["--group-size", "1"]),
        }
    elif args.against:
        strategies[f"{Path(args.against).stem} (default)"] = (args.against, [])
    else:
        strategies["random, no pruning"] = (study, RANDOM_FLAGS)
    names = list(strategies)
    if len(set(names)) != 2:
        raise SystemExit("the two studies need different file names")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, list[list[tuple[float, float]]]] = {}
    maximize = False
    wall = time.perf_counter()
    with TemporaryDirectory() as tmp:
        for seed in args.seeds:  # interleaved, so drift hits both strategies alike
            for tag, (name, (target_study, flags)) in enumerate(strategies.items()):
                direction, points = run(target_study, flags, seed, args.budget, Path(tmp), tag)
                maximize = direction == optuna.study.StudyDirection.MAXIMIZE
                results.setdefault(name, []).append(points)
    budget = args.budget
    target = args.target
    if target is None:  # what the second strategy reaches on every seed
        finals = [best_by(p, budget, maximize) for p in results[names[1]]]
        present = [v for v in finals if v is not None]
        target = (min(present) if maximize else max(present)) if present else None
    # Dollars as whole numbers; accuracies, NLLs and other small scores with 4 decimals.
    values = [abs(v) for runs in results.values() for p in runs for _, v in p]
    fmt = ",.0f" if values and statistics.median(values) >= 1000 else ".4f"
    print(
        f"{' vs '.join(names)}: budget {budget:.0f} s per search, seeds {args.seeds}, "
        f"{'maximize' if maximize else 'minimize'}; {time.perf_counter() - wall:.0f} s in all"
    )
    width = max(22, *(len(name) + 2 for name in names))
    header = f"{'strategy':<{width}}{'complete':>10}"
    for share in (0.25, 0.5, 1.0):
        header += f"{f'best @ {share * budget:.0f}s':>24}"
    print(header + f"{'time to ' + (format(target, fmt) if target else '-'):>22}")
    times: dict[str, float] = {}
    for name, runs in results.items():
        done = statistics.mean(sum(at <= budget for at, _ in p) for p in runs)
        line = f"{name:<{width}}{done:>10.1f}"
        for share in (0.25, 0.5, 1.0):
            line += f"{summary([best_by(p, share * budget, maximize) for p in runs], fmt):>24}"
        reach = [time_to(p, target, maximize) if target else None for p in runs]
        line += f"{summary(reach, '.0f') + ' s':>22}"
        present = [r for r in reach if r is not None]
        if len(present) == len(reach):
            times[name] = statistics.mean(present)
        print(line)
    if len(times) == 2:
        first, second = times[names[0]], times[names[1]]
        if first <= second:
            print(f"{names[0]} reaches the target {second / first:.1f}x sooner than {names[1]}")
        else:
            print(f"{names[0]} takes {first / second:.1f}x as long to reach the target")


if __name__ == "__main__":
    main()
