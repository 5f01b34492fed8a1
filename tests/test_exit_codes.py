"""Each cause of a failed command gives its own exit code (hpsearch.errors.EXIT_CODES), the
code a scheduler acts on: docs/cluster.md's table and deploy/kubernetes' podFailurePolicy
(tests/test_deploy.py checks those two against the same codes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.errors import EXIT_CODES, DeviceMissing, HpsearchError, TrialsFailing, Unavailable


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), prog_name="hpsearch")
    return result.exit_code, result.stderr


def test_every_cause_has_its_own_code() -> None:
    assert EXIT_CODES == {2: HpsearchError, 69: DeviceMissing, 70: TrialsFailing, 75: Unavailable}


def test_usage_error_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = invoke("run", "usps", "--sampler", "bayes")
    assert (code, "unknown sampler" in err) == (2, True)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the device")
def test_missing_device_exits_69(sqlite_url: str, tiny_usps_file: Path) -> None:
    code, err = invoke("run", str(tiny_usps_file), "--device", "cuda", "--storage", sqlite_url)
    assert (code, "no CUDA device" in err) == (69, True)


def test_trials_failing_in_a_row_exits_70(
    tiny_usps_file: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_train(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the loss went to NaN on this machine")

    monkeypatch.setattr("hpsearch.training.loop.train_stack", broken_train)
    code, err = invoke(
        "run", str(tiny_usps_file), "--trials", "10", "--workers", "1", "--storage", sqlite_url
    )
    assert code == 70, err
    assert "5 trials failed in a row" in err


def test_unreachable_database_exits_75_after_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPSEARCH_DB_WAIT", "1")
    code, err = invoke("create", "usps", "--storage", "postgresql+psycopg://bob@127.0.0.1:1/x")
    assert (code, "cannot reach database" in err) == (75, True)
