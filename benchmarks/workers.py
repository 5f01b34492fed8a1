"""Trials per minute on this machine's CPU: W worker processes x T threads, W x T = cores.

    python benchmarks/workers.py [--trials 4] [--usps-epochs 2] [--house-epochs 100]

Each worker process trains whole trials of the same fixed configuration (the lab report's
best, shortened) on its own, as `hpsearch run --workers W --threads T` does; the wall time
from start until all trials are done gives trials per minute. This is what
hpsearch.training.devices.auto_workers' CPU default (one single-threaded worker per core) rests on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpsearch.training.devices import usable_cores  # noqa: E402


def run_trials(problem: str, epochs: int, trials: int, threads: int, device: str = "cpu") -> None:
    import torch

    from hpsearch.problems.registry import get_problem

    torch.set_num_threads(threads)
    spec = get_problem(problem)
    splits = spec.load_data(None).to(torch.device(device))
    params = {**spec.defaults, "epochs": epochs}
    for seed in range(trials):
        spec.fit(
            params,
            splits.x_train,
            splits.y_train,
            seed=seed,
            evaluate=lambda m: spec.evaluate(m, splits.x_val, splits.y_val, splits),
        )


def trials_per_minute(
    problem: str, epochs: int, trials: int, workers: int, threads: int, device: str = "cpu"
) -> float:
    context = multiprocessing.get_context("spawn")
    share = [trials // workers + (i < trials % workers) for i in range(workers)]
    processes = [
        context.Process(target=run_trials, args=(problem, epochs, n, threads, device))
        for n in share
    ]
    start = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {process.exitcode}")
    return trials / (time.perf_counter() - start) * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per configuration")
    parser.add_argument("--usps-epochs", type=int, default=2)
    parser.add_argument("--house-epochs", type=int, default=100)
    args = parser.parse_args()
    cores = usable_cores()
    splits = [(w, cores // w) for w in range(1, cores + 1) if cores % w == 0]
    print(f"{cores} cores; {args.trials} trials per row; each row's time includes process start")
    print(f"{'problem':<24}{'workers x threads':>19}{'trials/min':>12}{'vs 1 worker':>13}")
    for problem, epochs in (("usps", args.usps_epochs), ("house-prices", args.house_epochs)):
        base = None
        for workers, threads in splits:
            rate = trials_per_minute(problem, epochs, args.trials, workers, threads)
            base = base or rate
            print(
                f"{problem + f' ({epochs} epochs)':<24}{f'{workers} x {threads}':>19}"
                f"{rate:>12.1f}{rate / base:>12.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
