"""Local worker processes: ``hpsearch run --workers W`` starts W processes on this machine
that share one study, each running the same loop as a worker on another machine would
(``search.run_trials``), and reports their combined progress. Also the default worker count.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import optuna

from hpsearch.coordination import signals_interrupt
from hpsearch.errors import HpsearchError, Unavailable
from hpsearch.settings import Settings

if TYPE_CHECKING:
    from hpsearch.search import StudyProgress
    from hpsearch.study_file import StudyConfig

logger = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int, cores: int | None = None) -> int:
    """CPU threads per local worker so that workers x threads <= cores."""
    cores = cores or usable_cores()
    return max(1, cores // max(workers, 1))


# A GPU worker's share of device memory: the CUDA context (~0.5 GiB), the data set on the
# device, and the largest default model's weights, activations and optimizer state.
GPU_WORKER_BYTES = 2 * 1024**3
MAX_WORKERS_PER_GPU = 8


def auto_workers(device_type: str, cores: int | None = None) -> int:
    """The default number of local workers.

    CPU: one single-threaded worker per core. Small models scale badly over threads, so
    whole trials in parallel win (``benchmarks/workers.py`` measures it; docs/performance.md).
    CUDA: per visible GPU, as many workers as its free memory holds at ``GPU_WORKER_BYTES``
    each, at most ``MAX_WORKERS_PER_GPU`` and at most one per CPU core (each worker's Python
    thread launches its kernels).
    """
    cores = cores or usable_cores()
    if device_type != "cuda":
        return cores
    import torch

    per_gpu = []
    for index in range(torch.cuda.device_count()):
        free, _total = torch.cuda.mem_get_info(index)
        per_gpu.append(max(1, min(MAX_WORKERS_PER_GPU, free // GPU_WORKER_BYTES)))
    return max(1, min(sum(per_gpu), cores))


def default_workers(settings: Settings) -> int:
    """One worker per core on the CPU, per-GPU memory-probed on CUDA (``auto_workers``),
    never more than the trials to run."""
    from hpsearch.training import resolve_device

    device = resolve_device(settings.device).type
    if settings.threads is not None and device != "cuda":  # --threads fixes the split
        return max(1, auto_workers("cpu") // settings.threads)
    return max(1, min(auto_workers(device), settings.trials))


def _worker_main(source: str, settings: Settings, index: int) -> None:
    """One local worker process: load the study file again and run trials."""
    from hpsearch.search import run_study
    from hpsearch.storage import database_lost
    from hpsearch.study_file import load_study_file

    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_study(load_study_file(source), settings)
    except HpsearchError as error:
        logger.error("%s", error)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as error:
        lost = database_lost(error)
        if lost is None:
            raise
        logger.error("%s", lost)
        raise SystemExit(lost.exit_code) from None


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each local worker: CUDA workers are spread over the visible GPUs."""
    import torch

    from hpsearch.training import resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return [resolved.type] * workers
    count = torch.cuda.device_count()
    return [f"cuda:{i % count}" for i in range(workers)]


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
    from hpsearch.search import ProgressReader

    workers = settings.workers or 1
    threads = settings.threads or worker_threads(workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_main,
            args=(config.source, replace(settings, workers=1, threads=threads, device=dev), i),
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
    failed ones agree on an hpsearch error (2 bad input, 75 try again later), else 1 (a
    crash)."""
    failed = {code for code in codes if code != 0}
    agreed = failed.pop() if len(failed) == 1 else None
    code = agreed if agreed in (HpsearchError.exit_code, Unavailable.exit_code) else 1
    return HpsearchError(f"worker exit codes {codes}; see the messages above", exit_code=code)
