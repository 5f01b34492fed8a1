"""What one trial costs the database: SQL statements and transactions (pool checkouts) per
trial of hpsearch's worker loop, and where in hpsearch each statement comes from.

    python benchmarks/statements.py [--postgres URL] [--trials 20] [--reports 3]

Runs ``search.worker.run_trials`` in this process on a new PostgreSQL database, a trial
suggesting one param and reporting ``--reports`` times, and counts with SQLAlchemy's
``before_cursor_execute`` and ``checkout`` events.
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpsearch.search.coordinator import retry_trial  # noqa: E402
from hpsearch.search.worker import FunctionObjective, run_trials  # noqa: E402
from hpsearch.settings import Settings  # noqa: E402
from hpsearch.storage.database import open_storage  # noqa: E402
from tests.servers import fresh_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--reports", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with fresh_database(args.postgres, prefix="hpsearch_bench") as url:
        storage = open_storage(
            url, heartbeat_interval=10, on_stale_trial=retry_trial, pre_ping=False
        )
        study = optuna.create_study(
            storage=storage, study_name="statements", sampler=optuna.samplers.RandomSampler(0)
        )
        statements: collections.Counter[tuple[str, str]] = collections.Counter()
        checkouts = 0

        @sqlalchemy.event.listens_for(storage.engine, "before_cursor_execute")
        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            frames = [f for f in traceback.extract_stack() if "/hpsearch/" in f.filename]
            where = frames[-1] if frames else None
            origin = f"{where.filename.split('/hpsearch/')[-1]}:{where.name}" if where else "?"
            statements[(origin, " ".join(statement.split()[:4]))] += 1

        @sqlalchemy.event.listens_for(storage.engine, "checkout")
        def checkout(*_: Any) -> None:
            nonlocal checkouts
            checkouts += 1

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", -1, 1)
            for step in range(args.reports):
                trial.report(x, step)
                trial.should_prune()
            return x

        settings = Settings(storage=url, study_name="statements", trials=args.trials)
        run_trials(study, FunctionObjective(objective), settings)
        storage.engine.dispose()
    n = args.trials
    print(
        f"{sum(statements.values()) / n:.2f} statements and {checkouts / n:.2f} transactions "
        f"(pool checkouts) a trial of {args.reports} reports, over {n} trials:"
    )
    for (origin, statement), times in statements.most_common():
        print(f"{times / n:6.2f}  {origin:<50} {statement}")


if __name__ == "__main__":
    main()
