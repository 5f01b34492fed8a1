"""Trials per minute with 1, 2, 4, 8, 16 concurrent trials on one GPU, in one run.

    python benchmarks/gpu_packing.py [--trials 32] [--epochs 3] [--counts 1 2 4 8 16]

Small models leave a big GPU mostly idle, so hpsearch runs several worker processes per
GPU (hpsearch.training.devices.auto_workers). Here K processes share cuda:0, each training whole
trials of the lab report's USPS configuration (shortened to --epochs) with the data on the
device; the table gives trials per minute against one trial at a time, and the free memory
hpsearch's probe sees. Needs a CUDA device (``--device cpu`` runs the same code on the CPU,
to check the script itself).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.workers import trials_per_minute  # noqa: E402
from hpsearch.training.devices import auto_workers, usable_cores  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32, help="trials per row")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_packing needs a CUDA device; none is visible")
        free, total = torch.cuda.mem_get_info(0)
        name = torch.cuda.get_device_name(0)
        print(
            f"{name}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free; "
            f"{usable_cores()} cores; hpsearch's default: {auto_workers('cuda')} workers"
        )
        device = "cuda:0"
    else:
        print(f"CPU check run, {usable_cores()} cores")
        device = "cpu"
    print(f"USPS report configuration, {args.epochs} epochs per trial, {args.trials} trials/row")
    print(f"{'concurrent':>10}{'trials/min':>12}{'vs 1':>8}")
    base = None
    for count in args.counts:
        threads = 1 if device != "cpu" else max(1, usable_cores() // count)
        rate = trials_per_minute("usps", args.epochs, args.trials, count, threads, device)
        base = base or rate
        print(f"{count:>10}{rate:>12.1f}{rate / base:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
