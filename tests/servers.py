"""Throw-away servers for tests and benchmarks: an empty PostgreSQL database, a PostgreSQL
server of a test's own, PgBouncer in front of one, and an S3-compatible server (moto's
standalone server, a real HTTP endpoint) with a fresh bucket; and what a server used
(connections sampled, CPU)."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import tempfile
import threading
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
import yaml

REPO = Path(__file__).resolve().parent.parent
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


def require(program: str, install: str) -> str:
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
    listen: str = "127.0.0.1", allow: str | None = None, start: bool = True
) -> Iterator[tuple[str, list[str]]]:
    """A PostgreSQL server of the caller's own, listening on ``listen`` and trusting clients
    from the network ``allow`` (CIDR) too: its URL, and the pg_ctl command to stop or start
    it (``start=False``: the caller starts it). initdb and pg_ctl refuse root, so they run as
    the postgres user."""
    for program in ("initdb", "pg_ctl"):
        require(program, "PostgreSQL's server programs")
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
    if start:
        subprocess.run([*ctl, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@{listen}:{port}/postgres", ctl
    finally:
        subprocess.run([*ctl, "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def moto_server(host: str = "127.0.0.1") -> Iterator[str]:
    """Start ``moto_server`` on ``host``; yield its endpoint URL; stop it."""
    exe = require("moto_server", "pip install 'moto[server]'")
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


# The PgBouncer settings shipped for Kubernetes: tests run workers through the same ones.
PGBOUNCER_MANIFEST = REPO / "deploy" / "kubernetes" / "pgbouncer" / "pgbouncer.yaml"


def shipped_pgbouncer_ini() -> configparser.ConfigParser:
    (config_map,) = [
        doc
        for doc in yaml.safe_load_all(PGBOUNCER_MANIFEST.read_text())
        if doc["kind"] == "ConfigMap"
    ]
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(config_map["data"]["pgbouncer.ini"])
    return ini


@contextmanager
def pgbouncer(server_url: str, pool_size: int = 20) -> Iterator[str]:
    """PgBouncer with the shipped settings (transaction mode) in front of the server of
    ``server_url``, on loopback, trusting clients, at most ``pool_size`` server connections
    per database: yield the URL that goes through it (same database), stop it. It refuses to
    run as root, so it runs as the postgres user."""
    exe = require("pgbouncer", "Debian's pgbouncer package")
    server = sqlalchemy.make_url(server_url)
    folder = Path(tempfile.mkdtemp(prefix="hpsearch-pgbouncer-"))
    shutil.chown(folder, "postgres")
    port = free_port()
    ini = shipped_pgbouncer_ini()
    ini["databases"] = {"*": f"host={server.host} port={server.port or 5432}"}
    ini["pgbouncer"].update(
        listen_addr="127.0.0.1",
        listen_port=str(port),
        auth_type="trust",
        auth_file=str(folder / "users.txt"),
        default_pool_size=str(pool_size),
        max_db_connections=str(pool_size),
        logfile=str(folder / "log"),
    )
    with open(folder / "pgbouncer.ini", "w") as file:
        ini.write(file)
    (folder / "users.txt").write_text(f'"{server.username or "postgres"}" ""\n')
    for path in folder.iterdir():
        shutil.chown(path, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [*as_postgres, exe, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = folder / "log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"pgbouncer did not start on port {port}: {tail}") from None
                time.sleep(0.05)
        yield server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def server_connections(server_url: str, database: str) -> int:
    """Client connections the server of ``server_url`` has open to ``database`` now."""
    engine = sqlalchemy.create_engine(server_url, poolclass=sqlalchemy.NullPool)
    try:
        with engine.connect() as connection:
            query = sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND backend_type = "
                "'client backend' AND pid <> pg_backend_pid()"
            )
            return int(connection.execute(query, {"d": database}).scalar_one())
    finally:
        engine.dispose()


class ConnectionPeaks:
    """The most client connections a PostgreSQL server had open to one database while
    sampled: over the whole time, and while at least ``busy`` of its trials were RUNNING (every
    worker past its start-up)."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.overall = 0
        self.running = 0


@contextmanager
def sampled_connections(database_url: str, busy: int = 1) -> Iterator[ConnectionPeaks]:
    """Sample the server's connections to the database of ``database_url`` (direct, not
    through a pooler) every 20 ms in a thread, on one connection of its own (not counted)."""
    peaks, stop = ConnectionPeaks(busy), threading.Event()
    engine = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.NullPool)
    query = sqlalchemy.text(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()), "
        "(SELECT count(*) FROM information_schema.tables WHERE table_name = 'trials')"
    )
    running = sqlalchemy.text("SELECT count(*) FROM trials WHERE state = 'RUNNING'")

    def sample() -> None:
        with engine.connect() as connection:
            while not stop.wait(0.02):
                connections, has_trials = connection.execute(query).one()
                peaks.overall = max(peaks.overall, connections)
                if has_trials and connection.execute(running).scalar_one() >= busy:
                    peaks.running = max(peaks.running, connections)
                connection.rollback()

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join(timeout=10)
        engine.dispose()


@dataclass
class ProcStat:
    """What /proc/PID/stat says of one process: its name, parent, and CPU clock ticks (its
    own user and system, and its reaped children's)."""

    name: str
    parent: int
    utime: int
    stime: int
    cutime: int
    cstime: int


def proc_stat(pid: int | str) -> ProcStat:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The name, in parentheses, may hold spaces and parentheses itself.
    fields = text[text.rindex(")") + 2 :].split()
    name = text[text.index("(") + 1 : text.rindex(")")]
    return ProcStat(name, int(fields[1]), *(int(f) for f in fields[11:15]))


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) that the live process ``pid`` has used."""
    stat = proc_stat(pid)
    return (stat.utime + stat.stime) / os.sysconf("SC_CLK_TCK")


def server_cpu_s() -> float:
    """CPU seconds (user + system) that this machine's PostgreSQL servers and PgBouncers have
    used: live processes, plus what each postmaster has collected from exited backends."""
    processes = {}
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            processes[int(folder.name)] = proc_stat(folder.name)
        except (OSError, ValueError):  # exited meanwhile
            continue
    total = 0
    for stat in processes.values():
        if stat.name not in ("postgres", "pgbouncer"):
            continue
        total += stat.utime + stat.stime
        parent = processes.get(stat.parent)
        if stat.name == "postgres" and (parent is None or parent.name != "postgres"):
            total += stat.cutime + stat.cstime  # the postmaster: its exited backends
    return total / os.sysconf("SC_CLK_TCK")
