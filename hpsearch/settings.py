"""Settings of every command, resolved in one function and one order: built-in defaults <
study file < environment < command-line flags.

This module is the only reader of the ``HPSEARCH_*`` settings variables (the database password,
a secret rather than a setting, is read where the storage URL is built: ``storage.urls``).
It imports nothing heavy, so commands that do not train start fast.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Protocol

from hpsearch.errors import HpsearchError


@dataclass(frozen=True)
class Choice:
    """A sampler or pruner a study may name: the Optuna class that implements it (in
    ``optuna.samplers`` or ``optuna.pruners``; "" for hpsearch's own), what it does (one line,
    for ``--help`` and the docs), which studies it takes, and (a sampler) whether its trials
    may train in groups."""

    optuna_class: str
    summary: str
    objectives: Literal["one", "several", "any"] = "any"
    # Grid and QMC assign trial n its point n, which a group's shared params would override;
    # CMA-ES keeps one search distribution over every param, which fixed params break.
    groups: bool = True


# Every sampler and pruner, in one table: validation, ``run --help``, the docs' list
# (docs/study-files.md#samplers-and-pruners, checked by a test) and search.samplers, which
# builds each, read it.
SAMPLERS = {
    "tpe": Choice("TPESampler", "tree-structured Parzen estimators; the default"),
    "random": Choice("RandomSampler", "independent uniform draws"),
    "gp": Choice("GPSampler", "Gaussian-process Bayesian optimization"),
    "cmaes": Choice("CmaEsSampler", "CMA evolution strategy", "one", groups=False),
    "qmc": Choice("QMCSampler", "quasi-random (Sobol) points", groups=False),
    "grid": Choice("GridSampler", "every point of the space's grid, in order", groups=False),
    "nsga2": Choice("NSGAIISampler", "a genetic algorithm for several objectives"),
    "nsga3": Choice("NSGAIIISampler", "NSGA-II with reference points, for many objectives"),
}
PRUNERS = {
    "hyperband": Choice(
        "HyperbandPruner", "Hyperband over epochs; the default of one objective", "one"
    ),
    "median": Choice("MedianPruner", "below the median of earlier trials at an epoch", "one"),
    "successive-halving": Choice(
        "SuccessiveHalvingPruner", "successive halving over epochs", "one"
    ),
    "dominated": Choice(
        "", "beaten at an epoch by most trials no costlier; the default of several", "several"
    ),
    "none": Choice("NopPruner", "no pruning: every trial trains all its epochs"),
}
DEVICES = ("auto", "cpu", "cuda")


def takes(choices: Mapping[str, Choice], name: str, objectives: int) -> bool:
    """Whether the sampler or pruner ``name`` of ``choices`` takes a study of ``objectives``."""
    kind = choices[name].objectives
    return kind == "any" or (kind == "one") == (objectives == 1)


def either(names: Sequence[str]) -> str:
    """``a, b or c``."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# Setting -> the environment variable that sets it (below a flag, above the study file).
ENVIRONMENT = {
    "storage": "HPSEARCH_STORAGE",
    "device": "HPSEARCH_DEVICE",
    "data_dir": "HPSEARCH_DATA_DIR",
    "workers": "HPSEARCH_WORKERS",
    "artifacts": "HPSEARCH_ARTIFACTS",
    "group_size": "HPSEARCH_GROUP_SIZE",
    "db_wait": "HPSEARCH_DB_WAIT",
}


