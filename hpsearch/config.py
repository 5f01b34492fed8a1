"""Study files (``studies/*.toml``) and run settings.

A study file is data: the problem, metric, sampler, pruner, data options, fixed
hyperparameters and the search space. Settings resolve in one place, in one order:
built-in defaults < study file < environment < command-line flags.
"""

from __future__ import annotations

import inspect
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpsearch import models, training
from hpsearch.errors import HpsearchError
from hpsearch.problems import PROBLEMS, Problem, get_problem

PACKAGED_STUDIES_DIR = Path(__file__).parent / "studies"
SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc", "grid")
PRUNERS = ("hyperband", "median", "successive-halving", "none")
DEVICES = ("auto", "cpu", "cuda")
PARAM_TYPES = ("int", "float", "categorical")

_TOP_LEVEL = {"study", "sampler", "pruner", "data", "fixed", "space", "enqueue"}
_STUDY_KEYS = {"problem", "name", "metric", "seed", "trials", "report_every", "description"}
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "per_layer", "grid"}
TRAIN_PARAMS = frozenset(
    name for name in training.TrainConfig.__dataclass_fields__ if name != "seed"
) | {"loss"}


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter: a range or a list of choices."""

    name: str
    type: str
    low: float = 0.0  # ranges only
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    # Widths only: sample one value per layer (``channels_0``, ``channels_1``, ...).
    per_layer: bool = False
    # Values the grid sampler visits; defaults to the choices or the stepped integer range.
    grid: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file."""

    name: str
    source: str
    problem: Problem
    metric: str
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "hyperband"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    trials: int = 30
    report_every: int = 1
    data: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, ParamSpec] = field(default_factory=dict)
    enqueue: tuple[dict[str, Any], ...] = ()

    @property
    def direction(self) -> str:
        return self.problem.metrics[self.metric]

    @property
    def base_params(self) -> dict[str, Any]:
        """Every hyperparameter's value before sampling: report defaults < ``[fixed]``."""
        return {**self.problem.defaults, **self.fixed}

    @property
    def max_epochs(self) -> int:
        spec = self.space.get("epochs")
        if spec is None:
            return int(self.base_params["epochs"])
        if spec.type == "categorical":
            return int(max(spec.choices))
        return int(spec.high)


@dataclass(frozen=True)
class RunSettings:
    """Everything ``hpsearch run`` needs besides the study file, fully resolved."""

    storage: str = "sqlite:///hpsearch.db"
    study_name: str = ""
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int = 0
    trials: int = 30
    timeout: float | None = None
    device: str = "auto"
    data_dir: str | None = None
    threads: int | None = None
    workers: int = 1
    # Training checkpoints for resuming retried trials; "" turns them off.
    checkpoint_dir: str = "hpsearch-checkpoints"
    # Seconds between running trials' heartbeats (a silent trial is retried after 3).
    heartbeat_interval: int = 10


def packaged_studies() -> dict[str, Path]:
    """Study files shipped with hpsearch, by name (``usps`` -> ``.../usps.toml``)."""
    return {path.stem: path for path in sorted(PACKAGED_STUDIES_DIR.glob("*.toml"))}


def find_study_file(target: str) -> Path:
    """A problem or study name, or a path to a ``.toml`` file -> the study file's path."""
    path = Path(target)
    if target.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise HpsearchError(f"study file {target} does not exist")
        return path
    shipped = packaged_studies()
    if target in shipped:
        return shipped[target]
    names = sorted(set(shipped) | set(PROBLEMS))
    raise HpsearchError(
        f"unknown problem {target!r}; choose from {', '.join(names)} or give a study .toml"
    )


