"""docker-compose.yml and the Dockerfile agree (no Docker engine runs here: read and
validate them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from hpsearch.search.study_file import packaged_studies

REPO = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
ENV = dict(
    line.split("=", 1)
    for line in (REPO / ".env.example").read_text().splitlines()
    if line and not line.startswith("#")
)


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, from .env.example."""

    def one(match: re.Match[str]) -> str:
        name, operator, rest = re.fullmatch(r"(\w+)(:-|:\?)?(.*)", match.group(1)).groups()  # type: ignore[union-attr]
        return ENV.get(name, rest if operator == ":-" else "")

    return re.sub(r"\$\{([^}]+)\}", one, value)


def test_services_and_volumes() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "worker", "dashboard"}
    postgres = services["postgres"]
    assert postgres["env_file"] == ".env"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in COMPOSE["volumes"]  # a named volume, not a host folder


def test_worker_runs_hpsearch_against_postgres() -> None:
    worker = COMPOSE["services"]["worker"]
    assert worker["build"] == "."
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=4 works
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = [interpolate(str(part)) for part in worker["command"]]
    assert command[0] == "run" and command[1] in packaged_studies()
    assert int(command[command.index("--trials") + 1]) >= 1
    storage = make_url(interpolate(worker["environment"]["HPSEARCH_STORAGE"]))
    assert storage.drivername == "postgresql+psycopg"
    assert storage.host == "postgres"  # the compose service
    assert storage.username == ENV["POSTGRES_USER"] and storage.database == ENV["POSTGRES_DB"]
    assert storage.password is None  # the password comes from HPSEARCH_DB_PASSWORD
    assert "POSTGRES_PASSWORD" in worker["environment"]["HPSEARCH_DB_PASSWORD"]


def test_workers_and_dashboard_share_the_artifact_volume() -> None:
    """Checkpoints written by one worker are there for a retry in another container, and
    finalized models for the dashboard; the Dockerfile makes the folder the user's."""
    services = COMPOSE["services"]
    folder = interpolate(services["worker"]["environment"]["HPSEARCH_ARTIFACTS"])
    assert folder.startswith("/")
    for name in ("worker", "dashboard"):
        environment = services[name]["environment"]
        assert environment["HPSEARCH_ARTIFACTS"] == "${HPSEARCH_ARTIFACTS:-" + folder + "}"
        assert f"artifacts:{folder}" in services[name]["volumes"], name
    assert "artifacts" in COMPOSE["volumes"]  # a named volume, not a host folder
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"mkdir {folder} && chown hpsearch:hpsearch {folder}", dockerfile)


def test_no_default_password() -> None:
    assert ENV["POSTGRES_PASSWORD"] == ""  # compose refuses to start until .env sets one
    for name in ("worker", "dashboard"):
        password = COMPOSE["services"][name]["environment"]["HPSEARCH_DB_PASSWORD"]
        assert password.startswith("${POSTGRES_PASSWORD:?"), name


def test_dashboard_on_same_database_loopback_only() -> None:
    services = COMPOSE["services"]
    dashboard = services["dashboard"]
    assert dashboard["image"] == services["worker"]["image"]
    assert dashboard["command"][0] == "dashboard"
    assert (
        dashboard["environment"]["HPSEARCH_STORAGE"]
        == (services["worker"]["environment"]["HPSEARCH_STORAGE"])
    )
    assert all(str(port).startswith("127.0.0.1:") for port in dashboard["ports"])
    published = str(dashboard["ports"][0]).split(":")[-1]
    assert published == dashboard["command"][dashboard["command"].index("--port") + 1]


def test_dockerfile_installs_the_package_with_hpsearch_entrypoint() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for copied in ("pyproject.toml", "hpsearch", "studies"):
        assert re.search(rf"^COPY .*\b{copied}\b", dockerfile, re.M), copied
        assert (REPO / copied).exists()
    assert re.search(r"^RUN pip install '\.\[s3\]'", dockerfile, re.M)  # boto3 for s3://
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "hpsearch"]' in dockerfile  # tini as PID 1
    assert re.search(r"^USER \d+:\d+$", dockerfile, re.M)  # not root


def test_compose_config_validates(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed (.ci/run installs it)")
        pytest.skip("docker-compose is not installed")
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(REPO / name, tmp_path / name)
    env = (REPO / ".env.example").read_text()  # as a user would: with a password set
    (tmp_path / ".env").write_text(env.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=x\n"))
    result = subprocess.run(
        [binary, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == {"postgres", "worker", "dashboard"}
    worker = rendered["services"]["worker"]
    assert worker["environment"]["HPSEARCH_ARTIFACTS"] == "/artifacts"
    assert worker["command"] == ["run", "usps", "--trials", "200"]
