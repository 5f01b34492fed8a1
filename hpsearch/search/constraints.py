"""Hard limits of a study (``[constraints]`` in its study file): bounds on any recorded metric,
e.g. ``params = { max = 20000 }``. Each limit becomes one of Optuna's constraint values
(``Trial.set_constraint``), which its samplers read to learn the feasible region and
``Study.best_trial`` / ``best_trials`` to choose only feasible trials."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """``metric`` must be ``<= bound`` (``upper``) or ``>= bound``."""

    metric: str
    bound: float
    upper: bool

    @property
    def key(self) -> str:
        """The constraint's name in Optuna (``params<=``): one metric may have two limits."""
        return f"{self.metric}{'<=' if self.upper else '>='}"

    def describe(self) -> str:
        return f"{self.metric} {'<=' if self.upper else '>='} {self.bound:g}"

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when ``value`` keeps the limit, else how far past
        it, relative to the bound (so limits on metrics of other scales weigh alike)."""
        over = value - self.bound if self.upper else self.bound - value
        return over / max(abs(self.bound), 1e-12)


def limits_of(bounds: Mapping[str, tuple[float | None, float | None]]) -> tuple[Limit, ...]:
    """``{metric: (min, max)}`` (either may be None) -> the limits, one per bound."""
    limits = []
    for metric, (low, high) in bounds.items():
        if low is not None:
            limits.append(Limit(metric, low, upper=False))
        if high is not None:
            limits.append(Limit(metric, high, upper=True))
    return tuple(limits)


def broken(limits: Sequence[Limit], values: Mapping[str, float]) -> list[str]:
    """The limits that ``values`` break, described (``params 25,000 > 20,000``)."""
    return [
        f"{limit.metric} {values[limit.metric]:,.6g} {'>' if limit.upper else '<'} "
        f"{limit.bound:,.6g}"
        for limit in limits
        if limit.metric in values and limit.violation(values[limit.metric]) > 0
    ]
