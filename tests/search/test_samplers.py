"""Samplers and pruners (hpsearch.search.samplers): seeded per trial, options from the study
file, refused with one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError
from hpsearch.search.samplers import create_pruner, create_sampler
from hpsearch.search.study_file import load_study_file
from hpsearch.settings import resolve_settings

USPS = Path(__file__).parents[2] / "studies" / "usps.toml"


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes"])
def test_workers_samplers_draw_by_trial_number(tiny_usps_file: Path, sampler: str) -> None:
    """Two workers' samplers, built from the same study file and seed, draw the same params
    for the same trial number and different params for different numbers."""
    config = load_study_file(tiny_usps_file)
    settings = resolve_settings(config, workers=1, sampler=sampler)
    first: dict[int, list[float]] = {}
    for worker in range(2):
        study = optuna.create_study(sampler=create_sampler(config, settings))
        lrs = []
        for _ in range(4):
            trial = study.ask()
            lrs.append(trial.suggest_float("lr", 1e-4, 1e-1, log=True))
            study.tell(trial, state=TrialState.FAIL)
        first[worker] = lrs
    assert first[0] == first[1]  # the same number, the same draw, in any worker
    assert len(set(first[0])) == 4  # different numbers, different draws


@pytest.mark.parametrize("pruner", ["hyperband", "median", "successive-halving", "none"])
def test_pruners(tiny_usps_file: Path, pruner: str) -> None:
    config = load_study_file(tiny_usps_file)
    built = create_pruner(config, resolve_settings(config, workers=1, pruner=pruner))
    expected = {
        "hyperband": optuna.pruners.HyperbandPruner,
        "median": optuna.pruners.MedianPruner,
        "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
        "none": optuna.pruners.NopPruner,
    }[pruner]
    assert isinstance(built, expected)


def test_bad_sampler_option_names_the_file(tiny_usps_file: Path) -> None:
    config = load_study_file(tiny_usps_file)
    settings = resolve_settings(config)
    with pytest.raises(HpsearchError, match=r"tiny-usps.toml: \[sampler\] tpe"):
        create_sampler(dataclasses.replace(config, sampler_options={"n_startup": 3}), settings)


def test_grid_over_a_space_it_cannot_search_is_refused() -> None:
    # --sampler grid over a file whose space has a float range: refused before anything runs.
    config = load_study_file(USPS)
    with pytest.raises(HpsearchError, match="--sampler grid"):
        create_sampler(config, resolve_settings(config, environ={}, sampler="grid"))
