"""``hpsearch report``: the lab report's tables and figures, rebuilt from a study's trials.

Writes into one folder:
- ``tables.md``: for each hyperparameter, the trials per bucket of values (from its search
  distribution) with the best and median validation score of the complete ones;
- ``curves-<param>.png``: every trial's validation curve coloured by the bucket of its batch
  size, learning rate, optimizer or loss, with each bucket's median in bold;
- ``history.png`` and ``importances.png``: Optuna's optimization history and parameter
  importances plots (of several objectives, of the learning-curve metric);
- of several objectives, ``front.png`` and ``hypervolume.png``: Optuna's Pareto front and
  hypervolume history plots, and the front as a table;
- ``index.html``: all of it in one self-contained page (figures embedded), plus the
  ``hpsearch finalize`` results when the study has them.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hpsearch import record
from hpsearch.errors import HpsearchError
from hpsearch.record import curve_index, objective_names, study_counts
from hpsearch.results.tables import (
    finalize_lines,
    finalize_test_table,
    format_params,
    format_value,
    is_number,
    markdown_table,
)
from hpsearch.storage.counts import is_feasible
from hpsearch.storage.files import replacing_folder

CURVE_PARAMS = ("batch_size", "lr", "optimizer", "loss")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_VALUES = 8  # a parameter with at most this many possible values gets a row per value
BINS = 5  # otherwise (unless log-scale) this many equal-width bins


@dataclass
class Row:
    value: str
    trials: int
    complete: int
    best: float | None
    median: float | None


def bucket(value: Any, distribution: BaseDistribution) -> tuple[float, str]:
    """Where tables and curves group a parameter's value: (sort order, label)."""
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices.index(value), str(value)
    assert isinstance(distribution, FloatDistribution | IntDistribution), distribution
    low, high, step = distribution.low, distribution.high, distribution.step
    integer = isinstance(distribution, IntDistribution)
    if distribution.log:
        start = 10.0 ** math.floor(math.log10(value))
        return start, f"{start:g}..{start * 10:g}" if integer else f"{start:.0e}..{start * 10:.0e}"
    count = math.inf if step is None else round((high - low) / step) + 1
    if count <= MAX_VALUES or high == low:
        return value, f"{value:g}"
    if isinstance(distribution, IntDistribution):  # whole values per bin: inclusive labels
        span = math.ceil(count / BINS) * distribution.step
        first = low + (value - low) // span * span
        return first, f"{first}..{min(first + span - distribution.step, high)}"
    width = (high - low) / BINS
    # The epsilon keeps a stepped value on a bin edge (0.3 = 2.9999.. widths) in the upper bin.
    start = low + width * min(int((value - low) / width + 1e-9), BINS - 1)
    return start, f"{start:.3g}..{start + width:.3g}"


def _groups(trials: Sequence[FrozenTrial], name: str) -> dict[str, list[FrozenTrial]]:
    """The trials that have ``name``, by bucket, in bucket order."""
    groups: dict[str, list[FrozenTrial]] = defaultdict(list)
    order: dict[str, float] = {}
    for trial in trials:
        if name in trial.params:
            # Keyed by label: a study resumed with an edited space may bucket a value twice.
            key, label = bucket(trial.params[name], trial.distributions[name])
            order.setdefault(label, key)
            groups[label].append(trial)
    return {label: groups[label] for label in sorted(groups, key=lambda k: (order[k], k))}


def _maximize(study: optuna.Study) -> bool:
    return study.directions[curve_index(study)] == optuna.study.StudyDirection.MAXIMIZE


def _score(trial: FrozenTrial, curve: int) -> float | None:
    """A complete trial's final value of objective ``curve``, the learning curve's."""
    if trial.values is None:
        return None
    value = trial.values[curve]
    return value if math.isfinite(value) else None


def ablation_tables(study: optuna.Study) -> dict[str, list[Row]]:
    """Per hyperparameter: trials per bucket and the best / median value of complete ones."""
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    choose = max if _maximize(study) else min
    curve = curve_index(study)
    tables: dict[str, list[Row]] = {}
    for name in sorted({name for trial in finished for name in trial.params}):
        tables[name] = []
        for label, trials in _groups(finished, name).items():
            scores = [
                score
                for t in trials
                if t.state == TrialState.COMPLETE and (score := _score(t, curve)) is not None
            ]
            median = statistics.median(scores) if scores else None
            tables[name].append(
                Row(label, len(trials), len(scores), choose(scores, default=None), median)
            )
    return tables


def _cells(row: Row) -> list[str]:
    best, median = format_value(row.best), format_value(row.median)
    return [row.value, str(row.trials), str(row.complete), best, median]


