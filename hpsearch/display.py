"""Terminal output of ``hpsearch run``: the live progress line and the summary table."""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from hpsearch.search import Progress as StudyProgress


def format_value(value: float | None) -> str:
    """A metric for the terminal: 6 significant digits, thousands separators above 1e5."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.6g}" if abs(value) < 1e5 else f"{value:,.0f}"


def eta_seconds(state: StudyProgress, now: float) -> float | None:
    """Remaining time at this run's pace so far; ``None`` before any trial finished."""
    done_here = state.trials_this_run
    if done_here == 0:
        return None
    remaining = max(state.target - state.finished, 0)
    return (now - state.started_at) / done_here * remaining


class ProgressDisplay:
    """A live bar: finished/target, complete, pruned, failed, best value, elapsed, ETA."""

    def __init__(self, console: Console, metric: str) -> None:
        self.metric = metric
        self.progress = Progress(
            TextColumn("trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("trials", total=None, counts="", eta="-")

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def update(self, state: StudyProgress) -> None:
        eta = eta_seconds(state, time.monotonic())
        counts = (
            f"complete {state.complete}  pruned {state.pruned}  failed {state.failed}  "
            f"best {self.metric} {format_value(state.best_value)}"
        )
        self.progress.update(
            self.task,
            total=state.target,
            completed=min(state.finished, state.target),
            counts=counts,
            eta="-" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta)),
        )


def summary_table(study: optuna.Study, metric: str, top: int = 5) -> Table:
    """The best ``top`` complete trials with their searched params, plus state counts."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: float(t.value or 0.0), reverse=reverse)
    table = Table(
        title=f"{study.study_name}: {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed",
    )
    for column in ("trial", metric, "seconds"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("searched params", overflow="fold")
    for t in complete[:top]:
        seconds: Any = t.user_attrs.get("train_seconds")
        params = "  ".join(
            f"{name}={format_value(v) if isinstance(v, float) else v}"
            for name, v in sorted(t.params.items())
        )
        table.add_row(str(t.number), format_value(t.value), format_value(seconds), params)
    return table
