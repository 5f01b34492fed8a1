"""Start-up of a search: seconds from ``hpsearch run usps`` to the first report of its first
trial (its first epoch, evaluated), with the decoded data cache cold and warm, side by side
in one run (medians of alternating repeats).

    python benchmarks/first_epoch.py [--repeats 3] [--workers 1 2]

Each run goes into a fresh folder and SQLite file; "cold" points ``XDG_CACHE_HOME`` at an
empty folder (a machine's first run: every process decodes the USPS files), "warm" at one
filled beforehand (every later run). The run is stopped (SIGTERM) once the database holds a
report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def first_report_s(hpsearch: str, workers: int, cache: Path) -> float:
    """Seconds from starting ``hpsearch run usps`` to its first report in the database."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "s.db"
        env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
        command = [hpsearch, "run", "usps", "--workers", str(workers)]
        started = time.perf_counter()
        run = subprocess.Popen(
            [*command, "--storage", f"sqlite:///{db}"],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                if db.exists() and _reports(db) > 0:
                    return time.perf_counter() - started
                if run.poll() is not None:
                    raise SystemExit(f"hpsearch run ended with {run.returncode} before a report")
                time.sleep(0.05)
        finally:
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=120)


def _reports(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            query = "SELECT COUNT(*) FROM trial_intermediate_values"
            return int(connection.execute(query).fetchone()[0])
    except sqlite3.Error:  # tables not made yet
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    hpsearch = shutil.which("hpsearch")
    if hpsearch is None:
        raise SystemExit("needs the hpsearch command on PATH")
    with tempfile.TemporaryDirectory() as warm:
        first_report_s(hpsearch, 1, Path(warm))  # fills the warm cache
        seconds: dict[tuple[int, str], list[float]] = {}
        for _ in range(args.repeats):
            for workers in args.workers:
                for name in ("cold", "warm"):
                    with tempfile.TemporaryDirectory() as cold:
                        cache = Path(cold if name == "cold" else warm)
                        value = first_report_s(hpsearch, workers, cache)
                    seconds.setdefault((workers, name), []).append(value)
    print(f"seconds from `hpsearch run usps` to its first report; median of {args.repeats}")
    print(f"{'workers':>7} {'cold cache':>11} {'warm cache':>11} {'warm / cold':>12}")
    for workers in args.workers:
        cold_s = statistics.median(seconds[(workers, "cold")])
        warm_s = statistics.median(seconds[(workers, "warm")])
        print(f"{workers:7d} {cold_s:11.1f} {warm_s:11.1f} {warm_s / cold_s:12.2f}")


if __name__ == "__main__":
    main()
