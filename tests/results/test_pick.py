from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError
from hpsearch.results.pick import parse_pick, study_pick, top_configurations

DIRECTIONS = {"val_accuracy": "maximize", "params": "minimize", "latency_ms": "minimize"}


def test_a_rule_is_a_metric_and_conditions() -> None:
    pick = parse_pick("val_accuracy where params <= 5,000 and latency_ms < 0.5", DIRECTIONS)
    assert pick.metric == "val_accuracy" and pick.maximize
    assert pick.conditions == (("params", "<=", 5000.0), ("latency_ms", "<", 0.5))
    assert pick.describe() == "val_accuracy where params <= 5000 and latency_ms < 0.5"
    assert not parse_pick("params", DIRECTIONS).maximize


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("speed", "unknown metric 'speed'"),
        ("val_accuracy where size <= 3", "unknown metric 'size'"),
        ("val_accuracy where params = 3", "cannot read 'params = 3'"),
        ("val_accuracy where params <= many", "cannot read"),
    ],
)
def test_a_bad_rule_says_what_it_cannot_read(rule: str, message: str) -> None:
    with pytest.raises(HpsearchError, match=message):
        parse_pick(rule, DIRECTIONS)


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("metric", "val_accuracy")
    study.set_user_attr("metrics", ["val_accuracy", "params"])
    rows = [  # accuracy, params, feasible
        (0.99, 9000, False),
        (0.98, 6000, True),
        (0.97, 4000, True),
        (0.97, 4000, True),  # the same configuration again: retrained once
        (0.95, 1000, True),
    ]
    for i, (accuracy, params, feasible) in enumerate(rows):
        x = 0.2 if i == 3 else i / 10
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=[accuracy, params],
                params={"x": x},
                distributions={"x": FloatDistribution(0, 1)},
                user_attrs={"val_accuracy": accuracy, "params": params, "config": {"x": x}},
                system_attrs={"constraints:params<=": 0.0 if feasible else 0.5},
            )
        )
    return study


def test_the_top_trials_by_a_rule_are_feasible_and_distinct() -> None:
    study = _study()
    assert study_pick(study).metric == "val_accuracy" and study_pick(study).maximize
    # Trial 0 is the most accurate but breaks the study's limit; trial 3 repeats trial 2.
    assert [n for n, _, _ in top_configurations(study, 3)] == [1, 2, 4]
    under = parse_pick("val_accuracy where params <= 5000", DIRECTIONS)
    assert [(n, v) for n, _, v in top_configurations(study, 1, under)] == [(2, 0.97)]
    smallest = parse_pick("params", DIRECTIONS)
    assert [n for n, _, _ in top_configurations(study, 2, smallest)] == [4, 2]
    assert [n for n, _, _ in top_configurations(study, 3, trial_number=4)] == [4]
    with pytest.raises(HpsearchError, match="trial 0 breaks the study's limits"):
        top_configurations(study, 3, trial_number=0)
    with pytest.raises(HpsearchError, match="no complete trial 9"):
        top_configurations(study, 3, trial_number=9)