def tables_markdown(study: optuna.Study, tables: dict[str, list[Row]], metric: str) -> str:
    lines = [
        f"# {study.study_name}: {metric} ({study.directions[curve_index(study)].name.lower()}) "
        "by hyperparameter",
        "",
        "Best and median over complete trials; trials counts pruned ones too.",
    ]
    for name, rows in tables.items():
        header = [name, "trials", "complete", "best", "median"]
        lines += ["", f"## {name}", "", *markdown_table(header, [_cells(r) for r in rows])]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(trial: FrozenTrial) -> dict[int, float]:
    """A trial's validation metric by epoch: Optuna's intermediate values, or of several
    objectives the ``curve`` user attribute (``search.pareto_pruning``)."""
    if trial.intermediate_values:
        return dict(trial.intermediate_values)
    return {int(epoch): float(v) for epoch, v in trial.user_attrs.get(record.CURVE, {}).items()}


def curves_figure(study: optuna.Study, param: str, metric: str, path: Path) -> bool:
    """Validation curves of every trial with intermediate values, coloured by ``param``."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if param in t.params and learning_curve(t)
    ]
    if not trials:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, group) in enumerate(_groups(trials, param).items()):
        color = plt.get_cmap("tab10")(i % 10)
        by_step: dict[int, list[float]] = defaultdict(list)
        for trial in group:
            curve = learning_curve(trial)
            steps = sorted(curve)
            values = [curve[s] for s in steps]
            ax.plot(steps, values, color=color, alpha=0.18, linewidth=0.8)
            for step, value in zip(steps, values, strict=True):
                if math.isfinite(value):
                    by_step[step].append(value)
        steps = sorted(by_step)
        medians = [statistics.median(by_step[s]) for s in steps]
        ax.plot(steps, medians, color=color, linewidth=2.2, label=f"{label} ({len(group)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}: validation curves by {param} (bold: median)")
    objective = curve_index(study)
    _focus(ax, trials, _maximize(study), lambda t: _score(t, objective))
    ax.legend(fontsize=8, title=param)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _focus(
    ax: Any,
    trials: Sequence[FrozenTrial],
    maximize: bool,
    score: Callable[[FrozenTrial], float | None],
) -> None:
    """Zoom the y axis past diverged and hopeless curves, but keep every complete trial's
    final and reported values in view."""
    curves = {t.number: learning_curve(t) for t in trials}
    finite = sorted(v for c in curves.values() for v in c.values() if math.isfinite(v))
    if len(finite) < 4:
        return
    n = len(finite)
    low, high = (finite[n // 10], finite[-1]) if maximize else (finite[0], finite[9 * n // 10])
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            curve = curves[trial.number]
            last = curve[max(curve)]
            for value in (last, score(trial)):
                if value is not None and math.isfinite(value):
                    low, high = min(low, value), max(high, value)
    pad = (high - low) * 0.05 or abs(high) * 0.01 or 1.0
    ax.set_ylim(low - pad, high + pad)


def _optuna_figure(
    plot: str, study: optuna.Study, metric: str, path: Path, title: str, **options: Any
) -> None:
    """Save ``optuna.visualization.matplotlib.<plot>`` of ``study`` (a study of several
    objectives: of its learning-curve metric, unless ``options`` say otherwise)."""
    plt = _pyplot()  # before Optuna's module imports pyplot, to get the Agg backend
    import matplotlib
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    # rc_context: Optuna's plots switch pyplot to the ggplot style for good.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        of_front = plot in ("plot_pareto_front", "plot_hypervolume_history")
        if len(study.directions) > 1 and not of_front:
            curve = curve_index(study)
            options = {"target": lambda t: t.values[curve], "target_name": metric} | options
        elif not of_front:
            options = {"target_name": metric} | options
        ax = getattr(optuna_plots, plot)(study, **options)
        ax.set_title("", loc="left")  # where the importances plot puts its own title
        ax.set_title(f"{study.study_name}: {title.lower()}")
        # bbox_inches: the history plot's legend sits outside the axes.
        ax.figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(ax.figure)


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def cells(tag: str, row: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row) + "</tr>"

    body = "".join(cells("td", row) for row in rows)
    return f"<table><thead>{cells('th', header)}</thead><tbody>{body}</tbody></table>"


def _objectives(study: optuna.Study) -> str:
    return ", ".join(
        f"{m} ({d.name.lower()})"
        for m, d in zip(objective_names(study), study.directions, strict=True)
    )


def reference_point(study: optuna.Study) -> list[float]:
    """The hypervolume's reference point: each objective's worst value among the complete
    feasible trials, a tenth of its range further out (so the worst trials count too)."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
        if is_feasible(t) and t.values is not None
    ]
    point = []
    for i, direction in enumerate(study.directions):
        values = [t.values[i] for t in trials if math.isfinite(t.values[i])]
        low, high = min(values), max(values)
        margin = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
        maximize = direction == optuna.study.StudyDirection.MAXIMIZE
        point.append(low - margin if maximize else high + margin)
    return point


