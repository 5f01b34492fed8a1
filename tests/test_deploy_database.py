"""The database scripts that deploy/kubernetes ships (base/scripts/), run as they are against
a real PostgreSQL: the role hpsearch set up with least privilege and used for a study, and a
backup restored after the study changed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from tests.servers import fresh_database

SCRIPTS = Path(__file__).parent.parent / "deploy" / "kubernetes" / "base" / "scripts"

pytestmark = pytest.mark.postgres


def libpq_env(url: str, **extra: str) -> dict[str, str]:
    """The libpq variables the scripts read (as the manifests set them), for ``url``."""
    parsed = make_url(url)
    env = {**os.environ, "PGHOST": str(parsed.host), "PGPORT": str(parsed.port or 5432)}
    env |= {"PGUSER": str(parsed.username), "PGDATABASE": str(parsed.database)}
    return env | extra


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPTS / name)], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def role_database(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A fresh database set up by init-hpsearch-role.sh, as the postgres image runs it: the
    URL of its own role, and the superuser's URL of the same database."""
    role = f"hpsearch_{uuid.uuid4().hex[:8]}"
    password = tmp_path / "password"
    password.write_text("unused-under-trust-auth\n")
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with fresh_database(postgres_url) as url:
            database = str(make_url(url).database)
            env = libpq_env(url, POSTGRES_DB=database, HPSEARCH_DB_USER=role)
            env |= {"POSTGRES_USER": str(make_url(url).username)}
            env |= {"HPSEARCH_DB_PASSWORD_FILE": str(password)}
            result = run_script("init-hpsearch-role.sh", env)
            assert result.returncode == 0, result.stderr
            yield make_url(url).set(username=role).render_as_string(False), url
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_the_role_hpsearch_runs_a_study_without_superuser_rights(
    role_database: tuple[str, str],
) -> None:
    url, _ = role_database
    created = subprocess.run(
        [sys.executable, "-m", "hpsearch", "create", "usps", "--storage", url],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert optuna.get_all_study_names(url) == ["usps"]
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            rights = connection.execute(
                sqlalchemy.text(
                    "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication "
                    "FROM pg_roles WHERE rolname = current_user"
                )
            ).one()
            assert tuple(rights) == (False, False, False, False)
            with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
                connection.execute(sqlalchemy.text("CREATE DATABASE not_allowed"))
    finally:
        engine.dispose()


def test_backup_then_restore_brings_back_the_backed_up_study(
    role_database: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = role_database
    backups = tmp_path / "backups"
    backups.mkdir()
    study = optuna.create_study(study_name="kept", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    before = [t.params for t in study.trials]

    env = libpq_env(url, BACKUP_DIR=str(backups), BACKUP_KEEP="2")
    result = run_script("backup.sh", env)
    assert result.returncode == 0, result.stderr
    (dump,) = backups.glob("*.dump")
    assert not list(backups.glob(".*partial"))  # renamed once complete

    # After the backup the study changes, and another one is made.
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    optuna.create_study(study_name="after", storage=url)

    result = run_script("restore.sh", env)
    assert result.returncode == 0, result.stderr
    assert str(dump) in result.stdout
    restored = optuna.load_study(study_name="kept", storage=url)
    assert [t.params for t in restored.trials] == before
    assert optuna.get_all_study_names(url) == ["kept"]


def test_backups_keep_the_newest(role_database: tuple[str, str], tmp_path: Path) -> None:
    url, _ = role_database
    database = make_url(url).database
    older = [tmp_path / f"{database}-2020010{day}T000000Z.dump" for day in (1, 2)]
    for path in older:
        path.write_bytes(b"an older dump")
    optuna.create_study(study_name="s", storage=url)
    result = run_script("backup.sh", libpq_env(url, BACKUP_DIR=str(tmp_path), BACKUP_KEEP="2"))
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in tmp_path.glob("*.dump"))
    assert kept[0] == older[1].name and len(kept) == 2  # the oldest removed
    assert f"removed {older[0]}" in result.stdout


def test_restore_without_a_backup_fails_clearly(
    role_database: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = role_database
    result = run_script("restore.sh", libpq_env(url, BACKUP_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert "restore: no backup in" in result.stderr
