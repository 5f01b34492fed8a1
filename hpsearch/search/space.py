"""A study file's ``[space]``: one ``ParamSpec`` per searched hyperparameter, and how a trial
samples them; the conditional structure lives here.

A width with ``per_layer = true`` is sampled once per existing layer (``channels_0`` ...
``channels_{depth-1}``), so layer ``i`` gets a parameter only if the depth exceeds ``i``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


class ParamSpec(BaseModel):
    """One searched hyperparameter (a ``[space.NAME]`` table): a range or a list of choices."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: Literal["int", "float", "categorical"]
    low: int | float | None = None  # ranges only
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    # TOML gives lists; frozen specs keep tuples (lax mode converts).
    choices: Annotated[tuple[Any, ...], Field(strict=False)] = ()  # categorical only
    # Widths only: sample one value per layer (``channels_0``, ``channels_1``, ...).
    per_layer: bool = False
    # Values the grid sampler visits; defaults to the choices or the stepped integer range.
    grid: Annotated[tuple[Any, ...], Field(strict=False)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.grid == ():
            raise ValueError("grid must be a non-empty list")
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty list of choices")
            return self
        kind = int if self.type == "int" else (int, float)
        bounds = (self.low, self.high) + ((self.step,) if self.step is not None else ())
        if not all(isinstance(value, kind) for value in bounds):
            number = "integers" if self.type == "int" else "numbers"
            raise ValueError(f"low and high (and step, if given) must be {number}")
        assert self.low is not None and self.high is not None
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError("step must be a positive number, and not combined with log")
        return self

    @property
    def values(self) -> list[Any]:
        """The values a study file gives for it: choices, bounds and grid points."""
        bounds = [] if self.type == "categorical" else [self.low, self.high]
        return [*self.choices, *bounds, *(self.grid or [])]


def distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution a trial samples ``spec`` from (and the study then holds)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if spec.type == "categorical":
        return CategoricalDistribution(list(spec.choices))
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return IntDistribution(
            int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1)
        )
    return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def describe(distribution: BaseDistribution) -> str:
    """A distribution in a line: ``1..4``, ``0.0003..0.03 (log)``, ``[16, 32, 64]``."""
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return f"[{', '.join(map(repr, choices))}]"
    low, high = getattr(distribution, "low", "?"), getattr(distribution, "high", "?")
    step = getattr(distribution, "step", None)
    scale = " (log)" if getattr(distribution, "log", False) else ""
    steps = f" step {step:g}" if step not in (None, 1) else ""
    return f"{low:g}..{high:g}{steps}{scale}"


def spec_of(space: Mapping[str, ParamSpec], param: str) -> ParamSpec | None:
    """The spec a trial's param was sampled from: its own, or its per-layer width's
    (``channels_1`` -> ``channels``); None if ``space`` no longer searches it."""
    if param in space:
        return space[param]
    base, _, layer = param.rpartition("_")
    spec = space.get(base)
    return spec if spec is not None and spec.per_layer and layer.isdigit() else None


def _suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    drawn = distribution(spec)
    choices = getattr(drawn, "choices", None)
    if choices is not None:
        return trial.suggest_categorical(name, list(choices))
    low, high, step, log = drawn.low, drawn.high, drawn.step, drawn.log  # type: ignore[attr-defined]
    if spec.type == "int":
        return trial.suggest_int(name, low, high, step=step, log=log)
    return trial.suggest_float(name, low, high, step=step, log=log)


def suggest_params(
    trial: optuna.Trial,
    space: Mapping[str, ParamSpec],
    base: Mapping[str, Any],
    per_layer: Mapping[str, str],
) -> dict[str, Any]:
    """Sample every parameter of ``space`` and return them merged over ``base``.

    ``per_layer`` maps a width to the depth that says how many per-layer widths exist."""
    params = dict(base)
    # Depths first, so per-layer widths know how many layers exist.
    for name, spec in sorted(space.items(), key=lambda item: item[1].per_layer):
        if spec.per_layer:
            params.pop(name, None)
            for layer in range(int(params[per_layer[name]])):
                params[f"{name}_{layer}"] = _suggest(trial, f"{name}_{layer}", spec)
        else:
            params[name] = _suggest(trial, name, spec)
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
            assert spec.low is not None and spec.high is not None
            grid[name] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
        else:
            raise ValueError(f"{name}: give a grid = [...] list to grid-search a {spec.type} range")
    return grid
