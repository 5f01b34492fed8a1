"""The study a run works on: every input checked first (``check_plan``), so that bad input
writes nothing; then created or loaded under the set-up lock (``open_study``), refused if it
holds another problem's trials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from hpsearch import record
from hpsearch.errors import HpsearchError
from hpsearch.search.coordinator import retry_trial
from hpsearch.search.plan import RunPlan
from hpsearch.search.samplers import create_pruner, create_sampler
from hpsearch.search.space import describe, distribution, spec_of
from hpsearch.search.study_file import StudyConfig
from hpsearch.storage.counts import count_finished, distributions_of, load_study
from hpsearch.storage.database import open_storage, wait_for_database
from hpsearch.storage.errors import with_db_retries
from hpsearch.storage.lock import StudyLock
from hpsearch.storage.urls import parse_url

if TYPE_CHECKING:
    import torch

    from hpsearch.problems.splits import Splits
    from hpsearch.storage.artifacts import ArtifactStore


@dataclass(frozen=True)
class Checked:
    """What a plan's settings make, each checked before the storage is touched."""

    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    device: torch.device
    artifacts: ArtifactStore | None


@dataclass(frozen=True)
class OpenedStudy:
    """A study opened for work, and what its worker trains with."""

    study: optuna.Study
    device: torch.device
    artifacts: ArtifactStore | None
    # The data, loaded once; None when the study already holds its trials (nothing to run).
    splits: Splits | None


def check_plan(plan: RunPlan) -> Checked:
    """Build what ``plan``'s settings name (sampler and pruner with their options, device,
    artifact store), touching no storage.

    Raises:
        HpsearchError: any of them refused.
    """
    # Imported here: they import torch and boto3, which hpsearch create does not need.
    from hpsearch.storage.artifacts import open_artifact_store
    from hpsearch.training.devices import resolve_device

    config, settings = plan.config, plan.settings
    return Checked(
        sampler=create_sampler(config, settings),
        pruner=create_pruner(config, settings),
        device=resolve_device(settings.device),
        artifacts=open_artifact_store(settings.artifacts) if settings.artifacts else None,
    )


def open_study(plan: RunPlan) -> OpenedStudy:
    """Check everything that can be checked before the storage is touched (``check_plan``),
    load the data, then open (or create) the study, whose trials may then be run; a study
    that already holds ``settings.trials`` finished trials is only loaded, and no data are.

    Raises:
        HpsearchError: bad input of any kind, or a study of another problem.
    """
    config, settings = plan.config, plan.settings
    checked = check_plan(plan)
    wait_for_database(settings.storage, settings.db_wait)
    if count_finished(settings.storage, settings.study_name) >= settings.trials:
        study = load_study(settings.study_name, settings.storage)
        check_same_study(study, config)
        return OpenedStudy(study, checked.device, checked.artifacts, splits=None)
    try:
        splits = config.problem.load_data(settings.data_dir, **config.data)
    except HpsearchError as error:
        if not str(error).startswith("[data]"):
            raise
        # A loader names the [data] key at fault; the study names the file that set it.
        raise HpsearchError(f"{config.source}: {error}", exit_code=error.exit_code) from None
    storage = open_storage(
        settings.storage,
        heartbeat_interval=settings.heartbeat_interval,
        on_stale_trial=retry_trial,
        pre_ping=False,  # the worker loop retries every call on a dropped connection
    )
    study = with_db_retries(
        lambda: create_or_load(
            storage, config, settings.study_name, checked.sampler, checked.pruner
        ),
        "opening the study",
    )
    return OpenedStudy(study, checked.device, checked.artifacts, splits)


def create_study(plan: RunPlan) -> optuna.Study:
    """Create ``plan``'s study without running a trial (a cluster's set-up step, before its
    workers start, on a node that may have none of their devices); an existing study of the
    same problem is kept."""
    config, settings = plan.config, plan.settings
    sampler, pruner = create_sampler(config, settings), create_pruner(config, settings)
    wait_for_database(settings.storage, settings.db_wait)
    storage = open_storage(settings.storage)
    return with_db_retries(
        lambda: create_or_load(storage, config, settings.study_name, sampler, pruner),
        "creating the study",
    )


