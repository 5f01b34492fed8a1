"""How a trial ends, as a value: ``Complete``, ``Pruned`` or ``Failed``. The objective returns one
for each trial it trains and the worker loop tells Optuna what it says
(``search.worker.Worker.tell``); nothing is raised from the training loop through the
objective to the tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from hpsearch.storage.errors import is_transient_db_error


@dataclass(frozen=True)
class Complete:
    """Trained to its end: its values, one per objective."""

    values: tuple[float, ...]


@dataclass(frozen=True)
class Pruned:
    """Stopped early, after ``epoch`` (0: before training; None: not known, a plain
    objective's), for ``reason``: the pruner, a diverged loss, or a limit its model broke."""

    epoch: int | None
    reason: str


@dataclass(frozen=True)
class Failed:
    """Ended by ``error``. With ``retry``, the failure was not the trial's own (a lost
    database connection): it is queued again once, and the retry resumes from its
    checkpoint."""

    error: BaseException
    retry: bool = False

    @property
    def reason(self) -> str:
        if is_transient_db_error(self.error):
            return f"database connection lost: {str(self.error).splitlines()[0]}"
        return f"{type(self.error).__name__}: {self.error}"

    @property
    def stale(self) -> bool:
        """Another worker failed the trial while this one stalled (stopped, suspended past
        the grace period) and queued its retry: this end is dropped, the checkpoint kept."""
        return isinstance(self.error, optuna.exceptions.UpdateFinishedTrialError)


TrialEnd = Complete | Pruned | Failed


def failure(error: BaseException) -> Failed:
    """``error`` as a trial's end: a lost database connection is retried; anything else is
    the trial's own failure."""
    return Failed(error, retry=is_transient_db_error(error))
