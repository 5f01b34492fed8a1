from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.errors import HpsearchError
from hpsearch.search.study_file import load_study_file
from hpsearch.settings import DEFAULTS, ENVIRONMENT, PRUNERS, SAMPLERS, Choice, resolve_settings

USPS = Path(__file__).parent.parent / "studies" / "usps.toml"


def test_precedence_defaults_study_file_environment_flags(tmp_path: Path) -> None:
    study = load_study_file(USPS)
    # Built-in defaults, then the study file.
    settings = resolve_settings(study, environ={})
    assert (settings.storage, settings.artifacts) == (DEFAULTS.storage, DEFAULTS.artifacts)
    assert (settings.sampler, settings.trials, settings.study_name) == ("tpe", 30, "usps")
    # The environment over the study file and the defaults.
    environ = {
        "HPSEARCH_STORAGE": "sqlite:///env.db",
        "HPSEARCH_WORKERS": "3",
        "HPSEARCH_DATA_DIR": str(tmp_path),
        "HPSEARCH_ARTIFACTS": "",  # turns checkpoints off
    }
    settings = resolve_settings(study, environ=environ)
    assert (settings.storage, settings.workers) == ("sqlite:///env.db", 3)
    assert (settings.data_dir, settings.artifacts) == (str(tmp_path), "")
    # Flags over everything; None means "not given".
    settings = resolve_settings(
        study, environ=environ, storage="sqlite:///flag.db", workers=None, sampler="random"
    )
    assert (settings.storage, settings.workers, settings.sampler) == (
        "sqlite:///flag.db",
        3,
        "random",
    )


def test_every_environment_variable_is_a_setting() -> None:
    assert set(ENVIRONMENT) <= set(DEFAULTS.__dataclass_fields__)
    assert all(name.startswith("HPSEARCH_") for name in ENVIRONMENT.values())


def test_commands_without_a_study_resolve_the_same_way() -> None:
    """finalize, studies, best, ... resolve storage, device and their own options here too."""
    settings = resolve_settings(environ={"HPSEARCH_DEVICE": "cpu"}, top_k=5)
    assert (settings.device, settings.top_k, settings.seeds) == ("cpu", 5, DEFAULTS.seeds)
    assert settings.workers is None  # no study: no worker count is needed


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"trials": 0}, "--trials must be >= 1"),
        ({"timeout": -1.0}, "--timeout"),
        ({"sampler": "bayes"}, "unknown sampler"),
        ({"pruner": "asha"}, "unknown pruner"),
        ({"device": "tpu"}, "unknown device"),
        ({"top_k": 0}, "--top-k must be >= 1"),
        ({"study_name": ""}, "--study-name must not be empty"),
    ],
)
def test_bad_values_name_the_flag(bad: dict[str, object], message: str) -> None:
    with pytest.raises(HpsearchError, match=message):
        resolve_settings(load_study_file(USPS), environ={}, **bad)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(HpsearchError, match=r"\$HPSEARCH_WORKERS must be an integer, got 'two'"):
        resolve_settings(environ={"HPSEARCH_WORKERS": "two"})


def test_default_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hpsearch.training import devices as workers

    study = load_study_file(USPS)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(workers, "usable_cores", lambda: 6)
    # CPU: one single-threaded worker per core, never more than the trials.
    assert resolve_settings(study, environ={}, device="cpu").workers == 6
    assert resolve_settings(study, environ={}, device="auto", trials=4).workers == 4
    assert resolve_settings(study, environ={}, device="cpu", threads=2).workers == 3
    assert resolve_settings(study, environ={}, device="cpu", workers=1).workers == 1
    assert workers.worker_threads(6) == 1 and workers.worker_threads(2) == 3


def test_default_workers_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA probe, with torch.cuda faked: free memory / 2 GiB per GPU, at most 8 each,
    at most one per core, spread over the devices."""
    import torch

    from hpsearch.training import devices as workers

    gib = 1024**3
    free = {0: 70 * gib, 1: 5 * gib}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 * gib))
    assert workers.auto_workers("cuda", cores=16) == 8 + 2
    assert workers.auto_workers("cuda", cores=4) == 4
    free[1] = gib // 2  # a full GPU still gets one worker
    assert workers.auto_workers("cuda", cores=16) == 9
    monkeypatch.setattr(workers, "usable_cores", lambda: 16)
    study = load_study_file(USPS)
    assert resolve_settings(study, environ={}, device="auto", trials=200).workers == 9
    assert workers.worker_devices("auto", 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


def _choices_tables() -> str:
    """docs/study-files.md's tables of samplers and pruners, as settings.SAMPLERS and
    settings.PRUNERS make them."""
    objectives = {"one": "one", "several": "several", "any": "one or several"}

    def made_by(choice: Choice) -> str:
        return f"`{choice.optuna_class}`" if choice.optuna_class else "hpsearch's own"

    lines = [
        "| sampler | Optuna class | objectives | trial groups | what it does |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| `{name}` | {made_by(c)} | {objectives[c.objectives]} | "
            f"{'yes' if c.groups else 'no'} | {c.summary} |"
            for name, c in SAMPLERS.items()
        ),
        "",
        "| pruner | Optuna class | objectives | what it does |",
        "| --- | --- | --- | --- |",
        *(
            f"| `{name}` | {made_by(c)} | {objectives[c.objectives]} | {c.summary} |"
            for name, c in PRUNERS.items()
        ),
    ]
    return "\n".join(lines)


def test_one_table_of_samplers_and_pruners_makes_the_docs_and_the_help() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "study-files.md").read_text()
    assert _choices_tables() in docs
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    words = set(re.findall(r"[\w-]+", result.stdout))
    assert set(SAMPLERS) | set(PRUNERS) <= words
    # Each is accepted by name in a study file and on the command line, and nothing else.
    for name in SAMPLERS:
        assert resolve_settings(sampler=name).sampler == name
    for name in PRUNERS:
        assert resolve_settings(pruner=name).pruner == name
    with pytest.raises(HpsearchError, match="choose from tpe, random, .* or nsga3"):
        resolve_settings(sampler="annealing")
