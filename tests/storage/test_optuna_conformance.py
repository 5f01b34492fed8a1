"""Optuna's own contract for storages (``optuna.testing.pytest_storages.StorageTestCase``, the
tests every Optuna backend passes) run against the worker's storage view, on SQLite and on
PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.storages._rdb.models import BaseModel
from optuna.testing.pytest_storages import StorageTestCase

from hpsearch.storage.database import open_storage
from hpsearch.storage.worker_view import WorkerStorage
from tests.servers import fresh_database


# Optuna's tables, each made once (the tests want an empty storage each).
@pytest.fixture(scope="module")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("conformance") / "empty.db"
    open_storage(f"sqlite:///{path}").engine.dispose()
    return path


@pytest.fixture(scope="module")
def _postgres_storage_url(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url, prefix="hpsearch_conformance") as url:
        open_storage(url).engine.dispose()
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkerStorage]:
    if request.param == "sqlite":
        shutil.copy(request.getfixturevalue("_sqlite_template"), tmp_path / "contract.db")
        backend = open_storage(f"sqlite:///{tmp_path / 'contract.db'}")
    else:
        backend = open_storage(request.getfixturevalue("_postgres_storage_url"))
        with backend.engine.begin() as connection:  # rows only: faster than TRUNCATE
            for table in reversed(BaseModel.metadata.sorted_tables):
                if table.name not in ("version_info", "alembic_version"):
                    connection.execute(table.delete())
    yield WorkerStorage(backend)
    backend.engine.dispose()


class TestWorkerStorage(StorageTestCase):
    """Every test of Optuna's storage contract, unchanged."""
