"""Terminal output of every command: a run's live progress (or one plain line per finished
trial when the output is not a terminal), and the tables of ``studies``, ``best``,
``trials`` and ``finalize``. Every table fits an 80-column terminal: long cells fold.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from hpsearch import record
from hpsearch.record import trial_counts
from hpsearch.results.tables import (
    costs_line,
    finalize_test_table,
    format_params,
    format_seconds,
    format_value,
)
from hpsearch.storage.counts import is_feasible

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from rich.progress import Progress

    from hpsearch.results.final_result import Candidate, FinalResult
    from hpsearch.results.summaries import StudySummary
    from hpsearch.search.progress import StudyProgress
    from hpsearch.search.study_file import StudyConfig
    from hpsearch.settings import Settings


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))  # H:MM:SS, as rich's elapsed time


def eta_seconds(state: StudyProgress, now: float) -> float | None:
    """Remaining time at this run's pace so far; ``None`` before any trial finished."""
    if state.trials_this_run == 0:
        return None
    remaining = max(state.target - state.finished, 0)
    return (now - state.started_at) / state.trials_this_run * remaining


def trial_line(
    trial: FrozenTrial, metrics: Sequence[str], state: StudyProgress, verbose: bool
) -> str:
    """One finished trial: number, state, its objectives' values (or where it stopped), the
    study's count and best so far (of several objectives: the front's size), and with
    ``verbose`` the trial's searched params."""
    if trial.state == TrialState.COMPLETE:
        values = "  ".join(
            f"{m} {format_value(v)}" for m, v in zip(metrics, trial.values or [], strict=False)
        )
        infeasible = "" if is_feasible(trial) else "  (infeasible)"
        outcome = f"complete  {values}{infeasible}"
    elif str(trial.user_attrs.get(record.PRUNED_REASON, "")).startswith(record.NOT_TRAINED):
        outcome = f"pruned, infeasible: {trial.user_attrs[record.PRUNED_REASON]}"
    elif trial.state == TrialState.PRUNED:
        epoch = trial.user_attrs.get(record.EPOCHS_RUN, max(trial.intermediate_values, default=0))
        outcome = f"pruned after epoch {epoch}"
    else:
        outcome = f"failed: {trial.user_attrs.get(record.FAIL_REASON, 'error')}"
    elapsed = _clock(time.monotonic() - state.started_at)
    line = (
        f"[{elapsed}] trial {trial.number} {outcome}  "
        f"({state.finished}/{state.target} finished, {_best(state)})"
    )
    return f"{line}\n    {format_params(trial.params)}" if verbose else line


def _best(state: StudyProgress, metric: str = "") -> str:
    if state.front is not None:
        return f"front {state.front}"
    return f"best {metric + ' ' if metric else ''}{format_value(state.best_value)}"


