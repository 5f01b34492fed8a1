"""Local worker processes: ``hpsearch run --workers W`` starts W processes on this machine
that share one study, each a worker as one on another machine would be
(``search.worker.run_worker``), and reports their combined progress. Each receives the run's
plan itself (``search.plan.RunPlan``), with its own device and threads: every worker runs
the study the parent resolved.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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
    """One local worker process: run ``plan``'s trials (``exit_with_reason``)."""
    exit_with_reason(index, functools.partial(run_worker, plan))


def exit_with_reason(index: int, work: Callable[[], object]) -> None:
    """A local worker process's body: ``work()``, its log lines marked with the worker's
    index; a failure is one line and its exit code, Ctrl-C or SIGTERM exit code 130."""
    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        work()
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
    mains = [(worker_main, (plan, i)) for i, plan in enumerate(plans)]
    return run_processes(study, plans[0].settings.trials, mains, on_progress, poll_s)


def run_processes(
    study: optuna.Study,
    target: int,
    mains: Sequence[tuple[Callable[..., None], tuple[Any, ...]]],
    on_progress: Callable[[StudyProgress], None] | None = None,
    poll_s: float = 1.0,
) -> StudyProgress:
    """Run each ``(main, args)`` of ``mains`` in a worker process of its own on this machine
    (spawned: a worker imports what it needs, CUDA included), and report their combined
    progress on ``study`` (of ``target`` trials).

    Raises:
        HpsearchError: a worker exited with an error.
        Interrupted: on SIGTERM/SIGINT, after every worker has stopped cleanly.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=main, args=args, name=f"hpsearch-worker-{i}")
        for i, (main, args) in enumerate(mains)
    ]
    read_progress = ProgressReader(study, target)

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


@contextlib.contextmanager
def helping_processes(
    mains: Sequence[tuple[Callable[..., None], tuple[Any, ...]]],
) -> Iterator[None]:
    """Worker processes, one per ``(main, args)``, that help this process's own worker with
    the same queued work: started on entry; on exit, when this process's worker has found
    nothing left waiting or running, any still alive is stopped (SIGTERM: it is starting up
    or waiting, and holds no work) and joined. Small work ends without waiting for them.

    Raises:
        HpsearchError: a helper exited with an error of its own before it was stopped.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=main, args=args, name=f"hpsearch-helper-{i}")
        for i, (main, args) in enumerate(mains)
    ]
    for process in processes:
        process.start()
    stopped = set()
    try:
        yield
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
                stopped.add(process.pid)
        for process in processes:
            process.join()
    own = [p.exitcode for p in processes if not (p.pid in stopped and p.exitcode in (130, -15))]
    if any(code != 0 for code in own):
        raise workers_failed(own)


def workers_failed(codes: list[int | None]) -> HpsearchError:
    """The error of a run whose workers exited with ``codes``: their own exit code when the
    failed ones agree on an hpsearch error (2 bad input, 69 no device, 70 trials failing,
    75 try again later), else 1 (a crash)."""
    failed = {code for code in codes if code != 0}
    agreed = failed.pop() if len(failed) == 1 else None
    code = agreed if agreed in EXIT_CODES else 1
    return HpsearchError(f"worker exit codes {codes}; see the messages above", exit_code=code)
