"""The fused forward pass of a stack of K models, two ways, side by side in one run: hpsearch's
hand-written grouped layers (hpsearch.training.stack) against PyTorch's model-ensembling
recipe (torch.func.functional_call under vmap, over the same stacked parameters), with the K
models one after another as the reference.

    python benchmarks/stack_forward.py [--members 4] [--threads 1] [--rounds 5]

Each case times one training step's forward and backward pass (no optimizer step) of K
models of one shipped problem's architecture, for both model families: the conv classifier
(a small net of the default USPS space and the lab report's 3 conv x 64) and the MLP
regressors (the lab report's 3 x 128 on the default house-price features). Dropout is off:
vmap cannot draw each member's masks from its own stream. The cases run interleaved
``--rounds`` times; the medians and the ratio vmap / hand-written are printed (above 1: the
hand-written layers are faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpsearch.problems import get_problem  # noqa: E402
from hpsearch.search.study_file import find_study_file, load_study_file  # noqa: E402
from hpsearch.training import (
    TrainConfig,  # noqa: E402
    Trainee,  # noqa: E402
)
from hpsearch.training.stack import Fused  # noqa: E402

USPS = get_problem("usps").defaults
CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    "usps, 2 conv x 16, batch 64": (
        "usps",
        {**USPS, "n_conv_layers": 2, "channels": 16, "batch_size": 64},
        64,
    ),
    "usps, lab report 3 conv x 64, batch 50": ("usps", dict(USPS), 50),
    "house-prices, 3 x 128, batch 100": (
        "house-prices",
        dict(get_problem("house-prices").defaults),
        100,
    ),
    "house-prices-gaussian, 3 x 128, batch 100": (
        "house-prices-gaussian",
        dict(get_problem("house-prices-gaussian").defaults),
        100,
    ),
}


def shipped_inputs(problem: str) -> torch.Tensor:
    """A batch-sized slice of the shipped study's training inputs (its features, its shape)."""
    config = load_study_file(find_study_file(problem))
    return config.problem.load_data(None, **config.data).x_train


def steps(
    problem: str, params: dict[str, Any], batch: int, k: int
) -> dict[str, Callable[[], None]]:
    """One forward + backward pass of K models, three ways."""
    spec = get_problem(problem)
    params = {**params, "dropout": 0.0}
    x_all = shipped_inputs(problem)
    x = (
        x_all[:batch].contiguous(memory_format=torch.channels_last)
        if x_all.dim() == 4
        else x_all[:batch]
    )
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = spec.build_model(params, tuple(x.shape[1:]))
        models.append(model.to(memory_format=torch.channels_last) if x.dim() == 4 else model)
    y = torch.randint(0, 10, (batch,)) if problem == "usps" else torch.randn(batch)
    loss_fn = spec.losses["cross_entropy" if problem == "usps" else params["loss"]]
    config = TrainConfig.from_params(params)
    fused = Fused([Trainee(m, loss_fn, config, lambda m: {}) for m in models], x, y)
    images = x.dim() == 4

    def hand_written() -> None:
        stacked = (
            torch.cat([x] * k, dim=1).contiguous(memory_format=torch.channels_last)
            if images
            else torch.stack([x] * k)
        )
        outputs = fused.forward(stacked, [])
        torch.stack([loss_fn(outputs[j], y) for j in range(k)]).sum().backward()
        for stack in fused.params.values():
            stack.grad = None

    base = copy.deepcopy(models[0]).to("meta")
    params_, buffers_ = dict(fused.params), dict(fused.buffers)  # the same stacks
    batched = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)), in_dims=(0, 0, 0))

    def torch_func() -> None:
        outputs = batched(params_, buffers_, torch.stack([x] * k))
        torch.stack([loss_fn(outputs[j], y) for j in range(k)]).sum().backward()
        for stack in params_.values():
            stack.grad = None

    def one_by_one() -> None:
        for model in models:
            loss_fn(model(x), y).backward()
            model.zero_grad(set_to_none=True)

    return {"hand-written": hand_written, "torch.func vmap": torch_func, "one by one": one_by_one}


def milliseconds(step: Callable[[], None], repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="steps per timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.members} members, {args.threads} thread(s), torch {torch.__version__}; "
        f"forward + backward, ms per step, median of {args.rounds} interleaved rounds"
    )
    print(f"{'case':<44}{'hand':>8}{'vmap':>8}{'1 by 1':>8}{'vmap/hand':>11}")
    for name, (problem, params, batch) in CASES.items():
        cases = steps(problem, params, batch, args.members)
        for step in cases.values():  # warm-up: allocator, kernels, vmap's tracing caches
            for _ in range(3):
                step()
        times: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(args.rounds):
            for label, step in cases.items():
                times[label].append(milliseconds(step, args.repeats))
        hand, func, alone = (statistics.median(times[label]) for label in cases)
        print(f"{name:<44}{hand:>8.2f}{func:>8.2f}{alone:>8.2f}{func / hand:>10.2f}x")


if __name__ == "__main__":
    main()