def _two_line_progress(console: Console, counts: Callable[[], str]) -> Progress:
    """rich's progress bar (trials done / target, elapsed, ETA) with the study's counts on a
    second line, so that nothing is cut at 80 columns. (rich.progress is imported here: the
    commands that print only tables do not need it.)"""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class TwoLineProgress(Progress):
        def get_renderables(self) -> Iterable[RenderableType]:
            yield self.make_tasks_table(self.tasks)
            yield Text(counts(), overflow="fold")

    return TwoLineProgress(
        TextColumn("trials"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        expand=True,
    )


def run_header(config: StudyConfig, settings: Settings) -> str:
    """What ``hpsearch run`` is about to do, in one line (rich markup; no password)."""
    from rich.markup import escape

    from hpsearch.storage.urls import redact

    workers = f"{settings.workers} worker{'s' if settings.workers != 1 else ''}"
    objectives = ", ".join(
        f"{d} {m}" for m, d in zip(config.metrics, config.directions, strict=True)
    )
    limits = "".join(f", {limit.describe()}" for limit in config.limits)
    return (
        f"study [bold]{escape(settings.study_name)}[/bold] ({config.problem.name}, "
        f"{objectives}{limits}) on {escape(redact(settings.storage))}: "
        f"{settings.trials} trials, sampler {settings.sampler}, pruner {settings.pruner}, "
        f"{workers}"
    )


class RunProgress:
    """What ``hpsearch run`` shows while trials run. On a terminal: a live bar (finished /
    target, elapsed, ETA) over a line of counts (complete, pruned, failed, best). Elsewhere
    (a log file, a pipe): one plain line per finished trial. ``verbose`` prints those lines
    on a terminal too, with each trial's params."""

    def __init__(
        self, console: Console, metrics: Sequence[str], *, header: str = "", verbose: bool = False
    ) -> None:
        self.console = console
        self.metrics = metrics
        self.header = header  # printed with the first update: once the study is open
        self.verbose = verbose
        self.live = console.is_terminal
        self.counts = ""  # the second line
        self.progress = _two_line_progress(console, lambda: self.counts)
        self.task = self.progress.add_task("trials", total=None, eta="-")

    def __enter__(self) -> RunProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live:
            self.progress.stop()

    def note(self, line: str) -> None:
        """Print ``line`` (plain text) under the header, above the live display."""
        self._print_header()
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def _print_header(self) -> None:
        if self.header:
            self.console.print(self.header)
            self.header = ""

    def update(self, state: StudyProgress) -> None:
        self._print_header()
        if self.verbose or not self.live:
            for trial in state.new_trials:
                line = trial_line(trial, self.metrics, state, self.verbose)
                self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        if not self.live:
            return
        eta = eta_seconds(state, time.monotonic())
        self.counts = (
            f"complete {state.complete}  pruned {state.pruned}  failed {state.failed}  "
            f"{_best(state, self.metrics[0])}"
        )
        self.progress.update(
            self.task,
            total=state.target,
            completed=min(state.finished, state.target),
            eta="-" if eta is None else _clock(eta),
        )


def _titled(title: str, table: Table, note: str | None = None) -> Group:
    """A table under a title line (and over a note) that wrap at the terminal's width, not
    at the table's."""
    parts: list[RenderableType] = [Text(title, style="bold"), table]
    return Group(*parts, *([Text(note)] if note else []))


def summary_table(study: optuna.Study, metrics: Sequence[str], top: int = 5) -> Group:
    """The best ``top`` feasible complete trials with their searched params (of several
    objectives: the Pareto front, by the first objective), plus state counts."""
    trials = study.get_trials(deepcopy=False)
    counts = trial_counts(trials)
    if len(study.directions) > 1:
        best = study.best_trials if counts[TrialState.COMPLETE] else []
        shown = sorted(best, key=lambda t: t.values[0], reverse=_maximize(study, 0))
    else:
        shown = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE and t.value is not None and is_feasible(t)
        ]
        shown.sort(key=lambda t: float(t.value or 0.0), reverse=_maximize(study, 0))
        shown = shown[:top]
    table = Table()
    for column in ("trial", *metrics, "seconds"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("searched params", overflow="fold")
    for t in shown:
        seconds = t.user_attrs.get(record.TRAIN_SECONDS)
        values = [format_value(v) for v in t.values or []]
        table.add_row(str(t.number), *values, format_seconds(seconds), format_params(t.params))
    infeasible = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not is_feasible(t) for t in trials
    )
    title = (
        f"{study.study_name}: {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
        + (f"; {infeasible} infeasible" if infeasible else "")
        + (f"; Pareto front of {len(shown)}" if len(study.directions) > 1 else "")
    )
    return _titled(title, table)


def _maximize(study: optuna.Study, objective: int) -> bool:
    return study.directions[objective].name == "MAXIMIZE"


def _objectives(metrics: Sequence[str], directions: Sequence[str]) -> str:
    """``max val_accuracy, min params``."""
    return ", ".join(
        f"{'max' if d == 'maximize' else 'min'} {m}"
        for m, d in zip(metrics, directions, strict=True)
    )


def studies_table(summaries: list[StudySummary]) -> Group:
    """One row per study: its problem and objective, trials by state, best value."""
    table = Table()
    table.add_column("study", overflow="fold")
    table.add_column("problem, objective", overflow="fold")
    table.add_column("trials", overflow="fold")
    table.add_column("best", justify="right", no_wrap=True)
    for s in summaries:
        objective = _objectives(s.metrics, s.directions)
        trials = f"{s.counts['COMPLETE']} complete, {s.counts['PRUNED']} pruned"
        for state in ("FAIL", "RUNNING", "WAITING"):
            if s.counts.get(state):
                trials += f", {s.counts[state]} {state.lower().replace('fail', 'failed')}"
        best = f"front of {s.front}" if s.front is not None else format_value(s.best)
        table.add_row(s.name, f"{s.problem}, {objective}", trials, best)
    return _titled(f"{len(summaries)} studies", table)


def front_table(best: Mapping[str, Any]) -> Group:
    """The Pareto front of a study of several objectives (``summaries.best_trial``): one row
    per trial, its objectives' values and searched params."""
    metrics = best["metrics"]
    table = Table()
    for column in ("trial", *metrics):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("searched params", overflow="fold")
    front = sorted(best["front"], key=lambda r: r["values"][metrics[0]])
    for r in front:
        values = [format_value(r["values"][m]) for m in metrics]
        table.add_row(str(r["trial"]), *values, format_params(r["params"]))
    objectives = _objectives(metrics, best["directions"])
    limits = f" within {', '.join(best['constraints'])}" if best["constraints"] else ""
    title = f"{best['study']}: Pareto front of {len(front)} trials ({objectives}){limits}"
    return _titled(title, table, "finalize one: hpsearch finalize STUDY --pick METRIC or --trial N")