def create_or_load(
    storage: optuna.storages.RDBStorage,
    config: StudyConfig,
    study_name: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study, or load it if it exists; refuse a study of another problem.

    Creating it runs under the set-up lock, so workers starting together create one study
    and enqueue the study file's first trials once; a study already set up (the usual case,
    for every worker but the first) is loaded without the lock, which costs a waiter a
    second server connection while it polls.

    Raises:
        HpsearchError: the study exists with another problem, metric or direction.
    """

    def load() -> optuna.Study | None:
        try:
            return optuna.load_study(
                study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:  # no such study yet
            return None

    study = load()
    if study is None or not record.is_set_up(study):
        with StudyLock(parse_url(storage.url), study_name).hold():
            study = load()
            if study is None:  # created and set up here, under the lock
                study = optuna.create_study(
                    storage=storage,
                    study_name=study_name,
                    sampler=sampler,
                    pruner=pruner,
                    directions=config.directions,  # type: ignore[arg-type]
                )
                for params in config.enqueue:
                    study.enqueue_trial(params, skip_if_exists=True)
                record.write_study_definition(
                    study,
                    problem=config.problem.name,
                    metric=config.metric,
                    metrics=config.metrics,
                    constraints=[limit.describe() for limit in config.limits],
                    study_file=config.source,
                    data=config.data,
                )
                return study
    check_same_study(study, config)
    return study


def check_same_study(study: optuna.Study, config: StudyConfig) -> None:
    """Refuse to add ``config``'s trials to a study hpsearch did not set up, or one of another
    problem, objectives, directions, limits or space.

    Raises:
        HpsearchError: naming what the stored study holds.
    """
    if not record.is_set_up(study):
        trials = len(study.get_trials(deepcopy=False))
        raise HpsearchError(
            f"study {study.study_name!r} was not made by hpsearch ({trials} trials, no "
            "hpsearch definition), and hpsearch adds trials only to its own studies: pick "
            "another --study-name, or delete it (optuna delete-study --study-name NAME "
            "--storage URL)"
        )
    attrs = study.user_attrs
    mine = ", ".join(config.metrics)
    # A study of one objective made before several were possible holds only its metric.
    stored_metrics = attrs.get(
        record.METRICS, [attrs[record.METRIC]] if record.METRIC in attrs else config.metrics
    )
    stored = (attrs.get(record.PROBLEM, config.problem.name), ", ".join(stored_metrics))
    if stored != (config.problem.name, mine):
        raise HpsearchError(
            f"study {study.study_name!r} holds {stored[0]} / {stored[1]} trials, not "
            f"{config.problem.name} / {mine}; pick another --study-name"
        )
    directions = [d.name.lower() for d in study.directions]
    if directions != config.directions:
        raise HpsearchError(f"study {study.study_name!r} has directions {', '.join(directions)}")
    limits = [limit.describe() for limit in config.limits]
    stored_limits = attrs.get(record.CONSTRAINTS, [])
    if stored_limits != limits:
        raise HpsearchError(
            f"study {study.study_name!r} has limits {', '.join(stored_limits) or 'none'}, "
            f"not {', '.join(limits) or 'none'}; pick another --study-name"
        )
    check_same_space(study, config)


def check_same_space(study: optuna.Study, config: StudyConfig) -> None:
    """Refuse a space that contradicts the distributions the study's trials were sampled
    from: Optuna cannot sample a categorical whose choices changed, and a changed range
    mixes trials of two spaces (the best may lie outside the new one). A param added to or
    removed from the space is kept apart by name and needs no check.

    Raises:
        HpsearchError: naming the param, its stored and its new distribution.
    """
    for name, stored in sorted(distributions_of(study).items()):
        spec = spec_of(config.space, name)
        if spec is None:
            continue
        mine = distribution(spec)
        if any(old != mine for old in stored):
            old = next(old for old in stored if old != mine)
            raise HpsearchError(
                f"study {study.study_name!r} sampled {name} from {describe(old)}; "
                f"{config.source} searches {describe(mine)}: a study keeps its space (pick "
                "another --study-name, and [[enqueue]] the configurations to carry over)"
            )
