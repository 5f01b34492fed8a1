"""``hpsearch report``: the lab report's tables and figures, rebuilt from a study's trials.

Writes into one folder:
- ``tables.md``: for each hyperparameter, the trials per bucket of values (from its search
  distribution) with the best and median validation score of the complete ones;
- ``curves-<param>.png``: every trial's validation curve coloured by the bucket of its batch
  size, learning rate, optimizer or loss, with each bucket's median in bold;
- ``history.png`` and ``importances.png``: Optuna's optimization history and parameter
  importances plots;
- ``index.html``: all of it in one self-contained page (figures embedded), plus the
  ``hpsearch finalize`` results when the study has them.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
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

from hpsearch.errors import HpsearchError
from hpsearch.results.tables import (
    finalize_lines,
    finalize_test_table,
    format_value,
    is_number,
    markdown_table,
)

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
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def ablation_tables(study: optuna.Study) -> dict[str, list[Row]]:
    """Per hyperparameter: trials per bucket and the best / median value of complete ones."""
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    choose = max if _maximize(study) else min
    tables: dict[str, list[Row]] = {}
    for name in sorted({name for trial in finished for name in trial.params}):
        tables[name] = []
        for label, trials in _groups(finished, name).items():
            scores = [
                t.value
                for t in trials
                if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
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
        f"# {study.study_name}: {metric} ({study.direction.name.lower()}) by hyperparameter",
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


def curves_figure(study: optuna.Study, param: str, metric: str, path: Path) -> bool:
    """Validation curves of every trial with intermediate values, coloured by ``param``."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if param in t.params and t.intermediate_values
    ]
    if not trials:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, group) in enumerate(_groups(trials, param).items()):
        color = plt.get_cmap("tab10")(i % 10)
        by_step: dict[int, list[float]] = defaultdict(list)
        for trial in group:
            steps = sorted(trial.intermediate_values)
            values = [trial.intermediate_values[s] for s in steps]
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
    _focus(ax, trials, _maximize(study))
    ax.legend(fontsize=8, title=param)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _focus(ax: Any, trials: Sequence[FrozenTrial], maximize: bool) -> None:
    """Zoom the y axis past diverged and hopeless curves, but keep every complete trial's
    final and reported values in view."""
    finite = sorted(v for t in trials for v in t.intermediate_values.values() if math.isfinite(v))
    if len(finite) < 4:
        return
    n = len(finite)
    low, high = (finite[n // 10], finite[-1]) if maximize else (finite[0], finite[9 * n // 10])
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            last = trial.intermediate_values[max(trial.intermediate_values)]
            for value in (last, trial.value):
                if value is not None and math.isfinite(value):
                    low, high = min(low, value), max(high, value)
    pad = (high - low) * 0.05 or abs(high) * 0.01 or 1.0
    ax.set_ylim(low - pad, high + pad)


def _optuna_figure(plot: str, study: optuna.Study, metric: str, path: Path, title: str) -> None:
    """Save ``optuna.visualization.matplotlib.<plot>`` of ``study``."""
    plt = _pyplot()  # before Optuna's module imports pyplot, to get the Agg backend
    import matplotlib
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    # rc_context: Optuna's plots switch pyplot to the ggplot style for good.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        ax = getattr(optuna_plots, plot)(study, target_name=metric)
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


def build_report(study: optuna.Study, out: Path) -> Path:
    """Write the report's files into ``out``; returns the HTML page's path.

    Raises:
        HpsearchError: the study has no finished trial, or ``out`` cannot be written.
    """
    counts = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 0:
        raise HpsearchError(f"study {study.study_name!r} has no finished trial to report on")
    try:
        return _write_report(study, out, counts)
    except OSError as error:
        raise HpsearchError(f"cannot write to {out}: {error.strerror or error}") from None


def _write_report(study: optuna.Study, out: Path, counts: Counter[TrialState]) -> Path:
    metric = str(study.user_attrs.get("metric", "value"))
    out.mkdir(parents=True, exist_ok=True)
    tables = ablation_tables(study)
    (out / "tables.md").write_text(tables_markdown(study, tables, metric), encoding="utf-8")
    figures: list[tuple[str, Path]] = []
    complete = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    plots = []
    if complete:
        plots.append(("Optimization history", "plot_optimization_history", "history.png"))
    # Importances from fewer trials are noise (Optuna then calls them all equal).
    if len(complete) >= 4 and any(t.params for t in complete):
        plots.append(("Hyperparameter importances", "plot_param_importances", "importances.png"))
    for title, plot, name in plots:
        _optuna_figure(plot, study, metric, out / name, title)
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
        f"<p>Problem {html.escape(str(study.user_attrs.get('problem', '?')))}; objective "
        f"{html.escape(metric)} ({study.direction.name.lower()}); "
        f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed trials.</p>",
    ]
    if complete:
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
    final = study.user_attrs.get("finalize")
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
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
