"""Workers on separate hosts. Three Linux network namespaces ("hosts") hang off one bridge; a
PostgreSQL server and an S3 server (moto) of the test's own listen on the bridge's address;
each host runs a real ``hpsearch run`` worker, with its own working folder and hostname, the
shared database and the shared S3 artifact store. Then a worker is killed, or a host's link
is cut, mid-trial.

Needs root and ``ip`` (iproute2): skipped without them, except under CI=true where that fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import optuna
import pytest
import sqlalchemy
import torch
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpsearch.results.retrains import companion_name
from tests.conftest import TINY_HOUSE
from tests.search.test_local_workers import _slow_house_study, hpsearch_cmd
from tests.servers import S3_CREDENTIALS, Bucket, fresh_database, moto_server, new_bucket
from tests.servers import own_postgres as postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY = "slow-house"
TRIALS = 6
T = TypeVar("T")


@dataclass
class Host:
    hostname: str
    netns: str
    link: str  # its veth's end on the bridge: `ip link set <link> down` cuts the host off
    address: str


@dataclass
class Network:
    gateway: str  # the bridge's address, where the servers listen
    subnet: str
    hosts: list[Host]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_subnet() -> int:
    """A number N whose 10.213.N.0/24 no interface of this machine uses (another session's
    test network, or one a killed session left behind)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    free = [n for n in range(20, 250) if f" 10.213.{n}." not in used]
    if not free:
        _unavailable("no free 10.213.N.0/24 subnet for the test network")
    return random.choice(free)


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """A bridge with three namespaces on it, each with one veth link; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        _unavailable("network namespaces need root and iproute2's ip")
    tag = _free_subnet()  # names and subnet of this session's own
    net = f"10.213.{tag}"
    bridge = f"hps{tag}br"
    hosts = [
        Host(f"host{i}", f"hps{tag}h{i}", f"hps{tag}v{i}", f"{net}.{10 + i}") for i in (1, 2, 3)
    ]

    def remove() -> None:
        for host in hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)

    remove()  # what a killed earlier session may have left
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for host in hosts:
            inside = f"hps{tag}p{host.hostname[-1]}"
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.netns)
            _ip("link", "set", host.link, "master", bridge, "up")
            run_in = ["-n", host.netns]
            _ip(*run_in, "link", "set", inside, "name", "eth0")
            _ip(*run_in, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip(*run_in, "link", "set", "eth0", "up")
            _ip(*run_in, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as error:
        remove()
        _unavailable(f"cannot build network namespaces: {error.stderr.strip()}")
    try:
        yield Network(gateway=f"{net}.1", subnet=f"{net}.0/24", hosts=hosts)
    finally:
        remove()


@dataclass
class Servers:
    postgres: str
    s3: str


@pytest.fixture(scope="module")
def servers(network: Network) -> Iterator[Servers]:
    with (
        postgres_server(listen=network.gateway, allow=network.subnet) as (url, _),
        moto_server(host=network.gateway) as endpoint,
    ):
        yield Servers(url, endpoint)


def start_workers(
    network: Network, study_file: Path, url: str, bucket: Bucket, endpoint: str, folder: Path
) -> dict[str, subprocess.Popen[str]]:
    """A worker on every host, by hostname."""
    return {
        host.hostname: start_worker(host, study_file, url, bucket, endpoint, folder / host.hostname)
        for host in network.hosts
    }


def start_worker(
    host: Host, study_file: Path, url: str, bucket: Bucket, endpoint: str, folder: Path
) -> subprocess.Popen[str]:
    """``hpsearch run`` inside ``host``'s namespace, under its own hostname, in its own
    working folder (where the default artifact folder would be: not shared)."""
    folder.mkdir()
    command = [
        *["ip", "netns", "exec", host.netns, "unshare", "--uts"],
        *["sh", "-c", 'hostname "$0" && exec "$@"', host.hostname],
        *hpsearch_cmd(),
        *["run", str(study_file), "--trials", str(TRIALS), "--storage", url],
        *["--artifacts", bucket.url("store"), "--pruner", "none"],
        *["--heartbeat-interval", "1", "--threads", "1"],
    ]
    env = {**os.environ, **S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "HPSEARCH_WORKERS": "1"}
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(find: Callable[[], T | None], what: str, timeout: float = 180) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def trials(db: RDBStorage) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name=STUDY, storage=db).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def host_of(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get("worker", "?")).split(":")[0]


def running_on(db: RDBStorage, hostname: str, reports: int) -> FrozenTrial | None:
    for trial in trials(db):
        if trial.state == TrialState.RUNNING and host_of(trial) == hostname:
            if len(trial.intermediate_values) >= reports:
                return trial
    return None


def retry_of(db: RDBStorage, series: int) -> FrozenTrial | None:
    """The retry of ``series`` once its worker wrote its first report (with its ``worker``
    attribute, which the retry does not copy from the failed trial)."""
    for trial in trials(db):
        if trial.user_attrs.get("retry_of") == series and "worker" in trial.user_attrs:
            return trial
    return None


def finish(workers: dict[str, subprocess.Popen[str]]) -> dict[str, tuple[int, str]]:
    """Each worker's exit code and stderr."""
    done = {}
    for name, worker in workers.items():
        _, err = worker.communicate(timeout=300)
        done[name] = (worker.returncode, err)
    return done


