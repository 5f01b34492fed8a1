"""Storage overhead per trial and multi-worker throughput, SQLite vs PostgreSQL, in one run.

    python benchmarks/storage.py [--postgres URL] [--trials 40] [--workers 1 8 32]

Part 1 times what hpsearch adds around one trial on each backend, in one process: the claim
(study lock, stale-trial check, count, ask), one report and pruning check per epoch, and the
tell, next to Optuna's in-memory storage. Part 2 runs W real worker processes
(tests/cheap_worker.py: three 0.1 s steps, no CPU, random sampling) and prints finished
trials per second once every worker is running (the start-up of W processes excluded)
against the ideal W / 0.3 s.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import optuna

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpsearch.search.coordinator import Coordinator  # noqa: E402
from hpsearch.storage.database import open_storage  # noqa: E402
from tests.cheap_worker import spawn  # noqa: E402
from tests.servers import fresh_database  # noqa: E402

EPOCHS = 30
STEP_S = 0.1


def overhead(url: str | None, trials: int) -> dict[str, float]:
    """Median milliseconds per trial for claim, EPOCHS reports, and tell."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat_interval=10) if url else optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name="overhead", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    coordinator = Coordinator(study, trials)
    claim_ms, report_ms, tell_ms = [], [], []
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = coordinator.claim()
        assert isinstance(trial, optuna.Trial)
        x = trial.suggest_float("x", -1, 1)
        t1 = time.perf_counter()
        for epoch in range(EPOCHS):
            trial.report(x * epoch, epoch)
            trial.should_prune()
        t2 = time.perf_counter()
        coordinator.finish(trial, x)
        t3 = time.perf_counter()
        claim_ms.append((t1 - t0) * 1e3)
        report_ms.append((t2 - t1) * 1e3)
        tell_ms.append((t3 - t2) * 1e3)
    coordinator.close()
    return {
        "claim": statistics.median(claim_ms),
        "reports": statistics.median(report_ms),
        "tell": statistics.median(tell_ms),
    }


def throughput(url: str, workers: int, per_worker: int) -> float:
    """Finished trials per second with ``workers`` processes, counted from the moment the
    last worker started its first trial to the last finish."""
    total = workers * per_worker
    name = f"tp{workers}"
    processes = spawn(url, name, total, workers, STEP_S, sampler="random")
    for process in processes:
        output, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            raise SystemExit(f"worker failed: {output}")
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == total
    first: dict[int, datetime.datetime] = {}
    for trial in trials:
        pid = trial.user_attrs["pid"]
        if trial.datetime_start and (pid not in first or trial.datetime_start < first[pid]):
            first[pid] = trial.datetime_start
    start = max(first.values())
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    counted = sum(1 for t in trials if t.datetime_start and t.datetime_start >= start)
    return counted / (end - start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--per-worker", type=int, default=20)
    args = parser.parse_args()

    with (
        TemporaryDirectory() as folder,
        fresh_database(args.postgres, prefix="hpsearch_bench") as pg_url,
    ):
        sqlite_url = f"sqlite:///{Path(folder) / 'bench.db'}"
        backends = {"in-memory": None, "sqlite": sqlite_url, "postgresql": pg_url}
        print(
            f"Per-trial storage overhead, median of {args.trials} trials, {EPOCHS} reports "
            "each (ms; ratio to in-memory)"
        )
        print(f"{'backend':<12}{'claim':>16}{f'{EPOCHS} reports':>18}{'tell':>16}{'total':>16}")
        base = overhead(None, args.trials)
        base_total = sum(base.values())
        for backend, url in backends.items():
            ms = base if url is None else overhead(url, args.trials)
            total = sum(ms.values())
            cells = [f"{ms[k]:8.2f} x{ms[k] / base[k]:5.1f}" for k in ("claim", "reports", "tell")]
            print(
                f"{backend:<12}"
                + "".join(f"{c:>16}" for c in cells[:1])
                + f"{cells[1]:>18}{cells[2]:>16}{total:9.1f} x{total / base_total:5.1f}"
            )

        print(
            f"\nThroughput: trials of 3 x {STEP_S}s waiting steps, {args.per_worker} per worker"
            " (trials/s; share of the ideal W / 0.3 s)"
        )
        print(f"{'workers':<10}" + "".join(f"{b:>22}" for b in ("sqlite", "postgresql")))
        for workers in args.workers:
            ideal = workers / (3 * STEP_S)
            cells = []
            for backend in ("sqlite", "postgresql"):
                url = backends[backend]
                assert url is not None
                rate = throughput(url, workers, args.per_worker)
                cells.append(f"{rate:7.2f}/s ({rate / ideal:4.0%})")
            print(f"{workers:<10}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
