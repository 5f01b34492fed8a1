"""``run_study``, the library form of ``hpsearch run``: the study's trials in this process (one
worker), or in local worker processes that share it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

from hpsearch.search.local_workers import run_local_workers
from hpsearch.search.progress import StudyProgress
from hpsearch.search.study import open_run
from hpsearch.search.study_file import StudyConfig
from hpsearch.search.worker import finished_progress, run_worker
from hpsearch.settings import Settings

if TYPE_CHECKING:  # it imports torch
    from hpsearch.problems.splits import Splits


def run_study(
    config: StudyConfig,
    settings: Settings,
    on_progress: Callable[[StudyProgress], None] | None = None,
    on_data: Callable[[Splits], None] | None = None,
) -> tuple[optuna.Study, StudyProgress]:
    """Run (or resume) ``config``'s study until it holds ``settings.trials`` finished trials:
    in this process (``search.worker.run_worker``), or in ``settings.workers`` local worker
    processes, each of which runs it so.

    Everything that can be checked is checked before the storage is touched (sampler and
    pruner options, device, artifact store, data files), so bad input writes nothing.
    """
    if (settings.workers or 1) <= 1:
        return run_worker(config, settings, on_progress, on_data)
    opened = open_run(config, settings)  # the study, created once, before workers start
    if opened.splits is None:  # nothing to run: no worker to start
        return opened.study, finished_progress(opened.study, settings, on_progress)
    if on_data is not None:
        on_data(opened.splits)
    return opened.study, run_local_workers(opened.study, config, settings, on_progress)
