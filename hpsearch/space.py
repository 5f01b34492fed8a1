"""Turn a study file's ``[space]`` into sampled params; the conditional structure lives here.

A width with ``per_layer = true`` is sampled once per existing layer (``channels_0`` ...
``channels_{depth-1}``), so layer ``i`` gets a parameter only if the depth exceeds ``i``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from hpsearch.config import ParamSpec
from hpsearch.models import PER_LAYER_WIDTHS


def _suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(name, list(spec.choices))
    if spec.type == "int":
        return trial.suggest_int(
            name,
            int(spec.low),
            int(spec.high),
            step=int(spec.step or 1),
            log=spec.log,
        )
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def suggest_params(
    trial: optuna.Trial, space: Mapping[str, ParamSpec], base: Mapping[str, Any]
) -> dict[str, Any]:
    """Sample every parameter of ``space`` and return them merged over ``base``."""
    params = dict(base)
    # Depths first, so per-layer widths know how many layers exist.
    ordered = sorted(space.values(), key=lambda spec: spec.per_layer)
    for spec in ordered:
        if spec.per_layer:
            depth = int(params[PER_LAYER_WIDTHS[spec.name]])
            params.pop(spec.name, None)
            for layer in range(depth):
                params[f"{spec.name}_{layer}"] = _suggest(trial, f"{spec.name}_{layer}", spec)
        else:
            params[spec.name] = _suggest(trial, spec.name, spec)
    return params


def grid_search_space(space: Mapping[str, ParamSpec]) -> dict[str, list[Any]]:
    """The grid sampler's search space: each parameter's ``grid``, its choices, or its
    stepped integer range.

    Raises:
        ValueError: a parameter has no finite set of values, or is per-layer.
    """
    grid: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if spec.per_layer:
            raise ValueError(f"{name}: per_layer widths cannot be grid-searched")
        if spec.grid is not None:
            grid[name] = list(spec.grid)
        elif spec.type == "categorical":
            grid[name] = list(spec.choices)
        elif spec.type == "int" and not spec.log:
            grid[name] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
        else:
            raise ValueError(f"{name}: give a grid = [...] list to grid-search a {spec.type} range")
    return grid
