"""``hpsearch report``: the lab report's tables and figures, rebuilt from a study's trials.

Writes into one folder:
- ``tables.md``: for each hyperparameter, the trials per value with the best and median
  validation score of the complete ones (floats by decade buckets), as the report's
  ablation tables;
- ``curves-<param>.png``: validation curves per epoch (every trial's intermediate values),
  coloured by batch size, learning-rate decade, optimizer and loss, with each group's median;
- ``history.png`` (optimization history) and ``importances.png`` (Optuna's fANOVA
  parameter importances);
- ``index.html``: all of it in one self-contained page (figures embedded), plus the
  ``hpsearch finalize`` results when the study has them.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.display import format_value
from hpsearch.errors import HpsearchError
from hpsearch.finalize import test_columns

CURVE_PARAMS = ("batch_size", "lr", "optimizer", "loss")


@dataclass
class Row:
    value: str
    trials: int
    complete: int
    best: float | None
    median: float | None


def bucket(name: str, value: Any) -> str:
    """The value a table or figure groups by: floats by decade (``1e-3..1e-2``) for
    learning rates and other log-scale numbers, else the value itself."""
    if isinstance(value, float):
        if value > 0 and (name in ("lr", "weight_decay") or value < 0.01):
            low = 10 ** math.floor(math.log10(value))
            return f"{low:.0e}..{low * 10:.0e}"
        return f"{value:g}"
    return str(value)


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text.split("..")[0]), text)
    except ValueError:
        return (1, 0.0, text)


def ablation_tables(study: optuna.Study) -> dict[str, list[Row]]:
    """Per hyperparameter: trials per value and the best / median value of complete ones."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    finished = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.PRUNED])
    groups: dict[str, dict[str, list[FrozenTrial]]] = defaultdict(lambda: defaultdict(list))
    for trial in finished:
        for name, value in trial.params.items():
            groups[name][bucket(name, value)].append(trial)
    tables: dict[str, list[Row]] = {}
    for name in sorted(groups):
        rows = []
        for value in sorted(groups[name], key=_sort_key):
            trials = groups[name][value]
            scores = [
                t.value
                for t in trials
                if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
            ]
            best = (max(scores) if maximize else min(scores)) if scores else None
            rows.append(
                Row(
                    value=value,
                    trials=len(trials),
                    complete=len(scores),
                    best=best,
                    median=statistics.median(scores) if scores else None,
                )
            )
        tables[name] = rows
    return tables


def tables_markdown(study: optuna.Study, tables: dict[str, list[Row]], metric: str) -> str:
    direction = study.direction.name.lower()
    lines = [
        f"# {study.study_name}: {metric} ({direction}) by hyperparameter value",
        "",
        "Best and median over complete trials; trials counts pruned ones too.",
    ]
    for name, rows in tables.items():
        lines += ["", f"## {name}", "", f"| {name} | trials | complete | best | median |"]
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for row in rows:
            lines.append(
                f"| {row.value} | {row.trials} | {row.complete} | {format_value(row.best)} "
                f"| {format_value(row.median)} |"
            )
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
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.PRUNED])
        if param in t.params and t.intermediate_values
    ]
    if not trials:
        return False
    plt = _pyplot()
    groups: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trial in trials:
        groups[bucket(param, trial.params[param])].append(trial)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.get_cmap("tab10")
    for i, value in enumerate(sorted(groups, key=_sort_key)):
        color = colors(i % 10)
        by_step: dict[int, list[float]] = defaultdict(list)
        for trial in groups[value]:
            steps = sorted(trial.intermediate_values)
            values = [trial.intermediate_values[s] for s in steps]
            ax.plot(steps, values, color=color, alpha=0.18, linewidth=0.8)
            for step, v in zip(steps, values, strict=True):
                if math.isfinite(v):
                    by_step[step].append(v)
        steps = sorted(by_step)
        medians = [statistics.median(by_step[s]) for s in steps]
        ax.plot(steps, medians, color=color, linewidth=2.2, label=f"{value} ({len(groups[value])})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}: validation curves by {param} (bold: median)")
    _focus(ax, [v for t in trials for v in t.intermediate_values.values()], study)
    ax.legend(fontsize=8, title=param)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _focus(ax: Any, values: Iterable[float], study: optuna.Study) -> None:
    """Zoom the y axis on the useful range: diverged and hopeless trials off-scale."""
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < 4:
        return
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if maximize:
        low, high = finite[len(finite) // 10], finite[-1]
    else:
        low, high = finite[0], finite[(9 * len(finite)) // 10]
    pad = (high - low) * 0.05 or abs(high) * 0.01 or 1.0
    ax.set_ylim(low - pad, high + pad)


def history_figure(study: optuna.Study, metric: str, path: Path) -> bool:
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
        if t.value is not None and math.isfinite(t.value)
    ]
    if not complete:
        return False
    plt = _pyplot()
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    numbers = [t.number for t in complete]
    values = [float(t.value) for t in complete]  # type: ignore[arg-type]
    best, running = [], -math.inf if maximize else math.inf
    for value in values:
        running = max(running, value) if maximize else min(running, value)
        best.append(running)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.scatter(numbers, values, s=10, alpha=0.6, label="complete trial")
    ax.step(numbers, best, where="post", color="C3", linewidth=2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}: optimization history")
    _focus(ax, values, study)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's fANOVA importances over complete trials; empty when too few."""
    complete = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    if len(complete) < 4:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study, normalize=True))
    except (RuntimeError, ValueError):  # e.g. a single distinct configuration
        return {}


