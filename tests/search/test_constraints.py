from __future__ import annotations

import pytest

from hpsearch.search.constraints import Limit, broken, limits_of


def test_a_violation_is_relative_to_its_bound() -> None:
    upper = Limit("params", 20_000, upper=True)
    assert upper.violation(30_000) == pytest.approx(0.5)
    assert upper.violation(20_000) == 0.0  # on the bound is feasible (Optuna: <= 0)
    assert upper.violation(10_000) == pytest.approx(-0.5)
    lower = Limit("val_accuracy", 0.9, upper=False)
    assert lower.violation(0.45) == pytest.approx(0.5)
    assert lower.violation(0.99) < 0


def test_both_bounds_make_two_limits_with_their_own_keys() -> None:
    limits = limits_of({"params": (1000.0, 5000.0), "latency_ms": (None, 0.5)})
    assert [limit.key for limit in limits] == ["params>=", "params<=", "latency_ms<="]
    assert [limit.describe() for limit in limits] == [
        "params >= 1000",
        "params <= 5000",
        "latency_ms <= 0.5",
    ]


def test_broken_names_only_the_limits_broken_by_known_values() -> None:
    limits = limits_of({"params": (None, 5000.0), "val_accuracy": (0.9, None)})
    assert broken(limits, {"params": 6000.0}) == ["params 6,000 > 5,000"]
    assert broken(limits, {"params": 4000.0}) == []
    assert broken(limits, {"params": 4000.0, "val_accuracy": 0.5}) == ["val_accuracy 0.5 < 0.9"]
