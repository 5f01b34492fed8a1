"""finalize's wall time against its search's, side by side in one run.

    python benchmarks/finalize.py [--data house-prices usps diabetes friedman] [--trials 30]
                                  [--workers 1 2] [--against REF]

For each data set, ``hpsearch run`` as a user runs it (the shipped study, or ``--data FILE
--target y`` for a table; ``--trials``, the default workers) into a new SQLite file, timed as a
whole process; then, each on a copy of that file and in turn, ``hpsearch finalize STUDY``
(top 3 x 3 seeds, with its ensemble and baselines: the defaults) with each ``--workers``, and
with ``--against REF`` the finalize of that git revision (a worktree of this checkout, run with
this environment's packages and its own defaults). Prints each wall time and each finalize's
ratio to the search and to REF's finalize. The tables: scikit-learn's diabetes (442 rows, 10
columns) and Friedman's regression problem #1 (``make_friedman1``: 10,000 rows, 10 columns,
noise 1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from sklearn.datasets import load_diabetes, make_friedman1

REPO = Path(__file__).resolve().parent.parent


def table(name: str, folder: Path) -> list[str]:
    """``hpsearch run``'s arguments for the data set ``name`` (a table written to ``folder``)."""
    if name in ("house-prices", "usps"):
        return [name]
    path = folder / f"{name}.csv"
    if name == "diabetes":
        frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "y"})
    else:
        x, y = make_friedman1(n_samples=10_000, n_features=10, noise=1.0, random_state=0)
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)]).assign(y=y)
    frame.to_csv(path, index=False)
    return ["--data", str(path), "--target", "y"]


def timed(command: list[str], folder: Path, python_path: str | None = None) -> float:
    """Seconds ``python -m hpsearch COMMAND`` takes in ``folder``, as a whole process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    if python_path is not None:
        env["PYTHONPATH"] = python_path
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch", *command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds


def study_name(folder: Path) -> str:
    """The one study (not finalize's companion) in ``folder/search.db``."""
    with contextlib.closing(sqlite3.connect(folder / "search.db")) as db:
        names = [row[0] for row in db.execute("SELECT study_name FROM studies")]
    (name,) = [n for n in names if not n.endswith(":finalize")]
    return name


def copy_of(folder: Path, name: str) -> Path:
    """A folder of its own holding a copy of the search's database (SQLite's backup)."""
    target = folder / name
    target.mkdir()
    with contextlib.closing(sqlite3.connect(folder / "search.db")) as source:
        with contextlib.closing(sqlite3.connect(target / "search.db")) as copy:
            source.backup(copy)
    return target


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[str]:
    """This checkout at ``ref``, as a folder to put on PYTHONPATH."""
    folder = tempfile.mkdtemp(prefix="hpsearch-ref-")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", folder, ref],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", folder],
                       check=False, capture_output=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", nargs="+", default=["house-prices", "usps", "diabetes", "friedman"]
    )
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--against", help="a git revision whose finalize to time beside")
    args = parser.parse_args()
    storage = "sqlite:///search.db"
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(worktree(args.against)) if args.against else None
        rows = []
        for data in args.data:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            search = timed(
                ["run", *table(data, folder), "--trials", str(args.trials), "--storage", storage],
                folder,
            )
            name = study_name(folder)
            row: dict[str, float | str] = {"data": data, "search": search}
            if reference is not None:
                place = copy_of(folder, "reference")
                row[args.against] = timed(
                    ["finalize", name, "--storage", storage], place, reference
                )
            for workers in args.workers:
                place = copy_of(folder, f"workers-{workers}")
                command = ["finalize", name, "--storage", storage, "--workers", str(workers)]
                row[f"{workers} worker{'s' if workers > 1 else ''}"] = timed(command, place)
            rows.append(row)
            print(row, flush=True)
    frame = pd.DataFrame(rows).set_index("data")
    columns = [c for c in frame.columns if c != "search"]
    for column in columns:
        frame[f"{column} / search"] = frame[column] / frame["search"]
        if args.against and column != args.against:
            frame[f"{column} / {args.against}"] = frame[column] / frame[args.against]
    print(f"\n{args.trials} trials; seconds, and ratios measured in this run")
    print(frame.round(2).to_string())


if __name__ == "__main__":
    main()
