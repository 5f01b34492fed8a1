"""What ``hpsearch run`` resolves once and every worker runs: a ``RunPlan``, a study's validated
definition and every setting.

``resolve_plan`` is the one way in, from a shipped study's name, a study file, a study as a
dict or a user's own data, with the overrides of the command line or the Python API. Local
workers receive the plan itself (it pickles: a problem travels by its registry name);
workers on other machines, started with the same command, resolve the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.search.study_file import (
    StudyConfig,
    find_study_file,
    load_study_file,
    study_for_table,
    study_from_dict,
)
from hpsearch.settings import Settings, resolve_settings


@dataclass(frozen=True)
class RunPlan:
    """A study as resolved for a run: its definition (``config``) and every setting."""

    config: StudyConfig
    settings: Settings

    def for_worker(self, **settings: Any) -> RunPlan:
        """The plan of one of the run's workers: the same study, with ``settings`` its own
        (its device, its threads)."""
        return replace(self, settings=replace(self.settings, **settings))


def resolve_plan(
    study: str | Path | dict[str, Any] | None = None,
    *,
    data: str | Path | None = None,
    target: str | None = None,
    task: str | None = None,
    metrics: list[str] | None = None,
    **flags: Any,
) -> RunPlan:
    """The plan of ``hpsearch run``: ``resolve_study``'s study with the settings of
    ``flags`` (``settings.resolve_settings``: defaults < study file < environment < flags).

    Raises:
        HpsearchError: bad input of any kind, in one line.
    """
    config = resolve_study(study, data=data, target=target, task=task, metrics=metrics)
    return RunPlan(config, resolve_settings(config, **flags))


def resolve_study(
    study: str | Path | dict[str, Any] | None = None,
    *,
    data: str | Path | None = None,
    target: str | None = None,
    task: str | None = None,
    metrics: list[str] | None = None,
) -> StudyConfig:
    """A study's validated definition: ``study`` (a shipped study's name, a study file's
    path, or a study file's contents as a dict) with ``data`` (a table's or an image
    folder's path) in place of its own, or, without ``study``, the shipped study of the
    data's task (``study_file.study_for_table``); ``metrics`` its objectives.

    Raises:
        HpsearchError: bad input of any kind, in one line.
    """
    if study is None and data is None:
        raise HpsearchError(
            "give a study (usps, house-prices, ..., a .toml file) or your own data "
            "(a table or an image folder: --data)"
        )
    if data is None and (target is not None or task is not None):
        raise HpsearchError("--target and --task go with your own data (--data)")
    if study is not None and task is not None:
        raise HpsearchError("--task goes with --data and no study: the study names its task")
    if study is None:
        return study_for_table(str(data), target, task, metrics=metrics)
    table = _table(data, target)
    if isinstance(study, dict):
        return study_from_dict(
            study, source="the study dict", default_name="study", data=table, metrics=metrics
        )
    return load_study_file(find_study_file(str(study)), data=table, metrics=metrics)


def _table(data: str | Path | None, target: str | None) -> dict[str, Any]:
    """The ``[data]`` keys that name a table given in place of the study's own."""
    if data is None:
        return {}
    table = {"path": str(Path(data).expanduser().resolve()), "target": target}
    return {key: value for key, value in table.items() if value is not None}
