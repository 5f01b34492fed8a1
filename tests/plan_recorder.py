"""A local worker's main for tests: save the plan the worker process received (pickled, as
the parent sent it) and its pid in ``$HPSEARCH_TEST_PLANS``, then run it as a worker does
(``search.local_workers.worker_main``). Tests put it in place of ``worker_main``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from hpsearch.search.local_workers import worker_main
from hpsearch.search.plan import RunPlan


def record_and_work(plan: RunPlan, index: int) -> None:
    folder = Path(os.environ["HPSEARCH_TEST_PLANS"])
    (folder / f"worker-{index}-{os.getpid()}.pkl").write_bytes(pickle.dumps(plan))
    worker_main(plan, index)