def sessions_from(server: str, address: str) -> bool | None:
    """True once the server holds no session of a client at ``address``, else None."""
    engine = sqlalchemy.create_engine(server, poolclass=sqlalchemy.NullPool)
    query = "SELECT count(*) FROM pg_stat_activity WHERE client_addr = CAST(:a AS inet)"
    with engine.connect() as connection:
        count = connection.execute(sqlalchemy.text(query), {"a": address}).scalar()
    engine.dispose()
    return True if count == 0 else None


def stop_all(workers: dict[str, subprocess.Popen[str]]) -> None:
    for worker in workers.values():
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


@contextlib.contextmanager
def study_on_every_host(
    network: Network, servers: Servers, tmp_path: Path
) -> Iterator[tuple[RDBStorage, dict[str, subprocess.Popen[str]], Bucket]]:
    """The slow house study, a worker on every host, on a fresh database and bucket: the
    database to poll, the workers by hostname, the bucket. A failed check kills every worker
    (they would outlive their namespace)."""
    study_file = _slow_house_study(tmp_path)
    bucket = new_bucket(servers.s3)
    with fresh_database(servers.postgres) as url:
        db = RDBStorage(url)
        workers = start_workers(network, study_file, url, bucket, servers.s3, tmp_path)
        try:
            yield db, workers, bucket
        except BaseException:
            stop_all(workers)
            raise
        finally:
            db.engine.dispose()