def front_rows(
    front: Sequence[FrozenTrial], metrics: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """The Pareto front as a table: trial, each objective, searched params."""
    rows = [
        [str(t.number), *(format_value(v) for v in t.values), format_params(t.params)]
        for t in sorted(front, key=lambda t: t.values[0])
    ]
    return ["trial", *metrics, "searched params"], rows


def is_report_file(name: str) -> bool:
    """Whether a file named ``name`` in a report folder is one the report writes."""
    return name in ("index.html", "tables.md") or name.endswith(".png")


def build_report(study: optuna.Study, out: Path) -> Path:
    """Write the report's files into the folder ``out``, in place of an earlier report's
    (built beside it and swapped in); returns the HTML page's path.

    Raises:
        HpsearchError: the study has no finished trial, or ``out`` holds other files or
            cannot be written.
    """
    counts = study_counts(study)
    if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 0:
        raise HpsearchError(f"study {study.study_name!r} has no finished trial to report on")
    with replacing_folder(out, is_report_file) as folder:
        _write_report(study, folder, counts)
    return out / "index.html"


def _write_report(study: optuna.Study, out: Path, counts: Mapping[TrialState, int]) -> None:
    metric = str(study.user_attrs.get(record.METRIC, "value"))
    tables = ablation_tables(study)
    (out / "tables.md").write_text(tables_markdown(study, tables, metric), encoding="utf-8")
    figures: list[tuple[str, Path]] = []
    complete = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    metrics = objective_names(study)
    front = sorted(study.best_trials, key=lambda t: t.number) if len(metrics) > 1 else []
    plots: list[tuple[str, str, str, dict[str, Any]]] = []
    if front and len(metrics) <= 3:  # Optuna draws fronts of 2 or 3 objectives
        plots.append(("Pareto front", "plot_pareto_front", "front.png", {"target_names": metrics}))
    if front:
        reference = {"reference_point": reference_point(study)}
        title = "Hypervolume of the front, trial by trial"
        plots.append((title, "plot_hypervolume_history", "hypervolume.png", reference))
    if complete:
        plots.append(("Optimization history", "plot_optimization_history", "history.png", {}))
    # Importances from fewer trials are noise (Optuna then calls them all equal).
    if len(complete) >= 4 and any(t.params for t in complete):
        title = "Hyperparameter importances"
        plots.append((title, "plot_param_importances", "importances.png", {}))
    for title, plot, name, options in plots:
        _optuna_figure(plot, study, metric, out / name, title, **options)
        figures.append((title, out / name))
    for param in CURVE_PARAMS:
        path = out / f"curves-{param}.png"
        if curves_figure(study, param, metric, path):
            figures.append((f"Validation curves by {param}", path))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hpsearch report: {html.escape(study.study_name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(study.study_name)}</h1>",
        f"<p>Problem {html.escape(str(study.user_attrs.get(record.PROBLEM, '?')))}; objective "
        f"{html.escape(_objectives(study))}; "
        f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed trials.</p>",
    ]
    limits = study.user_attrs.get(record.CONSTRAINTS, [])
    if limits:
        parts.append(
            f"<p>Limits: {html.escape(', '.join(limits))}; infeasible trials are never chosen.</p>"
        )
    if front:
        parts.append(f"<h2>Pareto front: {len(front)} feasible trials</h2>")
        parts.append(_html_table(*front_rows(front, metrics)))
    elif complete:
        best = study.best_trial
        parts.append(f"<h2>Best trial: {best.number}, {metric} = {format_value(best.value)}</h2>")
        parts.append(
            _html_table(
                ["param", "value"],
                [
                    [k, format_value(v) if is_number(v) else str(v)]
                    for k, v in sorted(best.params.items())
                ],
            )
        )
    final = study.user_attrs.get(record.FINALIZE)
    if final:
        parts.append("<h2>Finalized model (hpsearch finalize), held-out test split</h2>")
        parts += [f"<p>{html.escape(line)}</p>" for line in finalize_lines(final, metric)]
        parts.append(_html_table(*finalize_test_table(final)))
    parts.append("<h2>Tables: score by hyperparameter value</h2>")
    for name, rows in tables.items():
        header = [name, "trials", "complete", "best", "median"]
        parts.append(f"<h3>{html.escape(name)}</h3>{_html_table(header, list(map(_cells, rows)))}")
    parts.append("<h2>Figures</h2>")
    parts += [f"<h3>{html.escape(title)}</h3>{_embed(path)}" for title, path in figures]
    parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(parts), encoding="utf-8")
