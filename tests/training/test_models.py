from __future__ import annotations

import itertools
import math

import pytest
import torch

from hpsearch.training import models
from hpsearch.training.models import Ensemble, ScaledVariance
from hpsearch.training.stack import stack_key

CONV_GRID = list(
    itertools.product([1, 2, 3, 4], [64, 128, 256], ["relu", "tanh", "sigmoid"], [True, False])
)


@pytest.mark.parametrize(("depth", "channels", "activation", "batch_norm"), CONV_GRID)
def test_conv_classifier_grid(depth: int, channels: int, activation: str, batch_norm: bool) -> None:
    params = {
        "n_conv_layers": depth,
        "channels": channels,
        "activation": activation,
        "batch_norm": batch_norm,
        "dropout": 0.1,
    }
    model = models.build_conv_classifier(params)
    model.train()
    out = model(torch.randn(4, 1, 16, 16))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [channels] * depth
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model) == batch_norm
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model) == depth


def test_conv_per_layer_channels_and_report_size() -> None:
    model = models.build_conv_classifier(
        {
            "n_conv_layers": 3,
            "channels_0": 16,
            "channels_1": 32,
            "channels_2": 64,
            "activation": "relu",
        }
    )
    assert [m.out_channels for m in model if isinstance(m, torch.nn.Conv2d)] == [16, 32, 64]
    # The report's network: 3 conv x 64 with batch norm; head sees 64 x 2 x 2.
    report = models.build_conv_classifier(
        {
            "n_conv_layers": 3,
            "channels": 64,
            "activation": "relu",
            "batch_norm": True,
            "dropout": 0.1,
        }
    )
    assert report[-1].in_features == 64 * 2 * 2
    assert models.count_parameters(report) == 640 + 36928 * 2 + 3 * 128 + 2570


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_pooling_at_the_end_keeps_full_resolution_and_the_same_head(depth: int) -> None:
    params = {"n_conv_layers": depth, "channels": 8, "activation": "relu", "dropout": 0.1}
    every = models.build_conv_classifier(params)
    end = models.build_conv_classifier({**params, "pool": "end"})
    pools = [m for m in end if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 1 and pools[0].kernel_size == 2**depth
    assert isinstance(end[-3], torch.nn.MaxPool2d)  # after the last block, before Flatten
    assert end[-1].in_features == every[-1].in_features
    assert models.count_parameters(end) == models.count_parameters(every)
    x = torch.randn(5, 1, 16, 16)
    assert end(x).shape == every(x).shape == (5, 10)


def test_hidden_head_layer() -> None:
    params = {"n_conv_layers": 3, "channels": 8, "activation": "tanh", "dropout": 0.2}
    model = models.build_conv_classifier({**params, "head_units": 32})
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8 * 2 * 2, 32), (32, 10)]
    assert isinstance(model[-3], torch.nn.Tanh) and isinstance(model[-2], torch.nn.Dropout)
    assert model(torch.randn(4, 1, 16, 16)).shape == (4, 10)
    plain = models.build_conv_classifier({**params, "head_units": 0})
    assert [m for m in plain if isinstance(m, torch.nn.Linear)][0].out_features == 10


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("units", [32, 128])
@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
def test_regressors(depth: int, units: int, activation: str) -> None:
    params = {
        "n_hidden_layers": depth,
        "hidden_units": units,
        "activation": activation,
        "dropout": 0.2,
    }
    x = torch.randn(5, 4)
    mlp = models.build_mlp_regressor(params, (4,))
    assert mlp(x).shape == (5,)
    gaussian = models.build_gaussian_regressor(params, (4,))
    out = gaussian(x)
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == depth + 1


def test_bad_params_raise() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        models.build_conv_classifier({"n_conv_layers": 1, "channels": 8, "activation": "nope"})
    with pytest.raises(ValueError, match=">= 1 layer"):
        models.build_conv_classifier({"n_conv_layers": 0, "channels": 8, "activation": "relu"})
    with pytest.raises(ValueError, match="unknown pool"):
        models.build_conv_classifier(
            {"n_conv_layers": 1, "channels": 8, "activation": "relu", "pool": "middle"}
        )


def test_builders_are_deterministic_under_seed() -> None:
    params = {"n_hidden_layers": 2, "hidden_units": 8, "activation": "relu"}
    torch.manual_seed(3)
    a = models.build_mlp_regressor(params, (4,))
    torch.manual_seed(3)
    b = models.build_mlp_regressor(params, (4,))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


class _Constant(torch.nn.Module):
    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row.expand(len(x), -1)


def test_ensembles_average_probabilities_values_and_mixtures() -> None:
    x = torch.zeros(3, 4)
    members = [_Constant([0.0, 0.0]), _Constant([math.log(3.0), 0.0])]
    log_probs = Ensemble(members, models.mean_softmax)(x)
    # Members say (0.5, 0.5) and (0.75, 0.25): the ensemble says (0.625, 0.375).
    assert torch.allclose(log_probs.exp(), torch.tensor([0.625, 0.375]).expand(3, -1))
    mean = Ensemble([_Constant([1.0]), _Constant([3.0])], models.mean_prediction)(x)
    assert torch.allclose(mean, torch.full((3, 1), 2.0))
    # Two unit-variance Gaussians at 0 and 2: the mixture has mean 1 and variance 1 + 1.
    members = [_Constant([0.0, 0.0]), _Constant([2.0, 0.0])]
    mixture = Ensemble(members, models.gaussian_mixture)(x)
    assert torch.allclose(mixture, torch.tensor([1.0, math.log(2.0)]).expand(3, -1))
    scaled = ScaledVariance(_Constant([1.0, 0.0]), 2.0)(x)
    assert torch.allclose(scaled, torch.tensor([1.0, math.log(4.0)]).expand(3, -1))
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([], models.mean_prediction)


def test_periodic_embeddings_widen_the_first_layer_and_train_alone() -> None:
    params = {
        "n_hidden_layers": 1,
        "hidden_units": 8,
        "activation": "relu",
        "num_embedding": "periodic",
        "embedding_dim": 4,
        "frequency_scale": 0.5,
    }
    x = torch.randn(6, 3)
    for build in (models.build_mlp_regressor, models.build_gaussian_regressor):
        model = build(params, (3,))
        first = next(
            m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features != 96
        )  # fmt: skip  (96: the shared map of 48 frequencies)
        assert first.in_features == 3 * 4
        assert torch.isfinite(model(x)).all()
        assert stack_key(model) is None  # no grouped form: a trial group trains it alone
    classifier = models.build_mlp_classifier({**params, "n_classes": 3}, (3,))
    assert classifier(x).shape == (6, 3)
    with pytest.raises(ValueError, match="unknown num_embedding"):
        models.build_mlp_regressor({**params, "num_embedding": "splines"}, (3,))
