from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import optuna_dashboard
import pytest
import torch
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.errors import HpsearchError
from hpsearch.problems.usps import load_usps
from hpsearch.results.finalize import finalize, top_configurations
from hpsearch.results.model_files import RESULT_FILE, load_model
from hpsearch.search.plan import RunPlan
from hpsearch.search.run import run_study
from hpsearch.search.study_file import load_study_file
from hpsearch.settings import Settings, resolve_settings
from hpsearch.training.loop import predict

pytestmark = pytest.mark.slow  # real training runs: seconds each


def _study(path: Path, url: str, trials: int = 4):  # type: ignore[no-untyped-def]
    config = load_study_file(path)
    study, _ = run_study(
        RunPlan(config, resolve_settings(config, workers=1, storage=url, trials=trials))
    )
    return config, study


def _settings(url: str, **given: object) -> Settings:
    """finalize's settings: one worker, in this process, unless ``given`` says otherwise."""
    return resolve_settings(**{"storage": url, "workers": 1, **given})  # type: ignore[arg-type]


def test_top_configurations_are_distinct_and_best_first(
    tiny_usps_file: Path, sqlite_url: str
) -> None:
    _, study = _study(tiny_usps_file, sqlite_url)
    top = top_configurations(study, 10)
    values = [value for _, _, value in top]
    assert values == sorted(values, reverse=True) and top[0][0] == study.best_trial.number
    assert len({json.dumps(p, sort_keys=True) for _, p, _ in top}) == len(top)
    assert top[0][1] == study.best_trial.user_attrs["config"]


def test_finalize_usps_saves_a_model_that_reloads(tiny_usps_file: Path, sqlite_url: str) -> None:
    config, study = _study(tiny_usps_file, sqlite_url)
    splits = config.problem.load_data(None, **config.data)
    out = Path("final")
    settings = _settings(sqlite_url, top_k=2, seeds=2)
    result = finalize(study, config.problem, splits, config.metric, settings, out=out)
    assert len(result.candidates) == 2 and all(len(c.val_scores) == 2 for c in result.candidates)
    # Each candidate's first seed is its search trial's: its score is the search's.
    for candidate in result.candidates:
        trial = study.trials[candidate.trial]
        assert candidate.seeds[0] == trial.user_attrs["seed"] and len(set(candidate.seeds)) == 2
        assert candidate.val_scores[0] == trial.user_attrs["val_accuracy"]
    # The choice maximizes mean - std of validation accuracy.
    assert result.chosen.robust(True) == max(c.robust(True) for c in result.candidates)
    test = result.test_metrics
    assert 0.5 < test["accuracy"] <= 1.0 and set(test["per_class_accuracy"]) == {
        str(c) for c in range(10)
    }
    assert result.train_rows == len(splits.x_train) + len(splits.x_val)
    assert result.test_rows == 2007
    logistic, svm = result.baselines
    assert svm["name"] == "RBF SVM (C=10)" and svm["test"]["accuracy"] > 0.9
    assert logistic["test"]["accuracy"] > 0.85
    record = json.loads((out / RESULT_FILE).read_text())
    assert record["chosen"]["params"] == result.chosen.params
    assert (
        record["checksums"] == splits.checksums and record["test"]["accuracy"] == test["accuracy"]
    )
    model, loaded = load_model(out)
    accuracy = float((predict(model, splits.x_test).argmax(-1) == splits.y_test).float().mean())
    assert accuracy == pytest.approx(test["accuracy"]) and loaded["study"] == study.study_name
    # The ensemble: every candidate x seed, retrained on train + validation, averaged.
    assert sorted(result.ensemble_members) == sorted(
        (c.trial, seed) for c in result.candidates for seed in c.seeds
    )
    assert result.ensemble_test is not None and 0.5 < result.ensemble_test["accuracy"] <= 1.0
    assert record["ensemble"]["test"]["accuracy"] == result.ensemble_test["accuracy"]
    averaged, _ = load_model(out, ensemble=True)
    hits = predict(averaged, splits.x_test).argmax(-1) == splits.y_test
    assert float(hits.float().mean()) == pytest.approx(result.ensemble_test["accuracy"])
    assert study.user_attrs["finalize"]["ensemble_size"] == 4
    # The dashboard shows the answer as a readable note on the study's page.
    note = optuna_dashboard.get_note(study)
    assert f"Trial {result.chosen.trial}" in note and "| accuracy |" in note