class _Checker:
    """Collects the file name into every error message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> HpsearchError:
        return HpsearchError(f"{self.source}: [{where}] {message}")

    def table(self, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return value

    def known_keys(self, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(
                where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )

    def integer(self, where: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"must be an integer >= {minimum}, got {value!r}")
        return value


# Numeric hyperparameters: (lowest allowed, highest allowed, whether the bounds are open).
_NUMERIC_RANGES: dict[str, tuple[float, float, str]] = {
    "epochs": (1, math.inf, "an integer >= 1"),
    "batch_size": (2, math.inf, "an integer >= 2 (batch norm needs two rows a batch)"),
    "n_conv_layers": (1, 4, "an integer from 1 to 4 (16x16 inputs)"),
    "n_hidden_layers": (1, math.inf, "an integer >= 1"),
    "channels": (1, math.inf, "an integer >= 1"),
    "hidden_units": (1, math.inf, "an integer >= 1"),
    "kernel_size": (1, 15, "an odd integer from 1 to 15"),
    "lr_step_epochs": (1, math.inf, "an integer >= 1"),
    "head_units": (0, math.inf, "an integer >= 0 (0 = a linear head)"),
    "dropout": (0.0, 0.95, "a number from 0 to 0.95"),
    "lr": (1e-12, math.inf, "a number > 0"),
    "momentum": (0.0, 1.0, "a number from 0 to 1"),
    "lr_gamma": (1e-12, 1.0, "a number in (0, 1]"),
    "weight_decay": (0.0, math.inf, "a number >= 0"),
    "aug_translate": (0.0, 0.5, "a number from 0 to 0.5 (fraction of the image)"),
    "aug_rotate": (0.0, 180.0, "a number of degrees from 0 to 180"),
    "aug_scale": (0.0, 0.9, "a number from 0 to 0.9"),
    "aug_shear": (0.0, 60.0, "a number of degrees from 0 to 60"),
    "aug_elastic": (0.0, 4.0, "a number of pixels from 0 to 4"),
}
_INTEGER_PARAMS = {
    "epochs",
    "batch_size",
    "n_conv_layers",
    "n_hidden_layers",
    "channels",
    "hidden_units",
    "kernel_size",
    "lr_step_epochs",
    "head_units",
}


def _check_number(check: _Checker, where: str, name: str, value: Any) -> None:
    base = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
    rule = _NUMERIC_RANGES.get(base)
    if rule is None:
        return
    low, high, description = rule
    integer = base in _INTEGER_PARAMS
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int if integer else (int, float))
        and low <= value <= high
        and (base != "kernel_size" or value % 2 == 1)
    )
    if not ok:
        raise check.fail(where, f"{name} = {value!r} must be {description}")


def _allowed_values(problem: Problem) -> dict[str, tuple[Any, ...]]:
    return {
        "activation": tuple(models.ACTIVATIONS),
        "optimizer": training.OPTIMIZERS,
        "lr_schedule": training.LR_SCHEDULES,
        "loss": tuple(problem.losses),
        "batch_norm": (True, False),
        "pool": models.POOLING,
        "fused": (True, False),
        "channels_last": (True, False),
        "bf16": (True, False),
    }


def _check_value(check: _Checker, where: str, name: str, value: Any, problem: Problem) -> None:
    _check_number(check, where, name, value)
    allowed = _allowed_values(problem).get(name)
    if allowed is not None and value not in allowed:
        raise check.fail(where, f"{name} = {value!r} is not one of {', '.join(map(repr, allowed))}")


def _parse_spec(check: _Checker, name: str, raw: Any, problem: Problem) -> ParamSpec:
    where = f"space.{name}"
    if not isinstance(raw, dict):
        raise check.fail(where, "must be a table with a type")
    check.known_keys(where, raw, _SPEC_KEYS)
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise check.fail(where, f"type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    per_layer = bool(raw.get("per_layer", False))
    if per_layer and name not in models.PER_LAYER_WIDTHS:
        raise check.fail(where, f"per_layer applies only to {', '.join(models.PER_LAYER_WIDTHS)}")
    grid = raw.get("grid")
    if grid is not None and (not isinstance(grid, list) or not grid):
        raise check.fail(where, "grid must be a non-empty list")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise check.fail(where, "categorical needs a non-empty list of choices")
        for choice in choices:
            _check_value(check, where, name, choice, problem)
        return ParamSpec(
            name,
            kind,
            choices=tuple(choices),
            per_layer=per_layer,
            grid=tuple(grid) if grid else None,
        )
    number = int if kind == "int" else (int, float)
    for bound in ("low", "high"):
        value = raw.get(bound)
        if isinstance(value, bool) or not isinstance(value, number):
            raise check.fail(where, f"{bound} must be a{'n int' if kind == 'int' else ' number'}")
    low: float = raw["low"]
    high: float = raw["high"]
    if not low < high:
        raise check.fail(where, f"low ({low}) must be < high ({high})")
    _check_value(check, where, name, low, problem)
    _check_value(check, where, name, high, problem)
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise check.fail(where, "log scale needs low > 0")
    step = raw.get("step")
    if step is not None and (not isinstance(step, number) or step <= 0 or log):
        raise check.fail(where, "step must be a positive number, and not combined with log")
    return ParamSpec(
        name,
        kind,
        low=low,
        high=high,
        log=log,
        step=step,
        per_layer=per_layer,
        grid=tuple(grid) if grid else None,
    )


def parse_study(raw: Mapping[str, Any], *, source: str, default_name: str) -> StudyConfig:
    """Validate a study file's parsed TOML.

    Raises:
        HpsearchError: naming the file and the table or key at fault.
    """
    check = _Checker(source)
    check.known_keys("top level", raw, _TOP_LEVEL)
    study = check.table(raw, "study")
    check.known_keys("study", study, _STUDY_KEYS)
    if "problem" not in study:
        raise check.fail("study", f"problem is required; one of {', '.join(PROBLEMS)}")
    if study["problem"] not in PROBLEMS:
        raise check.fail(
            "study", f"unknown problem {study['problem']!r}; choose from {', '.join(PROBLEMS)}"
        )
    problem = get_problem(study["problem"])
    metric = study.get("metric", problem.default_metric)
    if metric not in problem.metrics:
        raise check.fail("study", f"metric {metric!r} is not one of {', '.join(problem.metrics)}")

    def named_table(key: str, choices: tuple[str, ...], default: str) -> tuple[str, dict]:
        table = dict(check.table(raw, key))
        name = table.pop("name", default)
        if name not in choices:
            raise check.fail(key, f"name {name!r} is not one of {', '.join(choices)}")
        return name, table

    sampler, sampler_options = named_table("sampler", SAMPLERS, "tpe")
    pruner, pruner_options = named_table("pruner", PRUNERS, "hyperband")

    data_options = check.table(raw, "data")
    loader_kwargs = {
        p.name
        for p in inspect.signature(problem.load_data).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    check.known_keys("data", data_options, loader_kwargs)

    known_params = models.MODEL_PARAMS[problem.model] | TRAIN_PARAMS
    fixed = check.table(raw, "fixed")
    for name, value in fixed.items():
        base = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
        if name not in known_params and base not in models.PER_LAYER_WIDTHS:
            raise check.fail(
                "fixed",
                f"unknown hyperparameter {name!r}; known: {', '.join(sorted(known_params))}",
            )
        _check_value(check, "fixed", name, value, problem)

    space_table = check.table(raw, "space")
    space: dict[str, ParamSpec] = {}
    for name, spec in space_table.items():
        if name not in known_params:
            raise check.fail(
                f"space.{name}",
                f"unknown hyperparameter; known: {', '.join(sorted(known_params))}",
            )
        space[name] = _parse_spec(check, name, spec, problem)
    overlap = sorted(set(space) & set(fixed))
    if overlap:
        raise check.fail("fixed", f"{', '.join(overlap)} both fixed and searched")

    enqueue = raw.get("enqueue", [])
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise check.fail("enqueue", "must be an array of tables ([[enqueue]])")
    for entry in enqueue:
        unknown = sorted(set(entry) - set(space))
        if unknown:
            raise check.fail("enqueue", f"{', '.join(unknown)} not in [space]")

    config = StudyConfig(
        name=str(study.get("name", default_name)),
        source=source,
        problem=problem,
        metric=metric,
        sampler=sampler,
        sampler_options=sampler_options,
        pruner=pruner,
        pruner_options=pruner_options,
        seed=check.integer("study", study.get("seed", 0), 0),
        trials=check.integer("study", study.get("trials", 30), 1),
        report_every=check.integer("study", study.get("report_every", 1), 1),
        data=dict(data_options),
        fixed=dict(fixed),
        space=space,
        enqueue=tuple(dict(e) for e in enqueue),
    )
    if config.max_epochs < 1 or ("epochs" in space and space["epochs"].type == "float"):
        raise check.fail("space.epochs", "epochs must be integers >= 1")
    if sampler == "grid":
        from hpsearch.space import grid_search_space

        try:
            grid_search_space(config.space)
        except ValueError as error:
            raise check.fail("sampler", str(error)) from None
    return config


def load_study_file(path: str | Path) -> StudyConfig:
    """Read and validate one study file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as error:
        raise HpsearchError(f"cannot read study file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise HpsearchError(f"{path}: not valid TOML: {error}") from None
    return parse_study(raw, source=str(path), default_name=path.stem)


def default_workers(settings: RunSettings) -> int:
    """One worker per core on the CPU, per-GPU memory-probed on CUDA (``auto_workers``),
    never more than the trials to run."""
    from hpsearch.search import resolve_device
    from hpsearch.workers import auto_workers

    device = resolve_device(settings.device).type
    if settings.threads is not None and device != "cuda":  # --threads fixes the split
        return max(1, auto_workers("cpu") // settings.threads)
    return max(1, min(auto_workers(device), settings.trials))


def resolve_settings(config: StudyConfig, **overrides: Any) -> RunSettings:
    """Merge settings: built-in defaults < study file < environment and flags.

    ``overrides`` hold the command line's values (Typer has already let a flag beat its
    environment variable); ``None`` means "not given".

    Raises:
        HpsearchError: a value out of range.
    """
    settings = RunSettings(
        study_name=config.name,
        sampler=config.sampler,
        pruner=config.pruner,
        seed=config.seed,
        trials=config.trials,
    )
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(given) - set(RunSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    settings = replace(settings, **given)
    if settings.trials < 1:
        raise HpsearchError(f"--trials must be >= 1, got {settings.trials}")
    if settings.timeout is not None and not (
        settings.timeout > 0 and math.isfinite(settings.timeout)
    ):
        raise HpsearchError(
            f"--timeout must be a positive number of seconds, got {settings.timeout}"
        )
    if settings.sampler not in SAMPLERS:
        raise HpsearchError(
            f"unknown sampler {settings.sampler!r}; choose from {', '.join(SAMPLERS)}"
        )
    if settings.pruner not in PRUNERS:
        raise HpsearchError(f"unknown pruner {settings.pruner!r}; choose from {', '.join(PRUNERS)}")
    if settings.device not in DEVICES:
        raise HpsearchError(f"unknown device {settings.device!r}; choose from {', '.join(DEVICES)}")
    if settings.threads is not None and settings.threads < 1:
        raise HpsearchError(f"--threads must be >= 1, got {settings.threads}")
    if "workers" not in given:
        settings = replace(settings, workers=default_workers(settings))
    if settings.workers < 1:
        raise HpsearchError(f"--workers must be >= 1, got {settings.workers}")
    if settings.heartbeat_interval < 1:
        raise HpsearchError(f"heartbeat interval must be >= 1 s, got {settings.heartbeat_interval}")
    if not settings.study_name:
        raise HpsearchError("--study-name must not be empty")
    if settings.sampler == "grid" and config.sampler != "grid":
        from hpsearch.space import grid_search_space

        try:
            grid_search_space(config.space)
        except ValueError as error:
            raise HpsearchError(f"--sampler grid: {error}") from None
    return settings
