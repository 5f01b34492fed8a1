"""The default path, as users take it: every way to name a study (a shipped name, a file, a
dict, a DataFrame, arrays, a table or an image folder) and every option that changes what is
searched (--metric once and twice, limits, sampler, pruner, seed, study name), each run with
one worker and with two local workers. Both workers must run the study the parent resolved:
what each worker process received is saved by ``tests.plan_recorder`` and compared with
what the parent sent, and the stored trials are checked against it."""

from __future__ import annotations

import os
import pickle
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from sklearn.datasets import load_diabetes, load_wine
from typer.testing import CliRunner

import hpsearch
from hpsearch import record
from hpsearch.cli import app
from hpsearch.search import run as run_module
from hpsearch.search.plan import RunPlan
from tests.conftest import TINY_HOUSE
from tests.plan_recorder import record_and_work
from tests.problems.test_images import write_digits

pytestmark = pytest.mark.slow
TRIALS = 2
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIMITED = TINY_HOUSE.format(problem="house-prices").replace(
    "trials = 3", 'trials = 3\nmetrics = ["val_rmse", "params"]'
) + ("\n[constraints]\nparams = { max = 2000 }\n")


@dataclass(frozen=True)
class Case:
    """One way to run a study, and the study it must make."""

    run: Callable[[Path, str, int], None]  # (inputs folder, storage URL, workers)
    metrics: tuple[str, ...]
    sampler: str = "tpe"
    pruner: str = "hyperband"
    limits: tuple[str, ...] = ()
    data: str | None = None  # the name of the table or folder the study reads


def cli(*args: str) -> Callable[[Path, str, int], None]:
    """``hpsearch run ARGS`` (``{inputs}`` in an argument is the inputs folder)."""

    def run(inputs: Path, url: str, workers: int) -> None:
        line = [a.format(inputs=inputs) for a in args]
        common = ["--trials", str(TRIALS), "--storage", url, "--workers", str(workers)]
        result = CliRunner().invoke(app, ["run", *line, *common])
        assert result.exit_code == 0, result.output

    return run


def api(**kwargs: Callable[[Path], Any]) -> Callable[[Path, str, int], None]:
    """``hpsearch.run(...)``, each argument made from the inputs folder."""

    def run(inputs: Path, url: str, workers: int) -> None:
        given = {name: make(inputs) for name, make in kwargs.items()}
        hpsearch.run(**given, trials=TRIALS, storage=url, workers=workers)

    return run


def _diabetes() -> pd.DataFrame:
    return load_diabetes(as_frame=True, scaled=False).frame


