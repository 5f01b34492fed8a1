"""The problem registry is the one extension point: a new problem is one ``Problem`` entry and
a study file. Here scikit-learn's 8x8 digits come from a package outside hpsearch, found
through the ``hpsearch.problems`` entry point, and go through run, finalize and report with no
edit anywhere else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpsearch import problems
from hpsearch.cli import app
from hpsearch.results.model_files import load_model
from hpsearch.training.loop import predict

pytestmark = pytest.mark.slow  # real training runs: seconds each

PLUGIN = Path(__file__).parents[1] / "plugins" / "digits_problem.py"

STUDY = """
[study]
problem = "digits"
trials = 4

[sampler]
name = "random"

[pruner]
name = "none"

[fixed]
epochs = 8

[space.hidden_units]
type = "categorical"
choices = [16, 32]

[space.lr]
type = "float"
low = 3e-3
high = 3e-2
log = true
"""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The plugin as an installed distribution: its module and a dist-info folder naming the
    entry point, on sys.path (what `pip install` of such a package leaves behind)."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(PLUGIN, site / "digits_problem.py")
    info = site / "digits_problem-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: digits-problem\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpsearch.problems]\ndigits = digits_problem:DIGITS\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(problems.PROBLEMS, "digits", raising=False)
    yield site
    problems.PROBLEMS.pop("digits", None)


def test_a_new_problem_runs_finalizes_and_reports(installed_plugin: Path, tmp_path: Path) -> None:
    assert "digits" not in problems.PROBLEMS  # not built in: found through its entry point
    study_file = tmp_path / "digits.toml"
    study_file.write_text(STUDY)
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(app, [*args, "--storage", url])
        assert result.exit_code == 0, result.output
        return result.output

    assert "4 complete" in invoke("run", str(study_file))
    best = json.loads(invoke("best", "digits", "--json"))
    assert best["metric"] == "val_accuracy" and best["value"] > 0.85
    assert best["config"]["hidden_units"] in (16, 32) and best["config"]["epochs"] == 8

    output = invoke("finalize", "digits", "--top-k", "2", "--seeds", "2")
    assert "ensemble (4)" in output and "logistic" in output  # the plugin's baseline
    assert "network per_class_accuracy: 0: " in output
    model, record = load_model("final-digits")
    assert record["problem"] == "digits" and record["test"]["accuracy"] > 0.85
    [baseline] = record["baselines"]
    assert baseline["name"] == "logistic regression" and baseline["test"]["accuracy"] > 0.85
    splits = problems.get_problem("digits").load_data(None)
    hits = predict(model, splits.x_test).argmax(-1) == splits.y_test
    assert float(hits.float().mean()) == pytest.approx(record["test"]["accuracy"])
    ensemble, _ = load_model("final-digits", ensemble=True)
    assert len(ensemble.members) == 4

    assert "index.html" in invoke("report", "digits")
    tables = (Path("report-digits") / "tables.md").read_text()
    assert "## hidden_units" in tables and "## lr" in tables


def test_unknown_problem_lists_the_registered_ones() -> None:
    from hpsearch.errors import HpsearchError

    with pytest.raises(HpsearchError, match="unknown problem 'nope'; choose from tabular-r") as e:
        problems.get_problem("nope")
    assert "image-classification, usps, house-prices, house-prices-gaussian" in str(e.value)
