"""Running a study: sampler and pruner factories, and the ask-train-tell loop.

``trials`` is the study's total: a rerun resumes and stops once that many trials have
finished (complete or pruned) overall.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpsearch.config import RunSettings, StudyConfig
from hpsearch.data import resolve_data_dir
from hpsearch.errors import HpsearchError
from hpsearch.objective import Objective
from hpsearch.storage import open_storage

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A study whose every trial fails is broken (bad config, out of memory): stop, don't spin.
MAX_CONSECUTIVE_FAILURES = 5


class GridSearchSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` call, which only works inside
    ``study.optimize``; ``run_trials`` stops on ``is_exhausted`` instead."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        pass


def create_sampler(
    name: str, options: dict[str, Any], seed: int, config: StudyConfig
) -> optuna.samplers.BaseSampler:
    """Build a sampler by name; ``options`` come from the study file's ``[sampler]``.

    Raises:
        HpsearchError: an option the sampler does not take, or a space it cannot search.
    """
    from hpsearch.space import grid_search_space

    factories: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    try:
        if name == "grid":
            return GridSearchSampler(grid_search_space(config.space), seed=seed, **options)
        return factories[name](seed=seed, **options)
    except (TypeError, ValueError) as error:
        raise HpsearchError(f"{config.source}: [sampler] {name}: {error}") from None


def create_pruner(
    name: str, options: dict[str, Any], config: StudyConfig
) -> optuna.pruners.BasePruner:
    """Build a pruner by name. Resource-based pruners measure in epochs, up to the space's
    largest epoch count."""
    options = dict(options)
    try:
        if name == "hyperband":
            options.setdefault("max_resource", config.max_epochs)
            return optuna.pruners.HyperbandPruner(**options)
        if name == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if name == "median":
            return optuna.pruners.MedianPruner(**options)
        return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as error:
        raise HpsearchError(f"{config.source}: [pruner] {name}: {error}") from None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise HpsearchError("--device cuda: no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Progress:
    """Counts after one trial ends, for the CLI's live display."""

    target: int
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    started_at: float  # time.monotonic() of this run's start
    trials_this_run: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def study_counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def best_value(study: optuna.Study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:  # no complete trial yet
        return None


def open_study(
    storage: optuna.storages.BaseStorage,
    config: StudyConfig,
    settings: RunSettings,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study, or load it if it exists; refuse a study of another problem."""
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        sampler=sampler,
        pruner=pruner,
        direction=config.direction,  # type: ignore[arg-type]
        load_if_exists=True,
    )
    attrs = study.user_attrs
    if "problem" in attrs and (attrs["problem"], attrs.get("metric")) != (
        config.problem.name,
        config.metric,
    ):
        raise HpsearchError(
            f"study {settings.study_name!r} holds {attrs['problem']} / {attrs.get('metric')} "
            f"trials, not {config.problem.name} / {config.metric}; pick another --study-name"
        )
    if study.direction.name.lower() != config.direction:
        raise HpsearchError(
            f"study {settings.study_name!r} has direction {study.direction.name.lower()}"
        )
    if "problem" not in attrs:
        study.set_user_attr("problem", config.problem.name)
        study.set_user_attr("metric", config.metric)
        study.set_user_attr("study_file", config.source)
        for params in config.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def run_trials(
    study: optuna.Study,
    objective: Objective,
    settings: RunSettings,
    on_progress: Callable[[Progress], None] | None = None,
) -> Progress:
    """Ask, train and tell until the study holds ``settings.trials`` finished trials, the
    timeout passes, or too many trials fail in a row.

    A ``KeyboardInterrupt`` marks the running trial failed before it propagates, so no
    trial is left RUNNING.
    """
    started = time.monotonic()
    trials_this_run = 0
    consecutive_failures = 0

    def progress() -> Progress:
        counts = study_counts(study)
        return Progress(
            target=settings.trials,
            complete=counts[TrialState.COMPLETE],
            pruned=counts[TrialState.PRUNED],
            failed=counts[TrialState.FAIL],
            best_value=best_value(study),
            started_at=started,
            trials_this_run=trials_this_run,
        )

    state = progress()
    if on_progress is not None:
        on_progress(state)
    while state.finished < settings.trials:
        if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
            logger.info("timeout of %ss reached", settings.timeout)
            break
        if isinstance(study.sampler, GridSearchSampler) and study.sampler.is_exhausted(study):
            logger.warning("every grid point has been tried; stopping at %d", state.finished)
            break
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            consecutive_failures = 0
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as error:
            logger.warning("trial %d failed: %s", trial.number, error, exc_info=True)
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
            study.tell(trial, state=TrialState.FAIL)
            consecutive_failures += 1
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise HpsearchError(
                    f"{consecutive_failures} trials failed in a row, last: "
                    f"{type(error).__name__}: {error}"
                ) from None
        else:
            study.tell(trial, value)
            consecutive_failures = 0
        trials_this_run += 1
        state = progress()
        if on_progress is not None:
            on_progress(state)
    return state


def prepare_study(config: StudyConfig, settings: RunSettings) -> tuple[optuna.Study, Objective]:
    """Validate everything, load the data, then open the storage and the study.

    Everything that can be checked is checked before the storage is touched, so bad input
    writes nothing.
    """
    device = resolve_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    # The study file's options belong to its own sampler / pruner, not to one from a flag.
    sampler_options = config.sampler_options if settings.sampler == config.sampler else {}
    pruner_options = config.pruner_options if settings.pruner == config.pruner else {}
    sampler = create_sampler(settings.sampler, sampler_options, settings.seed, config)
    pruner = create_pruner(settings.pruner, pruner_options, config)
    splits = config.problem.load_data(resolve_data_dir(settings.data_dir), **config.data)
    storage = open_storage(settings.storage)
    study = open_study(storage, config, settings, sampler, pruner)
    return study, Objective(config, splits, device, seed=settings.seed)


def run_study(
    config: StudyConfig,
    settings: RunSettings,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[optuna.Study, Progress]:
    """``prepare_study`` then ``run_trials``: the library form of ``hpsearch run``."""
    study, objective = prepare_study(config, settings)
    return study, run_trials(study, objective, settings, on_progress)
