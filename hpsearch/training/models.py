"""Model builders: pure functions ``(params, input_shape) -> nn.Module``, each beside the
hyperparameters it reads, and the ways an ensemble combines its members' outputs.

Nothing here knows about Optuna or training, so a study's best model is rebuilt from its
stored params (``build_conv_classifier(trial.user_attrs["config"], (1, 16, 16))``) and tests
use literal dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

import torch
from pydantic import AfterValidator, Field
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}"
        ) from None


Pool = Literal["every", "end"]  # a max-pool in every block, or one at the end
POOLING: tuple[str, ...] = get_args(Pool)


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be odd (the map keeps its size)")
    return value


def layer_widths(params: Mapping[str, Any], depth_key: str, width_key: str) -> list[int]:
    """Width of each layer: ``{width_key}_{i}`` where given, else the shared ``width_key``."""
    depth = int(params[depth_key])
    return [int(params.get(f"{width_key}_{i}", params.get(width_key, 0))) for i in range(depth)]


def build_conv_classifier(
    params: Mapping[str, Any], input_shape: Sequence[int] = (1, 16, 16), n_classes: int = 10
) -> nn.Sequential:
    """Conv blocks (3x3 conv, optional batch norm, activation, 2x2 max-pool, dropout), then a
    linear head to ``n_classes`` logits, for square ``(C, H, W)`` images.

    Params: ``n_conv_layers`` (1-4 for 16x16 inputs), ``channels`` or ``channels_{i}``,
    ``activation``, ``batch_norm``, ``dropout``; optional ``pool`` (``"every"``, the lab report's
    2x2 max-pool in each block, or ``"end"``: the blocks keep full resolution and one max-pool
    after the last block shrinks the map to the same size, so the head is unchanged) and
    ``head_units`` (0, the lab report's linear head, or the width of one hidden layer before it,
    with the blocks' activation and dropout).
    """
    widths = layer_widths(params, "n_conv_layers", "channels")
    if not widths or min(widths) < 1:
        raise ValueError(f"conv classifier needs >= 1 layer of >= 1 channel, got {widths}")
    pool = str(params.get("pool", "every"))
    if pool not in POOLING:
        raise ValueError(f"unknown pool {pool!r}; choose from {', '.join(POOLING)}")
    kernel = int(params.get("kernel_size", 3))
    activation = str(params["activation"])
    dropout = float(params.get("dropout", 0.0))
    layers: list[nn.Module] = []
    channels, image_size = int(input_shape[0]), int(input_shape[-1])
    size = image_size
    for width in widths:
        layers.append(nn.Conv2d(channels, width, kernel, padding=kernel // 2))
        if params.get("batch_norm", True):
            layers.append(nn.BatchNorm2d(width))
        layers.append(make_activation(activation))
        if size >= 2:  # a 16x16 input halves to 8, 4, 2, 1 over four blocks
            if pool == "every":
                layers.append(nn.MaxPool2d(2))
            size //= 2
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        channels = width
    if pool == "end" and size < image_size:
        layers.append(nn.MaxPool2d(image_size // size))
    layers.append(nn.Flatten())
    features = channels * size * size
    head_units = int(params.get("head_units", 0))
    if head_units > 0:
        layers += [nn.Linear(features, head_units), make_activation(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = head_units
    layers.append(nn.Linear(features, n_classes))
    return nn.Sequential(*layers)  # (B, C, H, W) -> (B, n_classes)


NumEmbedding = Literal["none", "periodic"]
NUM_EMBEDDINGS: tuple[str, ...] = get_args(NumEmbedding)


class PeriodicInputs(nn.Module):
    """Each input feature as ``d`` values of periodic functions of it with learned
    frequencies (Gorishniy et al., NeurIPS 2022, their "lite" form: one linear map shared by
    the features), flattened: ``(B, F) -> (B, F * d)``. On a one-hot or was-missing column
    it is a learned code of its two values. The layers are rtdl_num_embeddings'."""

    def __init__(self, n_features: int, d_embedding: int, frequency_scale: float) -> None:
        super().__init__()
        from rtdl_num_embeddings import PeriodicEmbeddings

        self.embed = PeriodicEmbeddings(
            n_features, d_embedding, frequency_init_scale=frequency_scale, lite=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).flatten(-2)


def _mlp_trunk(params: Mapping[str, Any], n_features: int) -> tuple[list[nn.Module], int]:
    widths = layer_widths(params, "n_hidden_layers", "hidden_units")
    if not widths or min(widths) < 1:
        raise ValueError(f"MLP needs >= 1 hidden layer of >= 1 unit, got {widths}")
    layers: list[nn.Module] = []
    width_in = n_features
    embedding = str(params.get("num_embedding", "none"))
    if embedding not in NUM_EMBEDDINGS:
        raise ValueError(f"unknown num_embedding {embedding!r}; choose from {NUM_EMBEDDINGS}")
    if embedding == "periodic":
        d = int(params.get("embedding_dim", 16))
        layers.append(PeriodicInputs(n_features, d, float(params.get("frequency_scale", 0.1))))
        width_in = n_features * d
    for width in widths:
        layers += [nn.Linear(width_in, width), make_activation(str(params["activation"]))]
        if params.get("dropout", 0.0) > 0:
            layers.append(nn.Dropout(float(params["dropout"])))
        width_in = width
    return layers, width_in


class MLPRegressor(nn.Module):
    """MLP predicting one value per row: ``(B, F) -> (B,)``."""

    def __init__(self, params: Mapping[str, Any], n_features: int) -> None:
        super().__init__()
        layers, width = _mlp_trunk(params, n_features)
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class GaussianRegressor(nn.Module):
    """MLP trunk with two heads: ``(B, F) -> (B, 2)`` holding mean and log variance."""

    def __init__(self, params: Mapping[str, Any], n_features: int) -> None:
        super().__init__()
        layers, width = _mlp_trunk(params, n_features)
        self.trunk = nn.Sequential(*layers)
        self.mean = nn.Linear(width, 1)
        self.log_var = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(x)
        return torch.cat([self.mean(hidden), self.log_var(hidden)], dim=-1)


def build_mlp_regressor(params: Mapping[str, Any], input_shape: Sequence[int]) -> MLPRegressor:
    """``(B, F) -> (B,)``. Params: ``n_hidden_layers``, ``hidden_units`` or
    ``hidden_units_{i}``, ``activation``, ``dropout``; optional ``num_embedding`` (``"none"``,
    or ``"periodic"``: ``PeriodicInputs`` of ``embedding_dim`` values per feature, initial
    frequency scale ``frequency_scale``)."""
    return MLPRegressor(params, int(input_shape[0]))


def build_mlp_classifier(params: Mapping[str, Any], input_shape: Sequence[int]) -> nn.Module:
    """``(B, F) -> (B, n_classes)`` logits. Params: those of :func:`build_mlp_regressor` and
    ``n_classes`` (from the data, not searched)."""
    layers, width = _mlp_trunk(params, int(input_shape[0]))
    return nn.Sequential(*layers, nn.Linear(width, int(params["n_classes"])))


def build_gaussian_regressor(
    params: Mapping[str, Any], input_shape: Sequence[int]
) -> GaussianRegressor:
    """``(B, F) -> (B, 2)``, mean and log variance; same params as :func:`build_mlp_regressor`."""
    return GaussianRegressor(params, int(input_shape[0]))


# Each builder's hyperparameters and their valid values (pydantic types, which the study-file
# check applies to every fixed value, range bound and choice).
Positive = Annotated[int, Field(ge=1)]
Dropout = Annotated[float, Field(ge=0.0, le=0.95)]
Activation: Any = Literal[tuple(ACTIVATIONS)]
CONV_HYPERPARAMETERS: dict[str, Any] = {
    "n_conv_layers": Annotated[int, Field(ge=1, le=4)],  # a 16x16 map halves four times
    "channels": Positive,
    "activation": Activation,
    "batch_norm": bool,
    "dropout": Dropout,
    "kernel_size": Annotated[int, Field(ge=1, le=15), AfterValidator(_odd)],
    "pool": Pool,
    "head_units": Annotated[int, Field(ge=0)],  # 0: a linear head
}
MLP_HYPERPARAMETERS: dict[str, Any] = {
    "n_hidden_layers": Positive,
    "hidden_units": Positive,
    "activation": Activation,
    "dropout": Dropout,
    "num_embedding": NumEmbedding,
    "embedding_dim": Annotated[int, Field(ge=1, le=256)],
    "frequency_scale": Annotated[float, Field(gt=0.0)],
}
# What sets the layers (a trial group's members share these; dropout is a per-member mask),
# each builder's part of a problem's ``group_params``.
CONV_GROUP_PARAMS = frozenset(
    {"n_conv_layers", "channels", "batch_norm", "kernel_size", "pool", "head_units", "activation"}
)
MLP_GROUP_PARAMS = frozenset(
    {"n_hidden_layers", "hidden_units", "activation", "num_embedding", "embedding_dim"}
)
# Width key -> the depth key that says how many per-layer widths (``channels_0``, ...) exist.
CONV_PER_LAYER = {"channels": "n_conv_layers"}
MLP_PER_LAYER = {"hidden_units": "n_hidden_layers"}


def mean_softmax(outputs: torch.Tensor) -> torch.Tensor:
    """Classifiers' ensemble: the mean of the members' softmax probabilities, as
    log-probabilities (the argmax is the ensemble's class, cross-entropy its log loss).
    ``(M, B, C) -> (B, C)``."""
    return outputs.softmax(dim=-1).mean(dim=0).clamp_min(1e-12).log()


def mean_prediction(outputs: torch.Tensor) -> torch.Tensor:
    """Regressors' ensemble: the mean prediction. ``(M, B, ...) -> (B, ...)``."""
    return outputs.mean(dim=0)


def gaussian_mixture(outputs: torch.Tensor) -> torch.Tensor:
    """Gaussian regressors' ensemble: the equal-weight mixture's mean and log variance (the
    mean of the members' variances plus the spread of their means). ``(M, B, 2) -> (B, 2)``."""
    means, variances = outputs[..., 0], outputs[..., 1].exp()
    mean = means.mean(dim=0)
    variance = (variances + means**2).mean(dim=0) - mean**2
    return torch.stack([mean, variance.clamp_min(1e-12).log()], dim=-1)


class Ensemble(nn.Module):
    """Several trained models whose outputs ``combine`` merges into one output of the
    members' format, so every metric reads the ensemble as one model."""

    def __init__(
        self, members: Sequence[nn.Module], combine: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(torch.stack([member(x) for member in self.members]))


class ScaledVariance(nn.Module):
    """A Gaussian regressor whose standard deviation is multiplied by ``scale`` (a
    calibration factor fitted on validation data)."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model = model
        self.log_var_shift = 2.0 * math.log(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.model(x)
        return torch.stack([output[:, 0], output[:, 1] + self.log_var_shift], dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
