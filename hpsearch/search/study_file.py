"""Study files (``studies/*.toml``): the problem, objectives and limits, sampler, pruner, data
options, fixed hyperparameters and search space of a study.

The file's shape is a declarative schema (pydantic); its values are checked against the
problem's registry entry (its metrics, data options and hyperparameter types). Every error
names the file, the table and the key.
"""

from __future__ import annotations

import copy
import inspect
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hpsearch.errors import HpsearchError
from hpsearch.search.constraints import Limit, limits_of
from hpsearch.search.space import ParamSpec, grid_search_space
from hpsearch.settings import DEFAULTS, PRUNERS, SAMPLERS, takes
from hpsearch.storage.files import replacing

if TYPE_CHECKING:
    from hpsearch.problems.registry import Problem

PACKAGED_STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Study(_Table):
    problem: str
    name: str | None = None  # default: the file's name
    metric: str | None = None  # default: the problem's first metric
    metrics: list[str] | None = None  # several objectives, in place of metric
    description: str = ""
    seed: Annotated[int, Field(ge=0)] = DEFAULTS.seed
    trials: Annotated[int, Field(ge=1)] = DEFAULTS.trials
    eval_every: Annotated[int, Field(ge=1)] = 1  # epochs between validation reports


class _Bound(_Table):
    min: float | int | None = None
    max: float | int | None = None


