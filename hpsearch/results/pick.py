"""Which trials ``finalize`` retrains: ``--pick "METRIC [where METRIC <= NUMBER and ...]"``
ranks a study's feasible complete trials by one recorded metric, among those that meet the
conditions; ``--trial N`` names one. Of several objectives, this is the choice from the front.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import record
from hpsearch.errors import HpsearchError
from hpsearch.record import curve_index, objective_names
from hpsearch.storage.counts import is_feasible

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(<=|>=|<|>)\s*([-+0-9.eE_,]+)\s*$")


@dataclass(frozen=True)
class Pick:
    """Rank by ``metric`` (``maximize`` or not) among trials that meet every condition."""

    metric: str
    maximize: bool
    conditions: tuple[tuple[str, str, float], ...] = ()

    def describe(self) -> str:
        where = " and ".join(f"{m} {op} {bound:g}" for m, op, bound in self.conditions)
        return self.metric + (f" where {where}" if where else "")

    def admits(self, trial: FrozenTrial) -> bool:
        attrs = trial.user_attrs
        return all(
            name in attrs and COMPARISONS[op](float(attrs[name]), bound)
            for name, op, bound in self.conditions
        )


def parse_pick(rule: str, directions: Mapping[str, str]) -> Pick:
    """``"val_accuracy where params <= 5000 and latency_ms < 1"`` -> a ``Pick``;
    ``directions`` names every metric a rule may use, with its direction.

    Raises:
        HpsearchError: an unknown metric or a condition that does not parse.
    """
    head, *rest = re.split(r"\s+where(?:\s+|$)", rule.strip(), maxsplit=1)
    tail = rest[0] if rest else None  # "" after a bare "where"
    metric = head.strip()
    known = ", ".join(directions)
    if metric not in directions:
        raise HpsearchError(f"--pick {rule!r}: unknown metric {metric!r}; known: {known}")
    conditions = []
    for part in filter(None, (p.strip() for p in tail.split(" and "))) if tail else []:
        match = _CONDITION.match(part)
        if match is None:
            raise HpsearchError(
                f"--pick {rule!r}: cannot read {part!r}; write METRIC <= NUMBER (or <, >, >=)"
            )
        name, op, number = match.groups()
        if name not in directions:
            raise HpsearchError(f"--pick {rule!r}: unknown metric {name!r}; known: {known}")
        try:
            bound = float(number.replace("_", "").replace(",", ""))
        except ValueError:
            raise HpsearchError(f"--pick {rule!r}: {number!r} is not a number") from None
        conditions.append((name, op, bound))
    if tail is not None and not conditions:
        raise HpsearchError(f"--pick {rule!r}: nothing after where")
    return Pick(metric, directions[metric] == "maximize", tuple(conditions))


def study_pick(study: optuna.Study) -> Pick:
    """The default: the study's learning-curve metric (its objective, if it has one)."""
    curve = curve_index(study)
    direction = study.directions[curve]
    return Pick(objective_names(study)[curve], direction == optuna.study.StudyDirection.MAXIMIZE)


def top_configurations(
    study: optuna.Study, k: int, pick: Pick | None = None, trial_number: int | None = None
) -> list[tuple[int, dict[str, Any], float]]:
    """The best ``k`` feasible complete trials by ``pick`` (default: ``study_pick``) with
    distinct configurations, or only trial ``trial_number``: (number, params, value of
    ``pick.metric``).

    Raises:
        HpsearchError: ``trial_number`` is not a complete, feasible trial of hpsearch's.
    """
    pick = pick or study_pick(study)
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
        if record.CONFIG in t.user_attrs and _finite(t.user_attrs.get(pick.metric))
    ]
    if trial_number is not None:
        found = [t for t in trials if t.number == trial_number]
        if not found:
            raise HpsearchError(
                f"study {study.study_name!r} has no complete trial {trial_number} with "
                f"{pick.metric}"
            )
        if not is_feasible(found[0]):
            raise HpsearchError(f"trial {trial_number} breaks the study's limits")
        trials = found
    trials = [t for t in trials if is_feasible(t) and pick.admits(t)]
    trials.sort(key=lambda t: float(t.user_attrs[pick.metric]), reverse=pick.maximize)
    chosen: list[tuple[int, dict[str, Any], float]] = []
    seen: set[str] = set()
    for trial in trials:
        key = json.dumps(trial.user_attrs[record.CONFIG], sort_keys=True)
        if key not in seen:
            seen.add(key)
            value = float(trial.user_attrs[pick.metric])
            chosen.append((trial.number, dict(trial.user_attrs[record.CONFIG]), value))
        if len(chosen) == k:
            break
    return chosen


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
