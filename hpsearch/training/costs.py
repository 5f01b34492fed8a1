"""What a model costs to keep and to run: parameters, size in bytes, FLOPs and latency per
example. Measured on each trial's model before its first epoch (they do not depend on the
weights), and on the finalized model on the device it was scored on."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Cost metric -> its study direction: all are smaller-is-better. train_seconds is known only
# after training; the rest (``model_costs``) before the first epoch.
COST_METRICS = {
    "params": "minimize",
    "size_bytes": "minimize",
    "flops": "minimize",
    "latency_ms": "minimize",
    "train_seconds": "minimize",
}


def model_costs(model: nn.Module, example: torch.Tensor, *, repeats: int = 30) -> dict[str, float]:
    """``model``'s costs on ``example`` (one input row or image, batch dimension included):
    trainable parameters, bytes of its state (parameters and buffers), FLOPs of one forward
    pass per example, and latency: the median of ``repeats`` warm single-example forward
    passes on ``example``'s device, in milliseconds."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                model(example)
            flops = counter.get_total_flops() / len(example)
            latency = _latency_ms(model, example[:1], repeats)
    finally:
        model.train(was_training)
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return {
        "params": float(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "size_bytes": float(size),
        "flops": float(flops),
        "latency_ms": latency,
    }


def _latency_ms(model: nn.Module, example: torch.Tensor, repeats: int) -> float:
    cuda = example.device.type == "cuda"
    for _ in range(3):  # warm: first calls allocate and pick kernels
        model(example)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(example.device)
        start = time.perf_counter()
        model(example)
        if cuda:
            torch.cuda.synchronize(example.device)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000.0, 4)
