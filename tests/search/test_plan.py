"""What a run resolves once (hpsearch.search.plan): one study from every kind of input, the
same through the command line and the API, whole in every local worker's plan, and bad
input refused before anything is written."""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.errors import HpsearchError
from hpsearch.search.local_workers import worker_plans
from hpsearch.search.plan import resolve_plan, resolve_study
from hpsearch.search.study_file import packaged_studies
from tests.conftest import TINY_HOUSE

# A task's study needs the user's data: tests/search/test_run_matrix.py runs those.
OWN_DATA = {"tabular-regression", "tabular-gaussian", "tabular-classification",
            "image-classification"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(packaged_studies()) - OWN_DATA))
def test_every_shipped_study_crosses_to_a_worker_whole(name: str) -> None:
    plan = resolve_plan(name, workers=1)
    again = pickle.loads(pickle.dumps(plan))  # as multiprocessing's spawn sends it
    assert again == plan
    assert again.config.problem is plan.config.problem  # by its registry name


def test_a_dict_and_a_file_of_the_same_study_resolve_alike(tmp_path: Path) -> None:
    path = tmp_path / "house.toml"
    path.write_text(TINY_HOUSE.format(problem="house-prices"))
    raw = tomllib.loads(path.read_text())
    from_file = resolve_study(str(path), metrics=["val_rmse", "params"])
    from_dict = resolve_study({**raw, "study": {**raw["study"], "name": "house"}},
                              metrics=["val_rmse", "params"])  # fmt: skip
    assert from_dict.metrics == from_file.metrics == ("val_rmse", "params")
    assert from_dict.pruner == from_file.pruner == "dominated"
    assert (from_dict.space, from_dict.data, from_dict.name) == (
        from_file.space,
        from_file.data,
        from_file.name,
    )
    assert raw["study"].get("metrics") is None  # the caller's dict is left as it was


def test_each_worker_plan_is_the_run_with_its_own_device_and_threads(tmp_path: Path) -> None:
    path = tmp_path / "house.toml"
    path.write_text(TINY_HOUSE.format(problem="house-prices"))
    plan = resolve_plan(str(path), metrics=["val_mae"], sampler="random", workers=2)
    plans = worker_plans(plan)
    assert len(plans) == 2
    for each in plans:
        assert each.config == plan.config and each.settings.workers == 1
        assert each.settings.threads == 1  # 2 cores, 2 workers
        mine = {"workers": 2, "threads": plan.settings.threads, "device": plan.settings.device}
        assert each.for_worker(**mine) == plan


@pytest.mark.parametrize(
    ("study", "kwargs", "message"),
    [
        (None, {}, "give a study"),
        (None, {"target": "y"}, "give a study"),
        ("usps", {"target": "y"}, "--target and --task go with your own data"),
        ("usps", {"data": "t.csv", "task": "regression"}, "--task goes with --data and no"),
        ("uspss", {}, "unknown study 'uspss'"),
        ("usps", {"metrics": ["params"]}, "need one validation metric"),
    ],
)
def test_bad_input_is_one_line_from_the_one_resolution(
    study: str | None, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(HpsearchError, match=message):
        resolve_study(study, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        ["--metric", "val_rmse", "--metric", "params", "--pruner", "hyperband"],
        ["--metric", "val_rmse", "--metric", "params", "--sampler", "cmaes"],
        ["--pruner", "dominated"],
        ["--sampler", "annealing"],
        ["--device", "tpu"],
    ],
)
def test_a_rejected_run_of_two_workers_writes_nothing(tmp_path: Path, options: list[str]) -> None:
    path = tmp_path / "house.toml"
    path.write_text(TINY_HOUSE.format(problem="house-prices"))
    url = f"sqlite:///{tmp_path / 'none.db'}"
    result = CliRunner().invoke(
        app, ["run", str(path), *options, "--workers", "2", "--storage", url]
    )
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "none.db").exists()
    assert not (tmp_path / "hpsearch-artifacts").exists()
