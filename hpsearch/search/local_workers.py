"""Local worker processes: ``hpsearch run --workers W`` starts W processes on this machine
that share one study, each a worker as one on another machine would be
(``search.worker.run_worker``), and reports their combined progress. Each receives the run's
plan itself (``search.plan.RunPlan``), with its own device and threads: every worker runs
the study the parent resolved.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable

import optuna

from hpsearch.errors import EXIT_CODES, HpsearchError
from hpsearch.search.interrupts import signals_interrupt
from hpsearch.search.plan import RunPlan
from hpsearch.search.progress import ProgressReader, StudyProgress
from hpsearch.search.worker import run_worker
from hpsearch.storage.errors import user_error

logger = logging.getLogger(__name__)


def worker_plans(plan: RunPlan) -> list[RunPlan]:
    """The plan of each of ``plan.settings.workers`` local workers: the run's study and
    settings, one worker each, with its device (``training.devices.worker_devices``) and
    its share of the CPU threads (workers x threads <= cores)."""
    # Imported here: it imports torch, which the parent process's loop does not need.
    from hpsearch.training.devices import worker_devices, worker_threads

    settings = plan.settings
    workers = settings.workers or 1
    threads = settings.threads or worker_threads(workers)
    return [
        plan.for_worker(workers=1, threads=threads, device=device)
        for device in worker_devices(settings.device, workers)
    ]


def worker_main(plan: RunPlan, index: int) -> None:
    """One local worker process: run ``plan``'s trials; a failure is one line and its exit
    code."""
    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(plan)
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
    plans: list[RunPlan],
    on_progress: Callable[[StudyProgress], None] | None = None,
    poll_s: float = 1.0,
) -> StudyProgress:
    """Run one worker process on this machine per plan of ``plans`` (``worker_plans``),
    each ``worker_main(plan, index)``, and report their combined progress on ``study``.

    Raises:
        HpsearchError: a worker exited with an error.
        Interrupted: on SIGTERM/SIGINT, after every worker has stopped cleanly.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=worker_main, args=(plan, i), name=f"hpsearch-worker-{i}")
        for i, plan in enumerate(plans)
    ]
    read_progress = ProgressReader(study, plans[0].settings.trials)

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
            while alive := [p for p in processes if p.is_alive()]:
                report()
                # Woken at once when a worker exits: the run ends with its last worker.
                multiprocessing.connection.wait([p.sentinel for p in alive], timeout=poll_s)
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
