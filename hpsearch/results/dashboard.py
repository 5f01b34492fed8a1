"""Serving optuna-dashboard on a study storage under gunicorn, a production WSGI server.

optuna-dashboard's own ``run_server`` is wsgiref, one request at a time and meant for a laptop;
its documentation serves ``optuna_dashboard.wsgi(storage)`` with gunicorn for anything shared.
``/api/meta`` answers without touching the database: the probe path of deploy/kubernetes.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna_dashboard
from gunicorn.app.base import BaseApplication

from hpsearch.storage.artifacts import open_artifact_store
from hpsearch.storage.database import open_storage

HEALTH_PATH = "/api/meta"
# Threads of the one worker process: the dashboard polls a few endpoints per open tab, and one
# process keeps one storage (and, on PostgreSQL, one connection pool) for all of them.
THREADS = 4


class _Dashboard(BaseApplication):
    def __init__(self, storage: str, artifacts: str, bind: str) -> None:
        self.storage, self.artifacts, self.bind = storage, artifacts, bind
        super().__init__()

    def load_config(self) -> None:
        for name, value in {
            "bind": self.bind,
            "workers": 1,
            "worker_class": "gthread",
            "threads": THREADS,
            # A plot of a large study can take a while; gunicorn's default 30 s would kill it.
            "timeout": 120,
            "graceful_timeout": 10,
        }.items():
            self.cfg.set(name, value)

    def load(self) -> object:
        # Opened in the worker process, after gunicorn forks, so no connection crosses a fork.
        store = open_storage(self.storage, create=False)
        artifact_store = open_artifact_store(self.artifacts) if self.artifacts else None
        return optuna_dashboard.wsgi(store, artifact_store=artifact_store)


def serve_dashboard(
    storage: str, artifacts: str, host: str, port: int, on_ready: Callable[[], None]
) -> None:
    """Serve the dashboard of ``storage`` (and the finalized models in ``artifacts``, if not
    "") on ``host:port`` until SIGINT or SIGTERM; ``on_ready`` is called once both are
    checked, before the server starts.

    Raises:
        HpsearchError: no storage there, or an artifact store that cannot be opened; both are
            checked before the server starts, so a bad setting is one line, not a worker
            that fails to boot.
    """
    open_storage(storage, create=False).engine.dispose()
    if artifacts:
        open_artifact_store(artifacts)
    on_ready()
    _Dashboard(storage, artifacts, f"{host}:{port}").run()