def test_finalize_regressors_report_dollars_r2_and_coverage(
    tiny_house_file: Path, sqlite_url: str
) -> None:
    config, study = _study(tiny_house_file, sqlite_url, trials=3)
    splits = config.problem.load_data(None, **config.data)
    settings = _settings(sqlite_url, top_k=1, seeds=2)
    result = finalize(study, config.problem, splits, config.metric, settings, out=Path("f"))
    test = result.test_metrics
    assert 10_000 < test["rmse"] < 200_000 and test["mae"] <= test["rmse"]
    assert -1.0 < test["r2"] <= 1.0
    ridge, boosting = result.baselines
    assert ridge["name"] == "ridge regression" and 10_000 < ridge["test"]["rmse"] < 80_000
    assert boosting["name"] == "gradient boosting" and 10_000 < boosting["test"]["rmse"] < 60_000
    assert result.ensemble_test is not None and 10_000 < result.ensemble_test["rmse"] < 200_000
    if config.problem.name == "house-prices-gaussian":
        assert 0.0 <= test["coverage_68"] <= test["coverage_95"] <= 1.0
        assert "nll" in test
        # The validation-fitted scale widens or narrows the intervals and nothing else.
        assert result.calibration is not None and result.calibration["scale"] > 0
        calibrated = result.calibration["test"]
        assert calibrated["rmse"] == pytest.approx(test["rmse"])
        wider = result.calibration["scale"] > 1
        assert (calibrated["coverage_95"] >= test["coverage_95"]) == wider or (
            calibrated["coverage_95"] == test["coverage_95"]
        )
    else:
        assert result.calibration is None
    # Reloaded, the saved model gives the same test RMSE.
    reloaded, record = load_model("f")
    output = predict(reloaded, splits.x_test)
    mean = output[:, 0] if output.dim() == 2 else output
    error = (mean - splits.y_test).double() * splits.target_std
    assert float(error.pow(2).mean().sqrt()) == pytest.approx(record["test"]["rmse"], rel=1e-5)


def test_finalize_command(tiny_usps_file: Path, sqlite_url: str) -> None:
    _study(tiny_usps_file, sqlite_url, trials=2)
    runner = CliRunner()
    args = ["finalize", "tiny-usps", "--storage", sqlite_url, "--top-k", "1", "--seeds", "1"]
    result = runner.invoke(app, [*args, "--no-ensemble"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "scored once on 2007 test rows" in result.output
    assert "ensemble" not in result.output.replace("ensemble.pt", "")
    assert (Path("final-tiny-usps") / "model.pt").is_file()
    assert not (Path("final-tiny-usps") / "ensemble.pt").exists()
    with pytest.raises(HpsearchError, match="holds no ensemble"):
        load_model("final-tiny-usps", ensemble=True)
    result = runner.invoke(app, [*args, "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "ensemble (2)" in result.output and (Path("final-tiny-usps") / "ensemble.pt").is_file()
    bad = runner.invoke(app, ["finalize", "nope", "--storage", sqlite_url])
    assert bad.exit_code == 2 and "no study named 'nope'" in bad.output


def test_the_search_never_reads_the_test_split(tiny_usps_file: Path, tmp_path: Path) -> None:
    """Poisoning the test split (NaN images, impossible labels) changes nothing a search
    records: no code path of the search selects on it."""
    config = load_study_file(tiny_usps_file)
    runs, calls = [], []
    for poison in (False, True):
        if poison:

            def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
                splits = load_usps(*args, **kwargs)
                calls.append(len(splits.x_test))
                return dataclasses.replace(
                    splits,
                    x_test=torch.full_like(splits.x_test, float("nan")),
                    y_test=torch.full_like(splits.y_test, -1),
                )

            config = dataclasses.replace(
                config, problem=dataclasses.replace(config.problem, load_data=poisoned)
            )
        url = f"sqlite:///{tmp_path / f'{poison}.db'}"
        study, _ = run_study(
            RunPlan(config, resolve_settings(config, workers=1, storage=url, trials=3))
        )
        runs.append([(t.state, t.value, t.params) for t in study.trials])
    assert calls == [2007] and runs[0] == runs[1]


def test_a_diverging_retrain_drops_its_candidate(
    tiny_usps_file: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpsearch.results.retrains import ALL, TRAIN, RetrainObjective
    from hpsearch.search.trial_end import Pruned

    config, study = _study(tiny_usps_file, sqlite_url)
    splits = config.problem.load_data(None, **config.data)
    first = top_configurations(study, 2)[0][0]
    real_end = RetrainObjective._end
    diverging = {(first, TRAIN)}

    def end(self, started, outcome):  # type: ignore[no-untyped-def]
        retrain = started.retrain
        if (retrain.trial, retrain.rows) in diverging and retrain.seed != started_seed(retrain):
            return Pruned(3, "non-finite training loss (inf) in epoch 3")
        return real_end(self, started, outcome)

    def started_seed(retrain):  # type: ignore[no-untyped-def]
        return study.trials[retrain.trial].user_attrs["seed"] if retrain.rows == TRAIN else -1

    monkeypatch.setattr(RetrainObjective, "_end", end)
    settings = _settings(sqlite_url, top_k=2, seeds=2)
    result = finalize(study, config.problem, splits, config.metric, settings, with_baseline=False)
    diverged = result.candidates[0]
    assert diverged.trial == first and math.isnan(diverged.val_scores[1])
    assert result.chosen is result.candidates[1]
    # The chosen configuration diverging on train + validation is one clear line.
    diverging |= {(number, ALL) for number, _, _ in top_configurations(study, 2)}
    with pytest.raises(HpsearchError, match=r"chosen, diverged .*epoch 3.*--trial N"):
        finalize(
            study, config.problem, splits, config.metric, _settings(sqlite_url, top_k=1, seeds=1)
        )
