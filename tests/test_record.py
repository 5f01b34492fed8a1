"""The record of a study and a trial (hpsearch.record): every attribute key is written and read
through it, and what a study's set-up writes reads back."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna

from hpsearch import record

PACKAGE = Path(record.__file__).resolve().parent
# Reading or writing an attribute: a key given as a bare string here bypasses the record.
ATTRIBUTE_CALLS = {"set_user_attr", "set_system_attr"}
ATTRIBUTE_MAPS = {"user_attrs", "system_attrs"}


def _bare_keys(path: Path) -> list[str]:
    """``file:line`` of each attribute key written as a string literal in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ATTRIBUTE_CALLS and node.args:
                key = node.args[0]
            owner = node.func.value
            if node.func.attr in ("get", "pop") and node.args:
                if isinstance(owner, ast.Attribute) and owner.attr in ATTRIBUTE_MAPS:
                    key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute):
            if node.value.attr in ATTRIBUTE_MAPS:
                key = node.slice
        elif isinstance(node, ast.Compare) and isinstance(node.comparators[0], ast.Attribute):
            if node.comparators[0].attr in ATTRIBUTE_MAPS:  # "key" in trial.user_attrs
                key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.append(f"{path.name}:{node.lineno} {key.value!r}")
    return found


def test_no_module_but_the_record_names_an_attribute_key() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "record.py"]
    assert len(modules) > 40
    bare = [line for path in modules for line in _bare_keys(path)]
    assert bare == []


def test_the_check_finds_a_bare_key(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "trial.set_user_attr('seed', 1)\nx = study.user_attrs['metric']\n"
        "y = t.user_attrs.get('curve', {})\nz = 'problem' in study.user_attrs\n"
        "trial.set_user_attr(record.SEED, 1)\n"
    )
    found = [line.split()[-1] for line in _bare_keys(source)]
    assert found == ["'seed'", "'metric'", "'curve'", "'problem'"]


def test_a_study_definition_reads_back() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert not record.is_set_up(study)
    assert record.objective_names(study) == ["values_0", "values_1"]
    record.write_study_definition(
        study,
        problem="usps",
        metric="val_accuracy",
        metrics=["params", "val_accuracy"],
        constraints=["params <= 5000"],
        study_file="usps-small.toml",
        data={"seed": 0},
    )
    assert record.is_set_up(study)
    assert record.objective_names(study) == ["params", "val_accuracy"]
    assert record.curve_index(study) == 1  # the validation metric is the learning curve
    assert study.metric_names == ["params", "val_accuracy"]
    assert study.user_attrs[record.DATA] == {"seed": 0}


def test_a_retry_keeps_its_series_and_runs_once() -> None:
    study = optuna.create_study()
    trial = study.ask()
    for key, value in ((record.SEED, 7), (record.WORKER, "h:1"), (record.FAIL_REASON, "x")):
        trial.set_user_attr(key, value)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    failed = study.trials[0]
    attrs = record.retry_attrs(failed)
    assert attrs == {record.SEED: 7, record.RETRY_OF: 0, record.ATTEMPT: 2}
    retried = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs)
    assert record.series(retried) == 0 and record.retry_attrs(retried) is None
