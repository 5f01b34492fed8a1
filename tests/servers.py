"""Throw-away servers for tests and benchmarks: an empty PostgreSQL database, a PostgreSQL
server of a test's own, and an S3-compatible server (moto's standalone server, a real HTTP
endpoint) with a fresh bucket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

# moto accepts any keys; these are what the workers' environment carries.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _require(program: str, install: str) -> str:
    """The path of ``program``; skip without it, except under CI=true where that fails."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not on PATH ({install})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def fresh_database(server_url: str, prefix: str = "hpsearch") -> Iterator[str]:
    """Create an empty database on the server of ``server_url``; yield its URL; drop it."""
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sqlalchemy.make_url(server_url).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextmanager
def own_postgres(
    listen: str = "127.0.0.1", allow: str | None = None
) -> Iterator[tuple[str, list[str]]]:
    """A PostgreSQL server of the caller's own, listening on ``listen`` and trusting clients
    from the network ``allow`` (CIDR) too: its URL, and the pg_ctl command to stop or start
    it. initdb and pg_ctl refuse root, so they run as the postgres user."""
    for program in ("initdb", "pg_ctl"):
        _require(program, "PostgreSQL's server programs")
    folder = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
    shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port(listen)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, "initdb", "-A", "trust", "-D", str(data)], check=True,
                   capture_output=True)  # fmt: skip
    if allow is not None:
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {allow} trust\n")
    ctl = [*as_postgres, "pg_ctl", "-D", str(data), "-w", "-l", str(folder / "log"),
           "-o", f"-p {port} -k {folder} -c listen_addresses={listen}"]  # fmt: skip
    subprocess.run([*ctl, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@{listen}:{port}/postgres", ctl
    finally:
        subprocess.run([*ctl, "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def moto_server(host: str = "127.0.0.1") -> Iterator[str]:
    """Start ``moto_server`` on ``host``; yield its endpoint URL; stop it."""
    exe = _require("moto_server", "pip install 'moto[server]'")
    port = free_port(host)
    server = subprocess.Popen(
        [exe, "-H", host, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start at {endpoint}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@dataclass
class Bucket:
    name: str
    client: Any  # boto3's S3 client

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}"

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))


def new_bucket(endpoint: str) -> Bucket:
    """An empty bucket of a unique name on the S3 server at ``endpoint``."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    name = f"hpsearch-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, client)