def best_table(best: Mapping[str, Any]) -> Group:
    """A best-trial record (``studies.best_trial``): full configuration, searched params
    marked with *, then its metrics and attributes (of several objectives: ``front_table``)."""
    if "front" in best:
        return front_table(best)
    table = Table()
    table.add_column("key", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in sorted(best["config"].items()):
        table.add_row(key + (" *" if key in best["params"] else ""), format_value(value))
    for key, value in sorted(best["metrics"].items()):
        table.add_row(key, format_value(value))
    title = (
        f"{best['study']}: best trial {best['trial']}, "
        f"{best['metric']} = {format_value(best['value'])}"
    )
    note = "* searched; the rest were fixed by the study file or the lab report's defaults"
    return _titled(title, table, note)


def trials_table(frame: pd.DataFrame, study_name: str) -> Group:
    """One row per trial: number, state (and whether it broke a limit), its objectives'
    values, duration and its searched params in one folding column (a column per param does
    not fit a terminal)."""
    table = Table()
    # Optuna names the value columns after the study's metrics (``value_val_accuracy``, of
    # several objectives ``values_params``...); none while no trial has a value.
    values = [c for c in frame.columns if c == "value" or c.startswith(("value_", "values_"))]
    labels = [c.split("_", 1)[1] if "_" in c else c for c in values] or ["value"]
    for column in ("trial", "state", *labels, "seconds"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("searched params", overflow="fold")
    params = [c for c in frame.columns if c.startswith("params_")]
    for _, row in frame.iterrows():
        seconds = row["duration"].total_seconds() if "duration" in row else None
        searched = {c.removeprefix("params_"): row[c] for c in params if _given(row[c])}
        state = str(row["state"]).lower()
        if "feasible" in row and not row["feasible"]:
            state += ", infeasible"
        table.add_row(
            str(row["number"]),
            state,
            *([format_value(row[c]) for c in values] or [""]),
            format_seconds(seconds),
            format_params(searched),
        )
    return _titled(f"{study_name}: {len(frame)} trials", table)


def _given(value: Any) -> bool:
    return not (isinstance(value, float) and math.isnan(value))


def candidate_line(candidate: Candidate) -> str:
    """One retrained configuration of ``finalize``: its validation mean ± std over seeds."""
    return (
        f"  trial {candidate.trial}: validation {format_value(candidate.mean)} "
        f"± {format_value(candidate.std)} over {len(candidate.val_scores)} seeds "
        f"(search: {format_value(candidate.search_value)}; {candidate.seconds:.0f} s)"
    )


def retrain_line(trial: FrozenTrial, metric: str) -> str:
    """One of ``finalize``'s retrains as it starts or ends: its configuration's trial, seed
    and rows, and (ended) its worker, seconds and validation ``metric``, or why it
    stopped."""
    attrs = trial.user_attrs
    what = (
        f"  retrain of trial {attrs[record.RETRAIN_OF]}, seed {attrs[record.SEED]}, on "
        f"{attrs[record.ROWS]}"
    )
    worker = attrs.get(record.WORKER, "?")
    if trial.state == TrialState.RUNNING:
        return f"{what}: started"
    seconds = format_seconds(attrs.get(record.TRAIN_SECONDS))
    if trial.state == TrialState.COMPLETE:
        score = f", {metric} {format_value(attrs[metric])}" if metric in attrs else ""
        return f"{what}: done on {worker} in {seconds} s{score}"
    if trial.state == TrialState.PRUNED:
        return f"{what}: diverged ({attrs.get(record.PRUNED_REASON, '')})"
    return f"{what}: failed on {worker}: {attrs.get(record.FAIL_REASON, 'error')}"


def finalize_table(result: FinalResult) -> Group:
    """Test metrics (rows) of the tuned network, the ensemble, the calibrated intervals and
    the baselines (columns); a metric that is not one number (per-class accuracy) follows
    the table as a line of its own."""
    header, rows = finalize_test_table(result.summary())
    table = Table()
    table.add_column("test metric", overflow="fold")
    for label in header[1:]:
        table.add_column(label, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    notes = [
        f"{header[1]} {key}: " + "  ".join(f"{k}: {format_value(v)}" for k, v in value.items())
        for key, value in result.test_metrics.items()
        if isinstance(value, Mapping)
    ]
    if result.pick and result.pick != result.metric:
        notes.append(f"chosen by --pick {result.pick}")
    if result.costs:
        notes.append(costs_line(result.costs))
    title = (
        f"{result.study}: trial {result.chosen.trial} retrained on {result.train_rows} rows, "
        f"scored once on {result.test_rows} test rows"
    )
    return _titled(title, table, "\n".join(notes) or None)
