"""`hpsearch dashboard` in a real browser: headless Chromium (Debian's), driven by Playwright.

Needs /usr/bin/chromium (or $HPSEARCH_TEST_CHROMIUM) and the playwright package; without
them the test is skipped, except under CI=true, where it fails (.ci/run installs both).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hpsearch
from tests.conftest import TINY_HOUSE
from tests.servers import free_port

pytestmark = pytest.mark.slow  # real training runs: seconds each

CHROMIUM = os.environ.get("HPSEARCH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _need_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(CHROMIUM)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        message = f"browser test needs {' and '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _outward_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _start_dashboard(folder: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    exe = shutil.which("hpsearch")
    assert exe is not None
    port = free_port()
    server = subprocess.Popen(
        [exe, "dashboard", "--port", str(port), *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _reachable("127.0.0.1", port):
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise AssertionError(f"dashboard did not start: {server.communicate()[0]}")
        time.sleep(0.5)
    return server, port


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path]]:
    """A real run (3 trials), a study of two objectives and a `finalize`, then `hpsearch
    dashboard` on their SQLite file; shared by this module's tests (the runs are the slow
    part)."""
    _need_browser()
    folder = tmp_path_factory.mktemp("dashboard")
    study_file = folder / "tiny-house.toml"
    study_file.write_text(TINY_HOUSE.format(problem="house-prices"))
    # A study of two objectives, for the Pareto-front page.
    front_file = folder / "front-house.toml"
    front_file.write_text(
        TINY_HOUSE.format(problem="house-prices").replace(
            "[study]\n", '[study]\nmetrics = ["val_rmse", "params"]\n'
        )
    )
    # In this process (torch is loaded already), with the defaults a user's shell would give.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for name in [name for name in os.environ if name.startswith("HPSEARCH_")]:
            patch.delenv(name)
        hpsearch.run(study_file, trials=3, workers=1)
        hpsearch.run(front_file, trials=4, workers=1)
        hpsearch.finalize(study_file.stem, top_k=1, seeds=1, ensemble=False)
    server, port = _start_dashboard(folder)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
            assert r.status == 200
        yield port, study_file.stem, folder
    finally:
        server.terminate()
        server.wait(timeout=20)


def _listed(study_name: str) -> re.Pattern[str]:
    """The dashboard's list entry of ``study_name`` ("1. NAME"), and no other."""
    return re.compile(rf"^\d+\. {re.escape(study_name)}$")


@contextlib.contextmanager
def _browser_page(problems: list[str]) -> Iterator[Any]:
    """A page of headless Chromium; its console errors and page errors go to ``problems``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            yield page
        finally:
            browser.close()


def test_dashboard_in_chromium(dashboard: tuple[int, str, Path], tmp_path: Path) -> None:
    port, study_name, _ = dashboard
    trials = 3
    base = f"http://127.0.0.1:{port}/dashboard"
    problems: list[str] = []
    with _browser_page(problems) as page:
        # The study list shows the study; clicking it opens the study page.
        page.goto(f"{base}/")
        # Exactly ("1. NAME"): finalize's retrains are the companion "NAME:finalize".
        page.get_by_text(_listed(study_name)).first.click()
        page.wait_for_url(f"{base}/studies/*")
        # The history plot renders, one point per finished trial (pruned included).
        page.wait_for_selector("#plot-history .main-svg", timeout=30_000)
        page.wait_for_function(
            f"document.querySelectorAll('#plot-history path.point').length >= {trials}",
            timeout=30_000,
        )
        assert page.locator("#plot-history path.point").count() == trials
        # The objective is labelled with its metric, not "Objective 0", and finalize's
        # result reads as a note on the study's page.
        page.get_by_text("val_rmse").first.wait_for(timeout=30_000)
        assert page.get_by_text("Objective 0").count() == 0
        # Kept in pytest's temporary folder (the last runs' are kept) for a look.
        shot = tmp_path / "dashboard-history.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        study_url = page.url.rstrip("/")
        page.goto(f"{study_url}/note")
        page.get_by_text("Finalized model").first.wait_for(timeout=30_000)
        page.get_by_text("rmse").first.wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "dashboard-note.png"), full_page=True)
        # The trial list counts the trials.
        page.goto(f"{study_url}/trials")
        page.get_by_text(f"{trials} Trials").wait_for(timeout=30_000)
    assert problems == []


def test_dashboard_draws_the_pareto_front(dashboard: tuple[int, str, Path], tmp_path: Path) -> None:
    port = dashboard[0]
    base = f"http://127.0.0.1:{port}/dashboard"
    problems: list[str] = []
    with _browser_page(problems) as page:
        page.goto(f"{base}/")
        page.get_by_text(_listed("front-house")).first.click()
        page.wait_for_url(f"{base}/studies/*")
        # The study page of two objectives draws their front.
        page.wait_for_selector("#graph-pareto-front .main-svg", timeout=30_000)
        page.wait_for_function(
            "document.querySelectorAll('#graph-pareto-front path.point').length >= 1",
            timeout=30_000,
        )
        # Its axes are chosen by objective name, not "Objective 0".
        page.get_by_text("Pareto Front").first.wait_for(timeout=30_000)
        page.get_by_text("params", exact=True).first.wait_for(timeout=30_000)
        assert page.get_by_text("Objective 0").count() == 0
        page.screenshot(path=str(tmp_path / "dashboard-front.png"), full_page=True)
    assert problems == []


def test_dashboard_listens_on_loopback_unless_asked(dashboard: tuple[int, str, Path]) -> None:
    port, _, folder = dashboard
    assert _reachable("127.0.0.1", port)
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    assert not _reachable(address, port)
    # --host 0.0.0.0 is the explicit way to expose it.
    server, open_port = _start_dashboard(folder, "--host", "0.0.0.0")
    try:
        assert _reachable(address, open_port)
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_dashboard_serves_probes_and_requests_together_and_stops_on_sigterm(
    dashboard: tuple[int, str, Path],
) -> None:
    """Under gunicorn (hpsearch.results.dashboard): the probe path of deploy/kubernetes
    answers, several requests are served at once, and SIGTERM (a pod's stop) ends it cleanly."""
    from concurrent.futures import ThreadPoolExecutor

    from hpsearch.results.dashboard import HEALTH_PATH

    _, _, folder = dashboard
    server, port = _start_dashboard(folder)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{HEALTH_PATH}", timeout=10) as r:
            assert r.status == 200 and "artifact_is_available" in json.load(r)

        def get(path: str) -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                return int(r.status)

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(get, ["/api/studies", HEALTH_PATH] * 4)) == {200}
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0]
    assert server.returncode == 0, output
