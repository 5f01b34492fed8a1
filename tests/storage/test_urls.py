"""Storage URLs (hpsearch.storage.urls): parsing, the password kept out, keepalives."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.storage.database import open_storage
from hpsearch.storage.urls import connect_args, parse_url, redact


def test_redact_hides_password() -> None:
    url = "postgresql+psycopg://alice:s3cr%40t@db.example:5432/studies"
    assert "s3cr" not in redact(url)
    assert "***" in redact(url)
    # Unescaped, a password's "@", ":" or "/" shows no part of it either.
    for password in ("s3cr@t", "s3:cr/t", "s@3@c"):
        shown = redact(f"postgresql://alice:{password}@db.example/studies?sslmode=require")
        assert shown == "postgresql://alice:***@db.example/studies?sslmode=require"
    assert redact("postgresql://alice@db/x") == "postgresql://alice@db/x"
    assert redact("sqlite:///a@b.db") == "sqlite:///a@b.db"


def test_a_url_sqlalchemy_would_split_in_the_password_is_refused() -> None:
    with pytest.raises(HpsearchError) as refused:
        parse_url("postgresql+psycopg://postgres:s3cr@t@db/x")
    assert "s3cr" not in str(refused.value) and "t@db" not in str(refused.value)
    assert "write an '@' in the password as %40" in str(refused.value)
    assert parse_url("postgresql+psycopg://postgres:s3cr%40t@db/x").password == "s3cr@t"


def test_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(HpsearchError, match="bad storage URL"):
        open_storage("not a url")
    with pytest.raises(HpsearchError, match="unsupported storage"):
        open_storage("redis://localhost")
    with pytest.raises(HpsearchError, match="unsupported storage mysql"):
        open_storage("mysql://u@h/db")  # no driver, and never tested: named, not tried
    with pytest.raises(HpsearchError, match="bad storage URL 'foo'"):
        open_storage("foo")
    with pytest.raises(HpsearchError, match="needs a file"):
        open_storage("sqlite://")
    with pytest.raises(HpsearchError, match="folder does not exist"):
        open_storage(f"sqlite:///{tmp_path}/nowhere/x.db")
    with pytest.raises(HpsearchError, match="no study storage"):
        open_storage(f"sqlite:///{tmp_path}/x.db", create=False)
    assert not (tmp_path / "x.db").exists()


@pytest.mark.postgres
def test_postgres_plain_scheme_uses_psycopg3() -> None:
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def test_the_urls_own_parameters_win_over_the_keepalives() -> None:
    url = parse_url("postgresql://u@h/db?options=-c%20work_mem%3D8MB&keepalives_idle=30")
    args = connect_args(url)
    assert "options" not in args and "keepalives_idle" not in args  # the URL's are used
    assert args["keepalives"] == 1 and args["tcp_user_timeout"] == 30_000
    default = connect_args(parse_url("postgresql://u@h/db"))
    assert "-c tcp_keepalives_idle=10" in str(default["options"])


def test_password_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A mounted Kubernetes secret: the file's content, without its last line break.
    secret = tmp_path / "password"
    secret.write_text("s3cr:et/#1\n")
    monkeypatch.delenv("HPSEARCH_DB_PASSWORD", raising=False)
    monkeypatch.setenv("HPSEARCH_DB_PASSWORD_FILE", str(secret))
    assert parse_url("postgresql+psycopg://bob@db/x").password == "s3cr:et/#1"
    assert parse_url("postgresql+psycopg://bob:given@db/x").password == "given"  # the URL wins
    monkeypatch.setenv("HPSEARCH_DB_PASSWORD", "from-env")
    assert parse_url("postgresql+psycopg://bob@db/x").password == "from-env"


def test_missing_password_file_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HPSEARCH_DB_PASSWORD", raising=False)
    monkeypatch.setenv("HPSEARCH_DB_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(HpsearchError, match=r"cannot read \$HPSEARCH_DB_PASSWORD_FILE .*absent"):
        parse_url("postgresql+psycopg://bob@db/x")
