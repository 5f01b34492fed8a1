"""hpsearch from Python (hpsearch/api.py): data as a DataFrame, arrays or a study dict."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from sklearn.datasets import load_diabetes, load_wine

import hpsearch
from hpsearch.search.study_file import packaged_studies


def finished(study: optuna.Study) -> int:
    """Trials run to the end: one worker per core may leave a trial that yielded its slot."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


@pytest.mark.slow
def test_a_dataframe_runs_finalizes_and_predicts(sqlite_url: str, tmp_path: Path) -> None:
    frame = load_diabetes(as_frame=True, scaled=False).frame
    study = hpsearch.run(data=frame, target="target", trials=2, storage=sqlite_url)
    assert study.study_name.startswith("frame-") and study.study_name.endswith("-regression")
    assert finished(study) == 2
    again = hpsearch.run(data=frame, target="target", trials=2, storage=sqlite_url)
    assert again.study_name == study.study_name  # same data: resumed, nothing added
    assert len(again.trials) == len(study.trials)
    result = hpsearch.finalize(
        study.study_name, storage=sqlite_url, top_k=1, seeds=1, ensemble=False
    )
    assert result.out is not None and result.test_metrics["rmse"] > 0
    predictions = hpsearch.load_predictor(result.out).predict(frame.head(5))
    assert list(predictions.columns) == ["predicted_target"] and len(predictions) == 5


@pytest.mark.slow
def test_arrays_and_a_study_dict(sqlite_url: str) -> None:
    wine = load_wine()
    study = hpsearch.run(data=(wine.data, wine.target), trials=1, storage=sqlite_url)
    assert study.study_name.startswith("arrays-") and "classification" in study.study_name
    raw = tomllib.loads(packaged_studies()["tabular-classification"].read_text())
    raw["study"]["name"] = "from-a-dict"
    study = hpsearch.run(raw, data=(wine.data, wine.target), trials=1, storage=sqlite_url)
    assert study.study_name == "from-a-dict" and study.trials[0].value is not None


def test_bad_data_is_one_clear_error() -> None:
    frame = load_diabetes(as_frame=True).frame
    with pytest.raises(hpsearch.HpsearchError, match="not a column"):
        hpsearch.run(data=frame, target="price")
    with pytest.raises(hpsearch.HpsearchError, match="give a study"):
        hpsearch.run()
    with pytest.raises(hpsearch.HpsearchError, match="NaN"):
        hpsearch.run(data=(np.full((10, 2), np.nan), np.arange(10)))
