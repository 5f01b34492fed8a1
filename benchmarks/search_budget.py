"""Best validation score vs wall time: hpsearch's default search against random search
without pruning (or against another study's space, ``--against``), on the same wall-clock
budget, over several seeds, in one run. A study of several objectives is judged by the
hypervolume of its feasible front instead (below).

    python benchmarks/search_budget.py house-prices --budget 60 --seeds 0 1 2
    python benchmarks/search_budget.py usps --budget 240 --seeds 0 1 2
    python benchmarks/search_budget.py usps-small --budget 240 --seeds 0 1 2
    python benchmarks/search_budget.py usps.toml --against usps-no-aug.toml --budget 240
    python benchmarks/search_budget.py usps --groups 4 --budget 240 --seeds 0 1 2

Each run is a real `hpsearch run STUDY --timeout BUDGET` (default workers, a fresh SQLite
file); only trials finished within BUDGET seconds of the first trial's start count. The table
gives the best validation score at a quarter, half and all of the budget (mean and spread
over seeds), and the time each strategy needs to reach the target: by default the score
the second strategy (random search, the ``--against`` study, or with ``--groups G`` the same
search one trial at a time against groups of G) reaches on every seed by the end of its
budget. Only validation scores are read: the test split plays no part.

Of two objectives (``usps-small``), three strategies run: the default search (with its
pruner), the same without pruning, and random search without pruning. Each is scored by the
hypervolume of its feasible Pareto front over time, as a share of the box between the best
value of each objective any run reached and the reference point, the worst value of each
among all runs' feasible complete trials (one box for every run, so the shares compare).
The last line says when the default search reaches the unpruned search's final hypervolume,
seed by seed, as a share of the budget. ``--reference 0.9 20000`` fixes the reference point
instead; ``--keep DIR`` keeps the runs' databases.
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


def several_objectives(study: str) -> tuple[str, ...]:
    """The study file's objectives."""
    from hpsearch.search.study_file import find_study_file, load_study_file

    return load_study_file(find_study_file(study)).metrics


def run(study: str, args: list[str], seed: int, budget: float, folder: Path, tag: int) -> tuple:
    """One search; returns (directions, [(seconds since start, values)] of finished feasible
    trials)."""
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
        ((t.datetime_complete - started).total_seconds(), t.values)
        for t in loaded.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if t.datetime_complete is not None
        and t.values is not None
        and all(c <= 0 for c in t.constraints.values())
    ]
    return loaded.directions, sorted(finished)


def hypervolume_curves(
    runs: dict[str, list[list[tuple[float, list[float]]]]],
    maximize: list[bool],
    fixed: list[float] | None = None,
) -> dict[str, list[list[tuple[float, float]]]]:
    """Each run's (seconds, hypervolume share of its front so far) at each finished trial;
    ``fixed``: the reference point, in the objectives' units (default: the worst of all)."""
    if len(maximize) != 2:
        raise SystemExit("the hypervolume here is of two objectives")
    signs = [-1.0 if m else 1.0 for m in maximize]  # minimize both
    every = [
        [s * v for s, v in zip(signs, values, strict=True)]
        for rs in runs.values()
        for r in rs
        for _, values in r
    ]
    if not every:
        raise SystemExit("no run finished a feasible trial")
    reference = [max(p[i] for p in every) for i in range(2)]
    if fixed is not None:
        reference = [s * v for s, v in zip(signs, fixed, strict=True)]
    ideal = [min(p[i] for p in every) for i in range(2)]
    box = (reference[0] - ideal[0]) * (reference[1] - ideal[1]) or 1.0
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    for name, rs in runs.items():
        for r in rs:
            points: list[list[float]] = []
            curve = []
            for at, values in r:
                points.append([s * v for s, v in zip(signs, values, strict=True)])
                curve.append((at, hypervolume_2d(points, reference) / box))
            curves.setdefault(name, []).append(curve)
    return curves


def hypervolume_2d(points: list[list[float]], reference: list[float]) -> float:
    """The area that ``points`` (both objectives minimized) dominate up to ``reference``:
    by hand, since Optuna's hypervolume function is private."""
    area, best_y = 0.0, reference[1]
    for x, y in sorted(p for p in points if p[0] <= reference[0] and p[1] <= reference[1]):
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


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


def main_several(
    study: str, budget: float, seeds: list[int], reference: list[float] | None, keep: str | None
) -> None:
    """The default search, without pruning, and random without pruning, by hypervolume."""
    strategies = {
        f"{Path(study).stem} (default)": [],
        "no pruning": ["--pruner", "none"],
        "random, no pruning": RANDOM_FLAGS,
    }
    runs: dict[str, list[list[tuple[float, list[float]]]]] = {}
    directions: list[optuna.study.StudyDirection] = []
    wall = time.perf_counter()
    with TemporaryDirectory() as tmp:
        folder = Path(keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for seed in seeds:  # interleaved, so drift hits every strategy alike
            for tag, (name, flags) in enumerate(strategies.items()):
                directions, points = run(study, flags, seed, budget, folder, tag)
                runs.setdefault(name, []).append([p for p in points if p[0] <= budget])
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in directions]
    curves = hypervolume_curves(runs, maximize, reference)
    print(
        f"{', '.join(strategies)}: budget {budget:.0f} s per search, seeds {seeds}; "
        f"hypervolume as a share of the box of every run; {time.perf_counter() - wall:.0f} s"
    )
    width = max(len(name) for name in strategies) + 2
    header = f"{'strategy':<{width}}{'complete':>10}"
    for share in (0.25, 0.5, 1.0):
        header += f"{f'HV @ {share * budget:.0f}s':>20}"
    print(header)
    for name, rs in curves.items():
        line = f"{name:<{width}}{statistics.mean(len(r) for r in rs):>10.1f}"
        for share in (0.25, 0.5, 1.0):
            line += f"{summary([best_by(r, share * budget, True) or 0.0 for r in rs], '.4f'):>20}"
        print(line)
    names = list(strategies)
    shares = []
    for pruned, unpruned in zip(curves[names[0]], curves[names[1]], strict=True):
        target = best_by(unpruned, budget, True) or 0.0
        reached = time_to(pruned, target, True)
        shares.append(None if reached is None else reached / budget)
    text = ", ".join("never" if s is None else f"{s:.2f}" for s in shares)
    print(f"{names[0]} reaches the unpruned search's final hypervolume at {text} of the budget")


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
    parser.add_argument(
        "--reference",
        type=float,
        nargs="+",
        default=None,
        help="several objectives: the hypervolume's reference point, one value per objective "
        "(default: each objective's worst among all runs' feasible complete trials)",
    )
    parser.add_argument("--keep", default=None, help="keep the runs' databases in this folder")
    args = parser.parse_args()
    study = args.study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if len(several_objectives(study)) > 1:
        main_several(study, args.budget, args.seeds, args.reference, args.keep)
        return
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
                directions, points = run(target_study, flags, seed, args.budget, Path(tmp), tag)
                maximize = directions[0] == optuna.study.StudyDirection.MAXIMIZE
                results.setdefault(name, []).append([(at, v[0]) for at, v in points])
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
