"""The training device and what a machine holds: which device ``--device`` means, how many
cores a worker may use, how many workers a machine runs by default and how many trials a
worker trains as one stack."""

from __future__ import annotations

import os

import torch

from hpsearch.errors import DeviceMissing

# A GPU worker's share of device memory: the CUDA context (~0.5 GiB), the data set on the
# device, and the largest default model's weights, activations and optimizer state.
GPU_WORKER_BYTES = 2 * 1024**3
MAX_WORKERS_PER_GPU = 8
# Trials per group when --group-size is not given. On the 2-core CPU, small models gained
# 10-16% in groups of 4 and the grouped search did worse on the same budget
# (docs/performance.md#trial-groups); on CUDA a small trial uses under 1% of the GPU, which
# groups are built to fill (the group size there is not measured yet).
DEFAULT_GROUP_SIZE = {"cpu": 1, "cuda": 8}


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Raises:
        DeviceMissing: ``cuda`` asked for where no CUDA device is available.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceMissing("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def auto_workers(device_type: str, cores: int | None = None) -> int:
    """The number of local workers a machine runs by default.

    CPU: one single-threaded worker per core. Small models scale badly over threads, so
    whole trials in parallel win (``benchmarks/workers.py`` measures it; docs/performance.md).
    CUDA: per visible GPU, as many workers as its free memory holds at ``GPU_WORKER_BYTES``
    each, at most ``MAX_WORKERS_PER_GPU`` and at most one per CPU core (each worker's Python
    thread launches its kernels).
    """
    cores = cores or usable_cores()
    if device_type != "cuda":
        return cores
    per_gpu = []
    for index in range(torch.cuda.device_count()):
        free, _total = torch.cuda.mem_get_info(index)
        per_gpu.append(max(1, min(MAX_WORKERS_PER_GPU, free // GPU_WORKER_BYTES)))
    return max(1, min(sum(per_gpu), cores))


def default_workers(device: str, *, threads: int | None, trials: int) -> int:
    """Local workers for ``--device``: one per core on the CPU (or cores / ``threads``),
    per-GPU memory-probed on CUDA (``auto_workers``), never more than ``trials``."""
    kind = resolve_device(device).type
    if threads is not None and kind != "cuda":  # --threads fixes the split
        return max(1, auto_workers("cpu") // threads)
    return max(1, min(auto_workers(kind), trials))


def default_group_size(device: str) -> int:
    """``DEFAULT_GROUP_SIZE`` of the device ``--device`` resolves to."""
    return DEFAULT_GROUP_SIZE.get(resolve_device(device).type, 1)


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each local worker: CUDA workers are spread over the visible GPUs."""
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return [resolved.type] * workers
    count = torch.cuda.device_count()
    return [f"cuda:{i % count}" for i in range(workers)]