def importances_figure(study: optuna.Study, scores: dict[str, float], path: Path) -> bool:
    if not scores:
        return False
    plt = _pyplot()
    names = list(scores)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    ax.barh(names, [scores[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA, normalized)")
    ax.set_title(f"{study.study_name}: hyperparameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(study: optuna.Study, out: Path) -> Path:
    """Write the report's files into ``out``; returns the HTML page's path.

    Raises:
        HpsearchError: the study has no finished trial, or ``out`` cannot be written.
    """
    from hpsearch.search import study_counts

    counts = study_counts(study)
    if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 0:
        raise HpsearchError(f"study {study.study_name!r} has no finished trial to report on")
    metric = str(study.user_attrs.get("metric", "value"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HpsearchError(f"cannot write to {out}: {error.strerror}") from None
    tables = ablation_tables(study)
    (out / "tables.md").write_text(tables_markdown(study, tables, metric))
    figures: list[tuple[str, Path]] = []
    if history_figure(study, metric, out / "history.png"):
        figures.append(("Optimization history", out / "history.png"))
    scores = importances(study)
    if importances_figure(study, scores, out / "importances.png"):
        figures.append(("Hyperparameter importances", out / "importances.png"))
    for param in CURVE_PARAMS:
        path = out / f"curves-{param}.png"
        if curves_figure(study, param, metric, path):
            figures.append((f"Validation curves by {param}", path))

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hpsearch report: {html.escape(study.study_name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(study.study_name)}</h1>",
        f"<p>Problem {html.escape(str(study.user_attrs.get('problem', '?')))}; objective "
        f"{html.escape(metric)} ({'maximize' if maximize else 'minimize'}); "
        f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed trials.</p>",
    ]
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        parts.append(f"<h2>Best trial: {best.number}, {metric} = {format_value(best.value)}</h2>")
        parts.append(
            _html_table(["param", "value"], [[k, str(v)] for k, v in sorted(best.params.items())])
        )
    final = study.user_attrs.get("finalize")
    if final:
        parts.append("<h2>Finalized model (hpsearch finalize), held-out test split</h2>")
        columns = test_columns(final)
        rows = [
            [key, *(format_value(metrics.get(key)) for _, metrics in columns)]
            for key, value in final["test"].items()
            if isinstance(value, int | float)
        ]
        parts.append(
            f"<p>Trial {final['trial']} retrained on {final['train_rows']} rows, scored once "
            f"on {final['test_rows']} test rows.</p>"
        )
        parts.append(_html_table(["metric", *(name for name, _ in columns)], rows))
    parts.append("<h2>Tables: score by hyperparameter value</h2>")
    for name, table_rows in tables.items():
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts.append(
            _html_table(
                [name, "trials", "complete", "best", "median"],
                [
                    [
                        r.value,
                        str(r.trials),
                        str(r.complete),
                        format_value(r.best),
                        format_value(r.median),
                    ]
                    for r in table_rows
                ],
            )
        )
    parts.append("<h2>Figures</h2>")
    for title, path in figures:
        parts.append(f"<h3>{html.escape(title)}</h3>{_embed(path)}")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    return page