class _StudyFile(_Table):
    study: _Study
    sampler: dict[str, Any] = {}  # name, then the Optuna sampler's own arguments
    pruner: dict[str, Any] = {}
    data: dict[str, Any] = {}  # the problem's data loader's options
    fixed: dict[str, Any] = {}
    space: dict[str, ParamSpec] = {}
    enqueue: list[dict[str, Any]] = []  # configurations to try first
    constraints: dict[str, _Bound] = {}  # metric -> its hard limits


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file (its defaults are the schema's, above)."""

    name: str
    source: str
    problem: Problem
    # The objectives; the first validation metric among them is ``metric``, the learning
    # curve that is reported every evaluated epoch and pruned on.
    metrics: tuple[str, ...]
    sampler: str
    sampler_options: dict[str, Any]
    pruner: str
    pruner_options: dict[str, Any]
    seed: int
    trials: int
    eval_every: int
    data: dict[str, Any]
    fixed: dict[str, Any]
    space: dict[str, ParamSpec]
    enqueue: tuple[dict[str, Any], ...]
    limits: tuple[Limit, ...] = ()

    @property
    def metric(self) -> str:
        return next(m for m in self.metrics if m in self.problem.metrics)

    @property
    def direction(self) -> str:
        return str(self.problem.metrics[self.metric])

    @property
    def directions(self) -> list[str]:
        return [self.problem.recorded_metrics[metric] for metric in self.metrics]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def base_params(self) -> dict[str, Any]:
        """Every hyperparameter's value before sampling: lab-report defaults < ``[fixed]``."""
        return {**self.problem.defaults, **self.fixed}

    @property
    def max_epochs(self) -> int:
        spec = self.space.get("epochs")
        if spec is None:
            return int(self.base_params["epochs"])
        return int(max(spec.choices) if spec.type == "categorical" else spec.high)  # type: ignore[arg-type]


def packaged_studies() -> dict[str, Path]:
    """Study files shipped with hpsearch, by name (``usps`` -> ``.../usps.toml``)."""
    return {path.stem: path for path in sorted(PACKAGED_STUDIES_DIR.glob("*.toml"))}


def find_study_file(target: str) -> Path:
    """A shipped study's name, or a path to a ``.toml`` file -> the study file's path."""
    path = Path(target)
    if target.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise HpsearchError(f"study file {target} does not exist")
        return path
    shipped = packaged_studies()
    if target in shipped:
        return shipped[target]
    raise HpsearchError(
        f"unknown study {target!r}; choose from {', '.join(shipped)} or give a study .toml file"
    )


def load_study_file(
    path: str | Path,
    *,
    data: dict[str, Any] | None = None,
    name: str | None = None,
    metrics: list[str] | None = None,
) -> StudyConfig:
    """Read and validate one study file, with the overrides of ``study_from_dict``.

    Raises:
        HpsearchError: naming the file and the table or key at fault.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as error:
        raise HpsearchError(f"cannot read study file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise HpsearchError(f"{path}: not valid TOML: {error}") from None
    # A table named in the file is found beside it; one given here, from where it was given.
    files = raw.get("data", {})
    for key in FILE_KEYS:
        value = files.get(key) if isinstance(files, dict) else None
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            files[key] = str(path.parent.resolve() / value)
    return study_from_dict(
        raw, source=str(path), default_name=path.stem, data=data, name=name, metrics=metrics
    )


def study_from_dict(
    raw: dict[str, Any],
    *,
    source: str,
    default_name: str,
    data: dict[str, Any] | None = None,
    name: str | None = None,
    metrics: list[str] | None = None,
) -> StudyConfig:
    """Validate a study file's contents (parsed TOML, or a dict of the same shape); ``data``
    overrides keys of its ``[data]`` (a table given on the command line), ``name`` its study
    name, ``metrics`` its objectives (``--metric``, repeated; a pruner of one objective then
    gives way to the default of several). ``raw`` is not changed.

    Raises:
        HpsearchError: naming ``source`` and the table or key at fault.
    """
    raw = copy.deepcopy(raw)
    for key, value in (data or {}).items():
        if value is not None:
            raw.setdefault("data", {})[key] = value
    if name is not None and isinstance(raw.get("study"), dict):
        raw["study"]["name"] = name
    if metrics and isinstance(raw.get("study"), dict):
        raw["study"].pop("metric", None)
        raw["study"]["metrics"] = list(metrics)
        pruner = raw.get("pruner", {}).get("name")
        if pruner in PRUNERS and not takes(PRUNERS, pruner, len(metrics)):
            raw["pruner"] = {}  # the file's pruner takes one objective: the default for several
    return parse_study(raw, source=source, default_name=default_name)


# [data] keys that name files: relative paths in a study file are relative to its folder.
FILE_KEYS = ("path", "test")
TABLE_TASKS = ("regression", "gaussian", "classification")


def table_study(path: str, target: str | None, task: str | None = None) -> tuple[Path, str, str]:
    """What ``hpsearch run --data PATH --target COLUMN`` runs: ``(the table's absolute
    path, its target, the task)``. Without ``task``, the target chooses: many distinct
    numbers make a regression, anything else a classification
    (``problems.tabular.guess_kind``).

    Raises:
        HpsearchError: no ``target``, an unknown ``task``, or a table that cannot be read.
    """
    from hpsearch.problems.tabular import guess_kind, read_table

    table = Path(path).expanduser().resolve()
    if table.suffix.lower() == ".npz" and table.is_file():
        with np.load(table, allow_pickle=False) as arrays:
            images = "x" in arrays and arrays["x"].ndim > 2  # (N, C, H, W) or (N, H, W)
        if images:
            return table, "class", "image-classification"
    if table.is_dir():  # images, one sub-folder per class: the folder names are the target
        if target or task not in (None, "image-classification"):
            raise HpsearchError(f"--data {path} is an image folder: no --target or --task")
        return table, "class", "image-classification"
    if not target and Path(path).suffix.lower() == ".npz":
        target = "y"  # an .npz holds x and y
    if not target:
        raise HpsearchError(f"--data {path} needs --target: the column to predict")
    if task is not None and task not in TABLE_TASKS:
        raise HpsearchError(f"unknown task {task!r}; choose from {', '.join(TABLE_TASKS)}")
    if task is None:
        frame = read_table(table)
        if target not in frame.columns:
            raise HpsearchError(f"{table}: no column {target!r}")
        task = guess_kind(frame[target])
    return table, target, task


def study_for_table(
    path: str, target: str | None, task: str | None = None, metrics: list[str] | None = None
) -> StudyConfig:
    """The study ``hpsearch run --data PATH --target COLUMN`` runs (``table_study``): the
    shipped ``tabular-<task>`` study on that table, named after the file and the task
    (``metrics``: its objectives, in place of the task's)."""
    table, target, task = table_study(path, target, task)
    return load_study_file(
        _task_study(task),
        data=_data_keys(table, target, task),
        name=f"{table.stem}-{task}",
        metrics=metrics,
    )


def _task_study(task: str) -> Path:
    return packaged_studies()[task if task == "image-classification" else f"tabular-{task}"]


def _data_keys(table: Path | str, target: str, task: str) -> dict[str, Any]:
    """The ``[data]`` keys that name the data: an image folder has no target column."""
    return (
        {"path": str(table)}
        if task == "image-classification"
        else {"path": str(table), "target": target}
    )


def write_table_study(
    out: Path | None, path: str, target: str | None, task: str | None = None
) -> tuple[Path, str]:
    """``hpsearch init``: write the study file ``study_for_table`` would run to ``out``
    (default ``<table>-<task>.toml`` here), the shipped task's file with the table named in
    ``[data]`` (relative to ``out``'s folder where it lies below it) and the study's name;
    return the file and the name. Checked before writing.

    Raises:
        HpsearchError: ``out`` exists, or what ``table_study``, a study file and the table's
            loader refuse.
    """
    table, target, task = table_study(path, target, task)  # reads the table once
    out = out if out is not None else Path(f"{table.stem}-{task}.toml")
    if out.exists():
        raise HpsearchError(f"{out} exists; choose another --out or remove it")
    folder = out.expanduser().resolve().parent
    shown = table.relative_to(folder) if table.is_relative_to(folder) else table
    name = f"{table.stem}-{task}"
    text = _task_study(task).read_text()
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in _data_keys(shown, target, task).items())
    text = text.replace("[data]\n", f"[data]\n{keys}", 1)
    text = text.replace("[study]\n", f"[study]\nname = {json.dumps(name)}\n", 1)
    raw = tomllib.loads(text)
    raw["data"]["path"] = str(table)  # checked as run will read it, from out's folder
    config = parse_study(raw, source=str(out), default_name=out.stem)
    config.problem.load_data(None, **config.data)  # the table's checks, as run makes them
    with replacing(out) as partial:
        partial.write_text(text)
    return out, name


def _schema_error(source: str, error: ValidationError) -> HpsearchError:
    # A misspelled key also makes a required one missing: name the misspelling.
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    *table, key = [str(part) for part in first["loc"]] or ["top level"]
    where = ".".join(table) or "top level"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return HpsearchError(f"{source}: [{where}] unknown key {key}")
    if where == "space" or first["type"] == "value_error":
        return HpsearchError(f"{source}: [{'.'.join([*table, key])}] {message}")
    return HpsearchError(f"{source}: [{where}] {key}: {message}")


@cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def parse_study(raw: dict[str, Any], *, source: str, default_name: str) -> StudyConfig:
    """Validate a study file's parsed TOML against the schema and its problem's entry.

    Raises:
        HpsearchError: naming the file and the table or key at fault.
    """
    from hpsearch.problems import get_problem  # imports torch: not on find_study_file's path

    try:
        parsed = _StudyFile.model_validate(raw)
    except ValidationError as error:
        raise _schema_error(source, error) from None

    def fail(where: str, message: str) -> HpsearchError:
        return HpsearchError(f"{source}: [{where}] {message}")

    try:
        problem = get_problem(parsed.study.problem)
    except HpsearchError as error:
        raise fail("study", str(error)) from None
    metrics, limits = _objectives(parsed, problem, fail)
    sampler_options, pruner_options = dict(parsed.sampler), dict(parsed.pruner)
    sampler = sampler_options.pop("name", DEFAULTS.sampler)
    # Optuna's pruners take one objective; a study of several is pruned by hpsearch's own.
    pruner = pruner_options.pop("name", "dominated" if len(metrics) > 1 else DEFAULTS.pruner)
    for table, name, choices in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS)):
        if name not in choices:
            raise fail(table, f"name {name!r} is not one of {', '.join(choices)}")
    loader = inspect.signature(problem.load_data).parameters.values()
    options = {p.name for p in loader if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(parsed.data) - options)
    if unknown:
        raise fail("data", f"unknown key {', '.join(unknown)}; allowed: {', '.join(options)}")
    required = [
        p.name
        for p in loader
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    missing = [name for name in required if name not in parsed.data]
    if missing:
        raise fail(
            "data",
            f"missing key {', '.join(missing)}: name the data in [data], or run "
            "hpsearch run --data FILE --target COLUMN (or --data FOLDER of images)",
        )

    kinds = problem.hyperparameters

    def check(where: str, name: str, values: list[Any]) -> None:
        """Each value must be valid for the hyperparameter ``name`` (or its per-layer base)."""
        base = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
        kind = kinds.get(name, kinds.get(base) if base in problem.per_layer else None)
        if kind is None:
            raise fail(where, f"unknown hyperparameter {name!r}; known: {', '.join(kinds)}")
        for value in values:
            try:
                _adapter(kind).validate_python(value, strict=True)
            except ValidationError as error:
                message = error.errors()[0]["msg"].removeprefix("Value error, ")
                raise fail(where, f"{name} = {value!r}: {message}") from None

    for name, value in parsed.fixed.items():
        check("fixed", name, [value])
    for name, spec in parsed.space.items():
        if spec.per_layer and name not in problem.per_layer:
            raise fail(f"space.{name}", f"per_layer applies only to {', '.join(problem.per_layer)}")
        # A float range of an integer hyperparameter would sample fractions: check floats.
        values = spec.values if spec.type != "float" else [float(v) for v in spec.values]
        check(f"space.{name}", name, values)
    both = sorted(set(parsed.space) & set(parsed.fixed))
    if both:
        raise fail("fixed", f"{', '.join(both)} both fixed and searched")
    for entry in parsed.enqueue:
        unknown = sorted(set(entry) - set(parsed.space))
        if unknown:
            raise fail("enqueue", f"{', '.join(unknown)} not in [space]")
    if sampler == "grid":
        try:
            grid_search_space(parsed.space)
        except ValueError as error:
            raise fail("sampler", str(error)) from None
    return StudyConfig(
        name=parsed.study.name or default_name,
        source=source,
        problem=problem,
        metrics=metrics,
        sampler=sampler,
        sampler_options=sampler_options,
        pruner=pruner,
        pruner_options=pruner_options,
        seed=parsed.study.seed,
        trials=parsed.study.trials,
        eval_every=parsed.study.eval_every,
        data=dict(parsed.data),
        fixed=dict(parsed.fixed),
        space=dict(parsed.space),
        enqueue=tuple(dict(entry) for entry in parsed.enqueue),
        limits=limits,
    )


def _objectives(
    parsed: _StudyFile, problem: Problem, fail: Callable[[str, str], HpsearchError]
) -> tuple[tuple[str, ...], tuple[Limit, ...]]:
    """The study's objectives (``metric``, or ``metrics``) and limits, checked: each names a
    validation metric of the problem or a cost (``training.costs``), and at least one
    objective is a validation metric, the learning curve that training reports.

    Raises:
        HpsearchError: through ``fail``.
    """
    known = list(problem.recorded_metrics)
    study = parsed.study
    if study.metric is not None and study.metrics is not None:
        raise fail("study", "give metric or metrics, not both")
    given = study.metrics if study.metrics is not None else [study.metric or problem.default_metric]
    metrics = tuple(given)
    if not metrics:
        raise fail("study", "metrics is empty")
    for metric in metrics:
        if metric not in known:
            raise fail("study", f"metric {metric!r} is not one of {', '.join(known)}")
    if len(set(metrics)) < len(metrics):
        raise fail("study", f"metrics {', '.join(metrics)} name one metric twice")
    if not any(m in problem.metrics for m in metrics):
        validation = ", ".join(problem.metrics)
        raise fail("study", f"metrics need one validation metric ({validation}) to train on")
    bounds: dict[str, tuple[float | None, float | None]] = {}
    for metric, bound in parsed.constraints.items():
        if metric not in known:
            raise fail("constraints", f"unknown metric {metric!r}; known: {', '.join(known)}")
        if bound.min is None and bound.max is None:
            raise fail(f"constraints.{metric}", "give min, max or both")
        if bound.min is not None and bound.max is not None and bound.min > bound.max:
            raise fail(f"constraints.{metric}", f"min {bound.min} > max {bound.max}")
        low = None if bound.min is None else float(bound.min)
        high = None if bound.max is None else float(bound.max)
        bounds[metric] = (low, high)
    return metrics, limits_of(bounds)
