"""The sampler and pruner of a study: Optuna's own, chosen by name, each trial's random draws
seeded from the study seed and the trial's number (``TrialSeededSampler``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError
from hpsearch.search.pareto_pruning import DominatedPruner
from hpsearch.search.space import grid_search_space
from hpsearch.search.study_file import StudyConfig
from hpsearch.settings import PRUNERS, SAMPLERS, Settings, either, takes


def groups_trials(sampler: str) -> bool:
    """Whether the trials of ``sampler`` may train in groups (``settings.Choice.groups``)."""
    return SAMPLERS[sampler].groups


class GridSearchSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` call, which only works inside
    ``study.optimize``; the worker loop stops on ``is_exhausted`` instead."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        pass


def trial_sampler_seed(study_seed: int, trial_number: int) -> int:
    """The seed of trial ``trial_number``'s random draws: mixed, so that nearby study
    seeds do not share trials' streams."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler whose random draws for trial n derive from the study seed and n.

    Every worker seeds its sampler from the same study file, so plain seeding repeats the
    same random (start-up) draws in each worker. Here each trial gets a fresh sampler
    seeded by ``trial_sampler_seed``: trial n's random draws are the same whichever worker
    runs it and however many there are. (Model-based draws also depend on which trials
    had finished when n started.) Optuna's samplers keep their learning in the study, not
    in the sampler object, so a fresh one per trial loses nothing but caches.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self.make = make
        self.seed = seed
        self.sampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler = self.make(trial_sampler_seed(self.seed, trial.number))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def create_sampler(config: StudyConfig, settings: Settings) -> optuna.samplers.BaseSampler:
    """The sampler of ``settings.sampler``, seeded per trial from ``settings.seed``
    (``TrialSeededSampler``); the study file's ``[sampler]`` options apply when it names the
    same sampler. Grid and QMC keep the study seed: it fixes the order of their points,
    and they take point n for trial n already.

    Raises:
        HpsearchError: an option the sampler does not take, or a space it cannot search.
    """
    name = settings.sampler
    objectives = len(config.metrics)
    if not takes(SAMPLERS, name, objectives):
        raise HpsearchError(
            f"sampler {name} optimizes one objective; {config.name} has "
            f"{objectives} ({', '.join(config.metrics)}): choose "
            f"{either([s for s in SAMPLERS if takes(SAMPLERS, s, objectives)])}"
        )
    if name == "grid" and config.sampler != "grid":  # --sampler grid over a file's space
        try:
            grid_search_space(config.space)
        except ValueError as error:
            raise HpsearchError(f"--sampler grid: {error}") from None
    options = config.sampler_options if name == config.sampler else {}
    factory: Callable[..., optuna.samplers.BaseSampler] = getattr(
        optuna.samplers, SAMPLERS[name].optuna_class
    )

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if name == "grid":
            return GridSearchSampler(grid_search_space(config.space), seed=seed, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factory(seed=seed, **options)

    try:
        if name in ("grid", "qmc"):
            return make(settings.seed)
        return TrialSeededSampler(make, settings.seed)
    except (TypeError, ValueError) as error:
        raise HpsearchError(f"{config.source}: [sampler] {name}: {error}") from None


def create_pruner(config: StudyConfig, settings: Settings) -> optuna.pruners.BasePruner:
    """The pruner of ``settings.pruner``, with the study file's ``[pruner]`` options when it
    names the same one. Resource-based pruners measure in epochs, up to the space's largest
    epoch count.

    Raises:
        HpsearchError: an option the pruner does not take.
    """
    name = settings.pruner
    options = dict(config.pruner_options if name == config.pruner else {})
    objectives = len(config.metrics)
    if not takes(PRUNERS, name, objectives):
        fits = either([p for p in PRUNERS if takes(PRUNERS, p, objectives)])
        if objectives > 1:
            raise HpsearchError(
                f"pruner {name} prunes on one objective; {config.name} has {objectives}: "
                f"choose {fits}"
            )
        raise HpsearchError(
            f"pruner {name} prunes studies of several objectives; {config.name} has one: "
            f"choose {fits}"
        )
    if name == "hyperband":
        options.setdefault("max_resource", config.max_epochs)
    if name == "none":  # it takes no options: the rest of a [pruner] table waits unused
        options = {}
    try:
        if name == "dominated":
            return DominatedPruner(config.metrics, config.directions, config.metric, **options)
        pruner: optuna.pruners.BasePruner = getattr(optuna.pruners, PRUNERS[name].optuna_class)(
            **options
        )
        return pruner
    except (TypeError, ValueError) as error:
        raise HpsearchError(f"{config.source}: [pruner] {name}: {error}") from None
