from __future__ import annotations

import torch
from torch import nn

from hpsearch.training.costs import model_costs


def test_costs_of_a_linear_layer_are_counted_exactly() -> None:
    model = nn.Linear(10, 5)
    costs = model_costs(model, torch.zeros(4, 10), repeats=5)
    assert costs["params"] == 55  # 10 x 5 weights + 5 biases
    assert costs["size_bytes"] == 55 * 4  # float32
    # one multiply and one add per weight, per example, whatever the batch
    assert costs["flops"] == 2 * 10 * 5
    assert costs["latency_ms"] > 0


def test_buffers_count_in_the_size_not_in_the_params_and_the_mode_is_kept() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model.train()
    costs = model_costs(model, torch.zeros(1, 1, 6, 6), repeats=3)
    params = 2 * 9 + 2 + 2 + 2  # conv weights and biases, batch norm's scale and shift
    assert costs["params"] == params
    # batch norm's running mean and variance (float32) and its batch counter (int64)
    assert costs["size_bytes"] == params * 4 + 2 * 2 * 4 + 8
    # a 3x3 kernel over a 4x4 output: 2 x 9 multiply-adds at each of 16 positions, 2 maps
    assert costs["flops"] == 2 * 9 * 16 * 2
    assert model.training
