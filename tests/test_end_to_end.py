"""Real processes: the installed ``hpsearch`` command on a SQLite file, and the dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TINY_HOUSE
from tests.servers import free_port

pytestmark = pytest.mark.slow


def hpsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hpsearch") or f"{sys.executable} -m hpsearch"
    return subprocess.run(
        [*exe.split(), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_usps_end_to_end(tiny_usps_file: Path, tmp_path: Path) -> None:
    result = hpsearch("run", str(tiny_usps_file), "--trials", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Output to a pipe or a log file: one plain line per finished trial, no progress bar.
    finished = [line for line in result.stderr.splitlines() if "finished, best" in line]
    assert len(finished) == 4 and "━" not in result.stderr
    assert all(f"trial {n} " in "".join(finished) for n in range(4))
    assert (tmp_path / "hpsearch.db").exists()  # the default storage, in the working directory
    best = json.loads(hpsearch("best", "tiny-usps", "--json", cwd=tmp_path).stdout)
    assert best["value"] > 0.8  # two epochs of a small conv net on USPS


@pytest.mark.parametrize("problem", ["house-prices", "house-prices-gaussian"])
def test_house_prices_end_to_end(problem: str, tmp_path: Path) -> None:
    study_file = tmp_path / f"{problem}.toml"
    study_file.write_text(TINY_HOUSE.format(problem=problem).replace("epochs = 20", "epochs = 60"))
    result = hpsearch("run", str(study_file), "--trials", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    best = json.loads(hpsearch("best", problem, "--json", cwd=tmp_path).stdout)
    assert best["metrics"]["val_rmse"] < 80_000  # dollars; a constant guess is about 78k


def test_dashboard_serves_the_study(tmp_path: Path) -> None:
    # One problem: the dashboard reads any study alike.
    tiny_house_file = tmp_path / "tiny-house.toml"
    tiny_house_file.write_text(TINY_HOUSE.format(problem="house-prices"))
    assert hpsearch("run", str(tiny_house_file), "--trials", "2", cwd=tmp_path).returncode == 0
    port = free_port()
    exe = shutil.which("hpsearch")
    assert exe is not None
    server = subprocess.Popen(
        [exe, "dashboard", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.load(r)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == [tiny_house_file.stem]
    finally:
        server.terminate()
        server.wait(timeout=20)
