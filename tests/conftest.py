from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Bucket

# What the user reads must read right on an 80-column terminal: the tests print at that width.
os.environ["COLUMNS"] = "80"
# Tests of an unreachable database want its answer now, not after run's default wait for a
# server still starting (the tests of that wait set their own).
os.environ["HPSEARCH_DB_WAIT"] = "0"

POSTGRES_URL = os.environ.get(
    "HPSEARCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# A USPS study small enough to train in seconds on a CPU: the shipped file's shape, tiny models.
TINY_USPS = """
[study]
problem = "usps"
seed = 0
trials = 3

[sampler]
name = "tpe"
n_startup_trials = 2

[pruner]
name = "median"
n_startup_trials = 1

[fixed]
channels = 8
epochs = 2
batch_size = 256

[space.n_conv_layers]
type = "int"
low = 1
high = 2

[space.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true

[space.loss]
type = "categorical"
choices = ["cross_entropy", "mse"]
"""

TINY_HOUSE = """
[study]
problem = "{problem}"
seed = 0
trials = 3
eval_every = 5

[fixed]
hidden_units = 16
epochs = 20
batch_size = 128

[space.n_hidden_layers]
type = "int"
low = 1
high = 2

[space.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
"""


@pytest.fixture
def tiny_usps_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-usps.toml"
    path.write_text(TINY_USPS)
    return path


@pytest.fixture(params=["house-prices", "house-prices-gaussian"])
def tiny_house_file(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / f"tiny-{request.param}.toml"
    path.write_text(TINY_HOUSE.format(problem=request.param))
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded data sets (hpsearch.problems.splits.cache_dir) go to a folder of this
    session's, shared by its tests and the processes they start, not to the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Default files (hpsearch.db, hpsearch-artifacts/) land in the test's own folder.
    monkeypatch.chdir(tmp_path)
    for name in (
        "HPSEARCH_STORAGE",
        "HPSEARCH_DATA_DIR",
        "HPSEARCH_DEVICE",
        "HPSEARCH_ARTIFACTS",
        "HPSEARCH_DB_PASSWORD",
        "HPSEARCH_GROUP_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    # One in-process worker unless a test asks for more (the default is one per core).
    monkeypatch.setenv("HPSEARCH_WORKERS", "1")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skip when it is down, except under CI=true where that fails."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except Exception as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} unreachable under CI: {error}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} unreachable: {error}")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback, shared by the session's tests (each makes its bucket)."""
    from tests.servers import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """An empty bucket on the test S3 server, with its endpoint and keys in the environment
    (as a worker's would be)."""
    from tests.servers import S3_CREDENTIALS, new_bucket

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return new_bucket(s3_endpoint)