CASES = {
    "shipped name, --data table": Case(
        cli("tabular-regression", "--data", "{inputs}/diabetes.csv", "--target", "target"),
        ("val_rmse",),
        data="diabetes.csv",
    ),
    "file, --metric once, sampler, pruner, seed, name": Case(
        cli(
            "{inputs}/tiny.toml",
            "--metric",
            "val_mae",
            "--sampler",
            "random",
            "--pruner",
            "median",
            "--seed",
            "3",
            "--study-name",
            "renamed",
        ),  # fmt: skip
        ("val_mae",),
        sampler="random",
        pruner="median",
    ),
    # The file's pruner (hyperband) takes one objective: with two, the default of several.
    "--metric twice": Case(
        cli("{inputs}/tiny.toml", "--metric", "val_rmse", "--metric", "params"),
        ("val_rmse", "params"),
        pruner="dominated",
    ),
    "limits": Case(
        cli("{inputs}/limited.toml"),
        ("val_rmse", "params"),
        pruner="dominated",
        limits=("params <= 2000",),
    ),
    "--data table, no study": Case(
        cli("--data", "{inputs}/diabetes.csv", "--target", "target"),
        ("val_rmse",),
        data="diabetes.csv",
    ),
    "--data image folder": Case(cli("--data", "{inputs}/digits"), ("val_accuracy",), data="digits"),
    "dict": Case(
        api(study=lambda inputs: tomllib.loads((inputs / "tiny.toml").read_text())),
        ("val_rmse",),
    ),
    "DataFrame": Case(
        api(data=lambda inputs: _diabetes(), target=lambda inputs: "target"), ("val_rmse",)
    ),
    "arrays": Case(api(data=lambda inputs: tuple(load_wine(return_X_y=True))), ("val_accuracy",)),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "tiny.toml").write_text(TINY_HOUSE.format(problem="house-prices"))
    (folder / "limited.toml").write_text(LIMITED)
    _diabetes().to_csv(folder / "diabetes.csv", index=False)
    write_digits(folder / "digits", limit=400)
    return folder


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[RunPlan]]:
    """The plans the parent hands its workers (the one in-process worker's, or each local
    worker's); each worker process saves the plan it receives in $HPSEARCH_TEST_PLANS."""
    plans: list[RunPlan] = []
    run_worker, run_local_workers = run_module.run_worker, run_module.run_local_workers

    def one(plan: RunPlan, *args: Any, **kwargs: Any) -> Any:
        plans.append(plan)
        return run_worker(plan, *args, **kwargs)

    def local(study: optuna.Study, worker_plans: list[RunPlan], *args: Any) -> Any:
        plans.extend(worker_plans)
        return run_local_workers(study, worker_plans, *args)

    monkeypatch.setattr(run_module, "run_worker", one)
    monkeypatch.setattr(run_module, "run_local_workers", local)
    monkeypatch.setattr("hpsearch.search.local_workers.worker_main", record_and_work)
    (tmp_path / "received").mkdir()
    monkeypatch.setenv("HPSEARCH_TEST_PLANS", str(tmp_path / "received"))
    yield plans


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_worker_runs_the_study_the_parent_resolved(
    case: Case, workers: int, inputs: Path, sent: list[RunPlan], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'matrix.db'}"
    case.run(inputs, url, workers)

    # The parent resolved what the case asked for.
    assert len(sent) == workers
    plan = sent[0]
    config, settings = plan.config, plan.settings
    assert config.metrics == case.metrics
    assert (settings.sampler, settings.pruner) == (case.sampler, case.pruner)
    assert tuple(limit.describe() for limit in config.limits) == case.limits
    if case.data is not None:
        assert Path(config.data["path"]).name == case.data
    # Every worker received that plan, whole: the same study, its own device and threads.
    pids = {os.getpid()}
    if workers > 1:
        received = {}
        for path in (tmp_path / "received").glob("worker-*.pkl"):
            _, index, pid = path.stem.split("-")
            received[int(index)] = pickle.loads(path.read_bytes())
            pids = pids - {os.getpid()} | {int(pid)}
        assert sorted(received) == list(range(workers))
        for index, plan_sent in enumerate(sent):
            got = received[index]
            assert got == plan_sent and got.config == config
            own = {"device": got.settings.device, "threads": got.settings.threads}
            assert replace(got.settings, workers=settings.workers, **own) == replace(
                settings, **own
            )
    # The study holds the total, every trial run by those workers on that study.
    (name,) = optuna.get_all_study_names(url)
    assert name == settings.study_name
    study = optuna.load_study(study_name=name, storage=url)
    assert [d.name.lower() for d in study.directions] == config.directions
    assert study.user_attrs[record.METRICS] == list(config.metrics)
    assert study.user_attrs[record.DATA] == config.data
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == TRIALS
    searched = set(config.space)
    for trial in finished:
        assert {_base(name) for name in trial.params} <= searched, trial.params
        assert int(trial.user_attrs[record.WORKER].rsplit(":", 1)[1]) in pids
        if trial.state == TrialState.COMPLETE:
            assert all(metric in trial.user_attrs for metric in config.metrics)
            assert trial.values is not None and len(trial.values) == len(config.metrics)


def _base(param: str) -> str:
    """A per-layer width's hyperparameter (``hidden_units_1`` -> ``hidden_units``)."""
    head, _, tail = param.rpartition("_")
    return head if tail.isdigit() else param
