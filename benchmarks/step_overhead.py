"""Microseconds per optimizer step of the lab report's house-price MLP, in one run.

    python benchmarks/step_overhead.py [--epochs 200] [--repeats 3] [--threads 1]

The lab report's MLP (3 hidden x 128, ReLU, batch 100) does ~14 MFLOP per step: its time is
per-operation overhead, not arithmetic. Rows: hpsearch's `train` (fused Adam), a plain
hand-written loop with PyTorch's default Adam (foreach), the same with fused Adam, and the
plain loop with each optimizer the study spaces offer. The house-price default space is
sized from these figures (benchmarks/search_budget.py checks the result).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpsearch.problems.house_prices import load_house_prices  # noqa: E402
from hpsearch.problems.registry import get_problem  # noqa: E402
from hpsearch.training.config import TrainConfig  # noqa: E402
from hpsearch.training.loop import train  # noqa: E402
from hpsearch.training.models import build_mlp_regressor  # noqa: E402
from hpsearch.training.optim import make_optimizer  # noqa: E402

PARAMS = dict(get_problem("house-prices").defaults)


def steps_per_epoch(n: int, batch: int) -> int:
    return sum(1 for start in range(0, n, batch) if n - start > 1)


def hpsearch_loop(x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    torch.manual_seed(0)
    model = build_mlp_regressor(PARAMS, x.shape[1:])
    config = TrainConfig.from_params({**PARAMS, "epochs": epochs}, seed=0)
    start = time.perf_counter()
    train(model, x, y, F.mse_loss, config, evaluate=lambda m: {}, eval_every=epochs)
    return (time.perf_counter() - start) / (epochs * steps_per_epoch(len(x), config.batch_size))


def plain_loop(x: torch.Tensor, y: torch.Tensor, epochs: int, optimizer: str, fused: bool) -> float:
    torch.manual_seed(0)
    model = build_mlp_regressor(PARAMS, x.shape[1:])
    config = TrainConfig.from_params({**PARAMS, "optimizer": optimizer, "fused": fused})
    opt = make_optimizer(model.parameters(), config)
    batch = config.batch_size
    start = time.perf_counter()
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            F.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_house_prices()
    x, y = splits.x_train, splits.y_train
    rows = {
        "hpsearch train (fused Adam)": lambda: hpsearch_loop(x, y, args.epochs),
        "plain loop, Adam (default)": lambda: plain_loop(x, y, args.epochs, "adam", False),
        "plain loop, Adam fused": lambda: plain_loop(x, y, args.epochs, "adam", True),
        "plain loop, RMSprop": lambda: plain_loop(x, y, args.epochs, "rmsprop", False),
        "plain loop, SGD momentum": lambda: plain_loop(x, y, args.epochs, "sgd", False),
    }
    runs: dict[str, list[float]] = {name: [] for name in rows}
    hpsearch_loop(x, y, 5)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift hits every row alike
        for name, run in rows.items():
            runs[name].append(run())
    print(
        f"house-prices MLP (report config: 3 x 128, batch {PARAMS['batch_size']}), "
        f"{len(x)} rows, {args.threads} thread(s), torch {torch.__version__}; "
        f"median of {args.repeats} x {args.epochs} epochs"
    )
    base = statistics.median(runs["plain loop, Adam (default)"])
    print(f"{'loop':<30}{'us/step':>10}{'vs plain Adam':>15}")
    for name, times in runs.items():
        seconds = statistics.median(times)
        print(f"{name:<30}{seconds * 1e6:>10.0f}{seconds / base:>14.2f}x")


if __name__ == "__main__":
    main()
