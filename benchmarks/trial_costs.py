"""What measuring a model's costs adds to a trial: ``training.costs.model_costs`` (parameters,
bytes, FLOPs, 30 timed single-example passes) against one epoch of training the same model,
side by side in one run.

    python benchmarks/trial_costs.py [--threads 1] [--repeats 5]

Every trial measures its model's costs once, before its first epoch, whether or not its
study uses them. Models: the default ``usps`` space's smallest and largest (1 conv layer of
16 channels, 4 of 64) and the ``house-prices`` MLP of the default space's widest (3 x 256).
Prints the median of ``--repeats`` measurements of each and their ratio; a trial trains 5-15
epochs (USPS) or hundreds (house prices), so its share of a trial is smaller still.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from hpsearch.problems import get_problem
from hpsearch.training.costs import model_costs


def median_seconds(work: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [
        ("usps", {"n_conv_layers": 1, "channels": 16, "batch_size": 64}),
        ("usps", {"n_conv_layers": 4, "channels": 64, "batch_size": 64}),
        ("house-prices", {"n_hidden_layers": 3, "hidden_units": 256, "batch_size": 128}),
    ]
    print(f"torch threads {args.threads}; medians of {args.repeats}")
    print(f"{'model':<44}{'costs, s':>10}{'1 epoch, s':>12}{'costs/epoch':>13}")
    for name, params in cases:
        problem = get_problem(name)
        splits = problem.load_data(None)
        config = {**problem.defaults, **params, **splits.model_params, "epochs": 1}
        shape = tuple(splits.x_train.shape[1:])
        model = problem.build_model(config, shape)
        example = splits.x_train[:1]
        costs = median_seconds(lambda m=model, e=example: model_costs(m, e), args.repeats)
        x, y = splits.x_train, splits.y_train
        epoch = median_seconds(
            lambda c=config, x=x, y=y, p=problem: p.fit(c, x, y, seed=0), args.repeats
        )
        label = f"{name} " + " ".join(f"{k}={v}" for k, v in params.items() if k != "batch_size")
        print(f"{label:<44}{costs:>10.4f}{epoch:>12.3f}{costs / epoch:>13.4f}")


if __name__ == "__main__":
    main()
