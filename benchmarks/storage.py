"""Storage overhead per trial, and how a study scales with workers on PostgreSQL, direct and
through PgBouncer, in one run.

    python benchmarks/storage.py [--postgres URL] [--trials 40] [--workers 1 8 32 64 128]
                                 [--trial-seconds 0.3 5] [--per-worker 12] [--pool 20]

Part 1 times what hpsearch adds around one trial on each backend, in one process: the claim
(stale-trial check, count, ask, the check of the trials before it), one report and pruning
check per epoch, and the tell, next to Optuna's in-memory storage. Part 2 runs W real worker
processes (tests/cheap_worker.py: three sleeping steps, one report each, random sampling)
on PostgreSQL directly and through PgBouncer in transaction mode (Debian's pgbouncer, started
here as tests/servers.py does), and prints trials finished per second while all W run (each
trial counted by its share inside that window, which leaves out the W processes' start-up and
the end, when slots run out), its share of the ideal W / trial length, the server's peak
connections to the study's database, and the CPU a trial costs the workers and the servers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import optuna
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpsearch.search.coordinator import Coordinator  # noqa: E402
from hpsearch.search.worker import FunctionObjective, run_trials  # noqa: E402
from hpsearch.settings import Settings  # noqa: E402
from hpsearch.storage.database import open_storage  # noqa: E402
from tests.cheap_worker import spawn  # noqa: E402
from tests.servers import (  # noqa: E402
    fresh_database,
    pgbouncer,
    process_cpu_s,
    sampled_connections,
    server_cpu_s,
)

EPOCHS = 30
STEPS = 3
# Plain Optuna (its RDBStorage and optimize, MaxTrialsCallback for the total) on PostgreSQL
# directly, then hpsearch directly and through PgBouncer.
ROUTES = ("optuna", "postgresql", "pgbouncer")


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
        coordinator.complete(trial, [x])
        t3 = time.perf_counter()
        claim_ms.append((t1 - t0) * 1e3)
        report_ms.append((t2 - t1) * 1e3)
        tell_ms.append((t3 - t2) * 1e3)
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()  # its connection would count in the scale runs' peaks
    return {
        "claim": statistics.median(claim_ms),
        "reports": statistics.median(report_ms),
        "tell": statistics.median(tell_ms),
    }


def tiny_trial(trial: optuna.Trial) -> float:
    """A whole tiny trial: a one-layer model, 30 epochs of one 64-row batch, one report and
    pruning check each."""
    torch.manual_seed(trial.number)
    model = torch.nn.Linear(16, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=trial.suggest_float("lr", 1e-3, 1e-1))
    x, y = torch.randn(64, 16), torch.randn(64, 1)
    for epoch in range(EPOCHS):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trial.report(loss.item(), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss.item()


def tiny_trials(url: str, trials: int, rounds: int) -> tuple[float, float]:
    """Median ms per tiny trial through Optuna's own optimize and through hpsearch's worker
    loop, each on a new study of the same storage, ``rounds`` rounds taken in turn."""
    plain_ms, hpsearch_ms = [], []
    storage = open_storage(url, heartbeat_interval=10)
    optuna_storage = optuna.storages.RDBStorage(url)  # Optuna's defaults
    for round_ in range(rounds):
        sampler = optuna.samplers.RandomSampler(seed=round_)
        plain = optuna.create_study(
            storage=optuna_storage, study_name=f"plain{round_}", sampler=sampler
        )
        t0 = time.perf_counter()
        plain.optimize(tiny_trial, n_trials=trials)
        plain_ms.append((time.perf_counter() - t0) / trials * 1e3)
        name = f"hpsearch{round_}"
        ours = optuna.create_study(storage=storage, study_name=name, sampler=sampler)
        settings = Settings(storage=url, study_name=name, trials=trials)
        t0 = time.perf_counter()
        run_trials(ours, FunctionObjective(tiny_trial), settings)
        hpsearch_ms.append((time.perf_counter() - t0) / trials * 1e3)
    storage.engine.dispose()
    optuna_storage.engine.dispose()
    return statistics.median(plain_ms), statistics.median(hpsearch_ms)


@dataclass
class Scale:
    """One run of W cheap worker processes on one study, from the moment all were ready."""

    rate: float  # trials finished per second while all W ran
    share: float  # of the ideal W / trial length
    peak: int  # the server's most connections to the database, start-up included
    worker_ms: float  # workers' CPU per trial inside the window
    server_ms: float  # PostgreSQL's (and PgBouncer's) CPU per trial inside it, idle use off
    refused: int  # workers that exited with an error (a server out of connections)
    over: int  # trials finished beyond the total


@contextmanager
def sampled_cpu(pids: list[int]) -> Iterator[list[tuple[datetime.datetime, float, float]]]:
    """Every 0.25 s in a thread: (time, CPU seconds of the live ``pids``, the servers')."""
    samples: list[tuple[datetime.datetime, float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while True:
            workers = 0.0
            for pid in pids:
                with suppress(OSError, ValueError):
                    workers += process_cpu_s(pid)
            samples.append((datetime.datetime.now(), workers, server_cpu_s()))
            if stop.wait(0.25):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def scale(
    url: str, direct: str, workers: int, per_worker: int, trial_s: float, plain: bool = False
) -> Scale:
    """Run ``workers`` processes on a new study of ``per_worker`` trials each (through
    ``url``, maybe a pooler; ``direct`` is the server itself), all claiming from one moment;
    ``plain``: plain Optuna's workers instead of hpsearch's."""
    total = workers * per_worker
    name = f"scale{workers}-{time.monotonic_ns()}"
    with TemporaryDirectory() as barrier, sampled_connections(direct) as peaks:
        env = {"CHEAP_WORKER_BARRIER": barrier, "CHEAP_WORKER_HEARTBEAT_S": "10"}
        env["CHEAP_WORKER_PLAIN"] = "1" if plain else "0"
        processes = spawn(
            url, name, total, workers, trial_s / STEPS, STEPS, sampler="random", env=env
        )
        # Ready, or exited (refused by a server out of connections, or failed).
        while (
            len(list(Path(barrier).glob("ready-*"))) + sum(p.poll() is not None for p in processes)
            < workers
        ):
            time.sleep(0.1)
        live = [p.pid for p in processes if p.poll() is None]
        # The servers' CPU while no worker claims (this benchmark's own sampling, PostgreSQL's
        # background work), taken off what the trials cost them.
        idle_start, idle_cpu = time.monotonic(), server_cpu_s()
        time.sleep(3)
        idle_rate = (server_cpu_s() - idle_cpu) / (time.monotonic() - idle_start)
        with sampled_cpu(live) as cpu:
            go = datetime.datetime.now()
            (Path(barrier) / "go").touch()
            refused = 0
            for process in processes:
                output, _ = process.communicate(timeout=3600)
                if process.returncode != 0:
                    refused += 1
                    if refused == 1:  # why, once a run
                        print(
                            f"worker exited {process.returncode}: {output[-600:]}", file=sys.stderr
                        )
    storage = optuna.storages.RDBStorage(direct)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:  # every worker refused before it made the study
        return Scale(0.0, 0.0, peaks.overall, 0.0, 0.0, refused, 0)
    finally:
        storage.engine.dispose()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Exact with hpsearch; plain Optuna's callback overshoots by up to workers - 1, and its
    # workers can fail to start together on a new database (they race to create the tables).
    assert len(done) == total or plain, f"{len(done)} of {total} trials finished"
    if not done:
        return Scale(0.0, 0.0, peaks.overall, 0.0, 0.0, refused, -total)
    # The window: from the go to the last claim (after it, slots run out and workers stop).
    # Trials count by their share inside it.
    end = max(t.datetime_start for t in done if t.datetime_start)
    window = (end - go).total_seconds()
    inside = 0.0
    for trial in done:
        assert trial.datetime_start and trial.datetime_complete
        span = (trial.datetime_complete - trial.datetime_start).total_seconds()
        overlap = min(trial.datetime_complete, end) - max(trial.datetime_start, go)
        inside += max(overlap.total_seconds(), 0.0) / span
    # CPU over the same window: the samples nearest its two ends.
    started, workers_start, server_start = cpu[0]
    ended, workers_end, server_end = [sample for sample in cpu if sample[0] <= end][-1]
    server_end -= idle_rate * (ended - started).total_seconds()
    rate = inside / window
    per_trial = 1e3 / inside
    return Scale(
        rate,
        rate * trial_s / len(live),
        peaks.overall,
        (workers_end - workers_start) * per_trial,
        (server_end - server_start) * per_trial,
        refused,
        len(done) - total,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument(
        "--trial-seconds", type=float, nargs="+", default=[0.3, 5.0], help="trial lengths"
    )
    parser.add_argument("--per-worker", type=int, default=12)
    parser.add_argument("--pool", type=int, default=20, help="PgBouncer's server connections")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    args = parser.parse_args()

    with (
        TemporaryDirectory() as folder,
        fresh_database(args.postgres, prefix="hpsearch_bench") as pg_url,
    ):
        sqlite_url = f"sqlite:///{Path(folder) / 'bench.db'}"
        backends = {"in-memory": None, "sqlite": sqlite_url, "postgresql": pg_url}
        if not args.skip_overhead:
            print_overhead(backends, args.trials)
            print(
                f"\nA tiny trial ({EPOCHS} one-batch epochs, one report each), {args.trials} "
                "trials a round, median of 3 rounds in turn (ms a trial)"
            )
            print(f"{'backend':<12}{'Optuna optimize':>18}{'hpsearch':>12}{'ratio':>8}")
            for backend in ("sqlite", "postgresql"):
                url = backends[backend]
                assert url is not None
                plain, ours = tiny_trials(url, args.trials, rounds=3)
                print(f"{backend:<12}{plain:18.1f}{ours:12.1f}{ours / plain:8.2f}")
        with pgbouncer(pg_url, pool_size=args.pool) as pooled:
            print(
                f"\nScale: W workers, {args.per_worker} trials each of {STEPS} sleeping steps "
                f"(one report each), random sampling; trials/s while all W run, share of the "
                f"ideal W / trial length, the server's peak connections, CPU per trial in the "
                f"same window: workers' + the server's (its idle use taken off); "
                f"{os.cpu_count()} cores"
            )
            print(f"{'trial':<8}{'workers':<9}" + "".join(f"{r:>48}" for r in args.routes))
            for trial_s in args.trial_seconds:
                for workers in args.workers:
                    cells = []
                    for route in args.routes:
                        url = pooled if route == "pgbouncer" else pg_url
                        plain = route == "optuna"
                        r = scale(url, pg_url, workers, args.per_worker, trial_s, plain)
                        cell = (
                            f"{r.rate:7.1f}/s {r.share:4.0%} {r.peak:4d} conn "
                            f"{r.worker_ms:5.1f} + {r.server_ms:4.1f} ms"
                        )
                        if r.refused:
                            cell += f" ({r.refused} refused)"
                        if r.over:
                            cell += f" ({r.over:+d} against the total)"
                        cells.append(cell)
                    print(f"{trial_s:<8g}{workers:<9}" + "".join(f"{c:>48}" for c in cells))


def print_overhead(backends: dict[str, str | None], trials: int) -> None:
    print(
        f"Per-trial storage overhead, median of {trials} trials, {EPOCHS} reports "
        "each (ms; ratio to in-memory)"
    )
    print(
        f"{'backend':<12}{'claim':>16}{f'{EPOCHS} reports':>18}{'tell':>16}{'total':>16}"
        f"{'a report':>10}"
    )
    base = overhead(None, trials)
    base_total = sum(base.values())
    for backend, url in backends.items():
        ms = base if url is None else overhead(url, trials)
        total = sum(ms.values())
        cells = [f"{ms[k]:8.2f} x{ms[k] / base[k]:5.1f}" for k in ("claim", "reports", "tell")]
        print(
            f"{backend:<12}"
            + "".join(f"{c:>16}" for c in cells[:1])
            + f"{cells[1]:>18}{cells[2]:>16}{total:9.1f} x{total / base_total:5.1f}"
            + f"{ms['reports'] / EPOCHS:10.2f}"
        )


if __name__ == "__main__":
    main()
