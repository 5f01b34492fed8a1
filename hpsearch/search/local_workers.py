"""Local worker processes: ``hpsearch run --workers W`` starts W processes on this machine
that share one study, each a worker as one on another machine would be
(``search.worker.run_worker``), and reports their combined progress.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import optuna

from hpsearch.errors import EXIT_CODES, HpsearchError
from hpsearch.search.interrupts import signals_interrupt
from hpsearch.search.progress import ProgressReader, StudyProgress
from hpsearch.search.study_file import StudyConfig, load_study_file
from hpsearch.search.worker import run_worker
from hpsearch.settings import Settings
from hpsearch.storage.errors import user_error

logger = logging.getLogger(__name__)


def _worker_main(
    source: str, data: dict[str, Any], name: str, settings: Settings, index: int
) -> None:
    """One local worker process: load the study file again (with the run's table and study
    name, which ``--data`` may have set) and run trials."""
    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(load_study_file(source, data=data, name=name), settings)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as error:
        failure = user_error(error)
        if failure is None:
            raise
        logger.error("%s", failure)
        raise SystemExit(failure.exit_code) from None


def run_local_workers(
    study: optuna.Study,
    config: StudyConfig,
    settings: Settings,
    on_progress: Callable[[StudyProgress], None] | None = None,
    poll_s: float = 1.0,
) -> StudyProgress:
    """Run ``settings.workers`` worker processes on this machine and report their combined
    progress. CPU threads are split so that workers x threads <= cores.

    Raises:
        HpsearchError: a worker exited with an error.
        Interrupted: on SIGTERM/SIGINT, after every worker has stopped cleanly.
    """
    # Imported here: it imports torch, which the parent process's loop does not need.
    from hpsearch.training.devices import worker_devices, worker_threads

    workers = settings.workers or 1
    threads = settings.threads or worker_threads(workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_main,
            args=(
                config.source,
                config.data,
                config.name,
                replace(settings, workers=1, threads=threads, device=dev),
                i,
            ),
            name=f"hpsearch-worker-{i}",
        )
        for i, dev in enumerate(worker_devices(settings.device, workers))
    ]
    read_progress = ProgressReader(study, settings.trials)

    def report() -> StudyProgress:
        state = read_progress()
        if on_progress is not None:
            on_progress(state)
        return state

    report()
    for process in processes:
        process.start()
    try:
        with signals_interrupt():
            while any(p.is_alive() for p in processes):
                report()
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
        raise
    for process in processes:
        process.join()
    state = report()
    codes = [p.exitcode for p in processes]
    if any(code != 0 for code in codes):
        raise workers_failed(codes)
    return state


def workers_failed(codes: list[int | None]) -> HpsearchError:
    """The error of a run whose workers exited with ``codes``: their own exit code when the
    failed ones agree on an hpsearch error (2 bad input, 69 no device, 70 trials failing,
    75 try again later), else 1 (a crash)."""
    failed = {code for code in codes if code != 0}
    agreed = failed.pop() if len(failed) == 1 else None
    code = agreed if agreed in EXIT_CODES else 1
    return HpsearchError(f"worker exit codes {codes}; see the messages above", exit_code=code)