class StudyDefaults(Protocol):
    """What a study file sets (``search.study_file.StudyConfig`` has these)."""

    @property
    def name(self) -> str: ...
    @property
    def sampler(self) -> str: ...
    @property
    def pruner(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def trials(self) -> int: ...


@dataclass(frozen=True)
class Settings:
    """Every setting of ``hpsearch run`` and ``hpsearch finalize``, with its built-in default."""

    storage: str = "sqlite:///hpsearch.db"
    device: str = "auto"
    data_dir: str | None = None  # None: the data sets packaged with hpsearch
    # run; the study file sets study_name, sampler, pruner, seed and trials.
    study_name: str = ""
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int = 0
    trials: int = 30
    timeout: float | None = None
    threads: int | None = None  # None: cores / workers
    workers: int | None = None  # None: one per CPU core, or per GPU memory (devices.auto_workers)
    # The artifact store of checkpoints and finalized models: a folder or s3://bucket/prefix;
    # "" turns checkpoints off (and finalize then writes --out only).
    artifacts: str = "hpsearch-artifacts"
    heartbeat_interval: int = 10
    # Seconds run, create, finalize and the dashboard wait for a database not up yet (a pod
    # started before its server, a server restarting); the reading commands do not wait.
    db_wait: float = 300.0
    # Trials trained as one stack of models (training.stack); 1: one at a time; None: by
    # device (training.devices.DEFAULT_GROUP_SIZE).
    group_size: int | None = None
    # finalize
    top_k: int = 3
    seeds: int = 3
    ensemble: bool = True
    out: str | None = None  # None: ./final-STUDY
    pick: str | None = None  # "METRIC [where METRIC <= N ...]"; None: the study's metric
    trial: int | None = None  # retrain only this trial's configuration


DEFAULTS = Settings()
_NAMES = {f.name for f in fields(Settings)}
_INTEGERS = {"workers", "group_size"}  # of the environment's settings
_NUMBERS = {"db_wait"}  # the rest are text
# Each setting's type, as the Python API's keyword arguments are checked against it.
_KINDS: dict[str, type] = {
    **dict.fromkeys(("seed", "trials", "threads", "workers", "heartbeat_interval"), int),
    **dict.fromkeys(("group_size", "top_k", "seeds", "trial"), int),
    **dict.fromkeys(("timeout", "db_wait"), float),
    "ensemble": bool,
}
_PATHS = {"storage", "data_dir", "artifacts", "out"}  # text, or a path
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _checked(name: str, value: Any) -> Any:
    """A setting given by keyword (the Python API; the command line's are typed already),
    checked against its type; a path given as text.

    Raises:
        HpsearchError: a value of another type, naming the setting.
    """
    kind = _KINDS.get(name, str)
    if name in _PATHS and isinstance(value, os.PathLike):
        return os.fspath(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise HpsearchError(f"{name} must be {_KIND_NAMES[kind]}, got {value!r}")


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        text = environ.get(variable)
        if text is None or (text == "" and name != "artifacts"):
            continue
        if name in _INTEGERS:
            try:
                values[name] = int(text)
            except ValueError:
                raise HpsearchError(f"${variable} must be an integer, got {text!r}") from None
        elif name in _NUMBERS:
            try:
                values[name] = float(text)
            except ValueError:
                raise HpsearchError(f"${variable} must be a number, got {text!r}") from None
        else:
            values[name] = text
    return values


def resolve_settings(
    study: StudyDefaults | None = None, *, environ: Mapping[str, str] | None = None, **flags: Any
) -> Settings:
    """Merge the settings: built-in defaults < ``study`` file < environment < ``flags``.

    ``flags`` hold the command line's values, ``None`` meaning "not given". With a study (the
    ``run`` path), an unset worker count and group size become the machine's defaults
    (``training.devices``).

    Raises:
        HpsearchError: a value out of range or an unknown name, naming the flag.
    """
    unknown = set(flags) - _NAMES
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    from_study: dict[str, Any] = {}
    if study is not None:
        from_study = {
            "study_name": study.name,
            "sampler": study.sampler,
            "pruner": study.pruner,
            "seed": study.seed,
            "trials": study.trials,
        }
    given = {name: _checked(name, value) for name, value in flags.items() if value is not None}
    environment = _from_environment(os.environ if environ is None else environ)
    settings = replace(DEFAULTS, **{**from_study, **environment, **given})
    _check(settings)
    if study is not None:
        if not settings.study_name:
            raise HpsearchError("--study-name must not be empty")
        # Imported here: it imports torch, which the commands that only read do not need.
        from hpsearch.training.devices import default_group_size, default_workers

        if settings.workers is None:
            workers = default_workers(
                settings.device, threads=settings.threads, trials=settings.trials
            )
            settings = replace(settings, workers=workers)
        if settings.group_size is None:
            settings = replace(settings, group_size=default_group_size(settings.device))
    return settings


def _check(settings: Settings) -> None:
    def at_least(name: str, minimum: int) -> None:
        value = getattr(settings, name)
        if value is not None and value < minimum:
            flag = "--" + name.replace("_", "-")
            raise HpsearchError(f"{flag} must be >= {minimum}, got {value}")

    names = ("trials", "threads", "workers", "heartbeat_interval", "top_k", "seeds", "group_size")
    for name in names:
        at_least(name, 1)
    timeout = settings.timeout
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise HpsearchError(f"--timeout must be a positive number of seconds, got {timeout}")
    if not (settings.db_wait >= 0 and math.isfinite(settings.db_wait)):
        raise HpsearchError(f"$HPSEARCH_DB_WAIT must be seconds >= 0, got {settings.db_wait}")
    for name, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("device", DEVICES)):
        value = getattr(settings, name)
        if value not in choices:
            raise HpsearchError(f"unknown {name} {value!r}; choose from {either(list(choices))}")