def check_totals(db: RDBStorage) -> list[FrozenTrial]:
    """Exactly TRIALS finished, no number twice, nothing left running or waiting."""
    study = trials(db)
    numbers = [t.number for t in study]
    assert len(set(numbers)) == len(numbers)
    assert sum(t.state in FINISHED for t in study) == TRIALS
    assert not [t for t in study if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return study


def test_killed_worker_trial_resumes_on_another_host_from_the_store(
    network: Network, servers: Servers, tmp_path: Path
) -> None:
    with study_on_every_host(network, servers, tmp_path) as (db, workers, bucket):
        victim = wait_for(lambda: running_on(db, "host2", reports=2), "host2 mid-trial")
        workers["host2"].kill()
        killed_at = time.monotonic()
        series = int(victim.user_attrs.get("retry_of", victim.number))
        # The last checkpoint host2 wrote before it died, read from the store.
        key = f"store/checkpoints/{STUDY}/trial-{series}.pt"
        body = bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        epoch = torch.load(io.BytesIO(body), weights_only=True)["epoch"]
        retry = wait_for(lambda: retry_of(db, series), "the retry's first report")
        seconds_to_retry = time.monotonic() - killed_at
        done = finish(workers)
        study = check_totals(db)
    for name in ("host1", "host3"):
        assert done[name][0] == 0, done[name][1]
    assert [t.state for t in study if t.number == victim.number] == [TrialState.FAIL]
    (retry,) = [t for t in study if t.user_attrs.get("retry_of") == series]  # retried once
    assert retry.state == TrialState.COMPLETE and host_of(retry) != "host2"
    # (A report is written before its checkpoint: after two reports, one checkpoint at least.)
    assert retry.user_attrs["resumed_from_epoch"] == epoch >= 20
    assert bucket.keys() == []  # finished trials leave no checkpoint behind
    per_host = Counter(host_of(t) for t in study if t.state in FINISHED)
    print(
        f"\nkill: trials per host {dict(sorted(per_host.items()))}; trial {victim.number} "
        f"killed on host2 after epoch {epoch}, retried as trial {retry.number} on "
        f"{host_of(retry)} from epoch {epoch}; kill -> retry's first report "
        f"{seconds_to_retry:.1f} s"
    )


def test_host_cut_off_mid_trial_is_retried_elsewhere_and_totals_hold(
    network: Network, servers: Servers, tmp_path: Path
) -> None:
    host3 = network.hosts[2]
    with study_on_every_host(network, servers, tmp_path) as (db, workers, _):
        victim = wait_for(lambda: running_on(db, "host3", reports=1), "host3 mid-trial")
        _ip("link", "set", host3.link, "down")
        cut_at = time.monotonic()
        series = int(victim.user_attrs.get("retry_of", victim.number))
        try:
            # Host3 is silent: its trial goes stale and another host runs the retry.
            retry = wait_for(lambda: retry_of(db, series), "the retry's first report")
            seconds_to_retry = time.monotonic() - cut_at
            # The server drops host3's silent connections by itself (storage.POSTGRES_TCP),
            # so nothing a cut-off worker held (the study lock, a row lock) stays held.
            wait_for(
                lambda: sessions_from(servers.postgres, host3.address),
                "the server to drop host3's connections",
                timeout=90,
            )
            seconds_to_drop = time.monotonic() - cut_at
        finally:
            _ip("link", "set", host3.link, "up")
        done = finish(workers)
        study = check_totals(db)
    for name in ("host1", "host2"):
        assert done[name][0] == 0, done[name][1]
    # The cut-off worker recovers (its late result dropped), or exits with one clear line.
    code, err = done["host3"]
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 0 or (len(lines) == 1 and "Traceback" not in err), err
    assert [t.state for t in study if t.number == victim.number] == [TrialState.FAIL]
    retries = [t for t in study if t.user_attrs.get("retry_of") == series]
    assert [t.state for t in retries] == [TrialState.COMPLETE]  # retried once
    assert host_of(retries[0]) != "host3" and host_of(retry) != "host3"
    per_host = Counter(host_of(t) for t in study if t.state in FINISHED)
    print(
        f"\nlink cut: trials per host {dict(sorted(per_host.items()))}; host3's trial "
        f"{victim.number} retried as {retries[0].number} on {host_of(retries[0])}, its first "
        f"report {seconds_to_retry:.1f} s after the cut; host3's sessions gone from the "
        f"server {seconds_to_drop:.1f} s after the cut; host3 exited {code}"
    )


def test_finalize_on_two_hosts_shares_its_retrains_and_agrees(
    network: Network, servers: Servers, tmp_path: Path
) -> None:
    """``hpsearch finalize`` started on two hosts at once, on the shared database and store:
    every retrain runs once, on one host or the other, and both write the same answer."""
    study_file = tmp_path / "house.toml"
    study = TINY_HOUSE.format(problem="house-prices")
    study_file.write_text(study.replace("[study]", '[study]\nname = "hosts-house"', 1))
    bucket = new_bucket(servers.s3)
    env = {**os.environ, **S3_CREDENTIALS, "AWS_ENDPOINT_URL": servers.s3}
    with fresh_database(servers.postgres) as url:
        store = ["--storage", url, "--artifacts", bucket.url("store")]
        search = [*hpsearch_cmd(), "run", str(study_file), "--trials", "3", "--workers", "1"]
        subprocess.run([*search, *store], env=env, check=True, capture_output=True, timeout=300)
        finalizers = {}
        for host in network.hosts[:2]:
            folder = tmp_path / host.hostname
            folder.mkdir()
            command = [
                *["ip", "netns", "exec", host.netns, "unshare", "--uts"],
                *["sh", "-c", 'hostname "$0" && exec "$@"', host.hostname],
                *hpsearch_cmd(), "finalize", "hosts-house", *store,
                *["--top-k", "2", "--seeds", "2", "--workers", "1", "--threads", "1"],
            ]  # fmt: skip
            finalizers[host.hostname] = subprocess.Popen(
                command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        try:
            done = finish(finalizers)
        finally:
            stop_all(finalizers)
        db = RDBStorage(url)
        try:
            companion = optuna.load_study(study_name=companion_name("hosts-house"), storage=db)
            retrains = companion.get_trials(deepcopy=False)
        finally:
            db.engine.dispose()
    for name, (code, err) in done.items():
        assert code == 0, f"{name}: {err}"
    results = [
        json.loads((tmp_path / host / "final-hosts-house" / "finalize.json").read_text())
        for host in done
    ]
    assert results[0]["chosen"] == results[1]["chosen"]
    for metric, value in results[0]["test"].items():
        assert results[1]["test"][metric] == pytest.approx(value, rel=1e-3)
    keys = [(t.user_attrs["retrain_of"], t.user_attrs["seed"], t.user_attrs["rows"])
            for t in retrains if t.state in FINISHED]  # fmt: skip
    assert len(keys) == len(set(keys)) and all(t.state in FINISHED for t in retrains)
    per_host = Counter(host_of(t) for t in retrains)
    assert set(per_host) == {"host1", "host2"}  # both hosts trained some
    print(f"\nfinalize on two hosts: retrains per host {dict(sorted(per_host.items()))}")
