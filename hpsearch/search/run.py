"""``run_study``, the library form of ``hpsearch run``: a plan's trials in this process (one
worker), or in local worker processes that share its study."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

from hpsearch.search.local_workers import run_local_workers, worker_plans
from hpsearch.search.plan import RunPlan
from hpsearch.search.progress import StudyProgress
from hpsearch.search.study import check_plan, open_study
from hpsearch.search.worker import finished_progress, run_worker

if TYPE_CHECKING:  # it imports torch
    from hpsearch.problems.splits import Splits


def run_study(
    plan: RunPlan,
    on_progress: Callable[[StudyProgress], None] | None = None,
    on_data: Callable[[Splits], None] | None = None,
) -> tuple[optuna.Study, StudyProgress]:
    """Run (or resume) ``plan``'s study until it holds ``plan.settings.trials`` finished
    trials: in this process (``search.worker.run_worker``), or in ``settings.workers``
    local worker processes, each of which runs its share of the same plan.

    Everything that can be checked is checked before the storage is touched (sampler and
    pruner options, every worker's device, artifact store, data files), so bad input writes
    nothing.
    """
    if (plan.settings.workers or 1) <= 1:
        return run_worker(plan, on_progress, on_data)
    plans = worker_plans(plan)
    for each in plans:  # every worker's settings, before the study is created
        check_plan(each)
    opened = open_study(plan)  # the study, created once, before workers start
    if opened.splits is None:  # nothing to run: no worker to start
        return opened.study, finished_progress(opened.study, plan.settings, on_progress)
    if on_data is not None:
        on_data(opened.splits)
    return opened.study, run_local_workers(opened.study, plans, on_progress)
