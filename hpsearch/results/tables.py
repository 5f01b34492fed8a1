"""Results as rows of text, for every place that shows them: numbers formatted for reading,
markdown tables, and the finalized models' test table (``hpsearch finalize``, the report page
and the dashboard's note)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def format_value(value: Any) -> str:
    """A number for the terminal: 6 significant digits; a whole number from 1,000 and any
    number from 1e5 in whole units with thousands separators (a parameter count reads the
    same wherever it shows); other values as they print."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 1e5 or (abs(value) >= 1e3 and float(value).is_integer()):
        return f"{value:,.0f}"
    return f"{value:.6g}"


def format_seconds(seconds: float | None) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds:.1f}"


def format_params(params: Mapping[str, Any]) -> str:
    """``name=value`` pairs, sorted, numbers formatted (``dropout=0.15``, not
    ``0.15000000000000002``)."""
    return "  ".join(f"{name}={format_value(value)}" for name, value in sorted(params.items()))


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "| --- |" + " ---: |" * (len(header) - 1), *map(line, rows)]


def finalize_columns(summary: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, test metrics) of each model in a stored ``finalize`` summary, in the order
    ``hpsearch finalize`` and ``hpsearch report`` show them: the tuned network, the ensemble,
    the calibrated intervals and the baselines, each where present."""
    columns: list[tuple[str, dict[str, Any]]] = [("network", summary["test"])]
    if summary.get("ensemble_test"):
        columns.append((f"ensemble ({summary['ensemble_size']})", summary["ensemble_test"]))
    if summary.get("calibration"):
        scale = summary["calibration"]["scale"]
        columns.append((f"sigma x {scale:.2f}", summary["calibration"]["test"]))
    baselines = summary.get("baselines") or []
    if summary.get("baseline"):  # one, as studies finalized before the tasks' several stored it
        baselines = [summary["baseline"]]
    columns.extend((baseline["name"], baseline["test"]) for baseline in baselines)
    return columns


def finalize_test_table(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the finalized models' test metrics, one row per numeric metric, as
    ``hpsearch finalize``, the report page and the dashboard note show them."""
    columns = finalize_columns(summary)
    names: dict[str, None] = {}  # ordered set: a metric may be missing from some columns
    for _, metrics in columns:
        names.update((k, None) for k, v in metrics.items() if is_number(v))
    rows = [
        [name, *(format_value(m[name] if is_number(m.get(name)) else None) for _, m in columns)]
        for name in names
    ]
    return ["metric", *(label for label, _ in columns)], rows


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finalize_lines(summary: Mapping[str, Any], metric: str) -> list[str]:
    lines = [
        f"Trial {summary['trial']}: validation {metric} {format_value(summary['val_mean'])} "
        f"± {format_value(summary['val_std'])} (mean ± std over seeds).",
        f"Retrained on {format_value(summary['train_rows'])} rows (train + validation), "
        f"scored once on {format_value(summary['test_rows'])} test rows.",
    ]
    if summary.get("pick") and summary["pick"] != metric:
        lines.append(f"Chosen by --pick {summary['pick']}.")
    if summary.get("costs"):
        lines.append(costs_line(summary["costs"]))
    if summary.get("calibration"):
        lines.append("sigma x s: the predicted sigma scaled by s, fitted on validation.")
    return lines


def costs_line(costs: Mapping[str, Any]) -> str:
    """A finalized model's costs (``training.costs``), in one sentence."""
    return (
        f"The model: {costs['params']:,.0f} parameters, {costs['size_bytes']:,.0f} bytes, "
        f"{costs['flops']:,.0f} FLOPs "
        f"and {format_value(costs['latency_ms'])} ms per example on {costs['device']}."
    )


def finalize_note(summary: Mapping[str, Any], metric: str) -> str:
    """Markdown for optuna-dashboard's study note: the ``finalize`` summary's test scores."""
    table = "\n".join(markdown_table(*finalize_test_table(summary)))
    heading = "## Finalized model (held-out test split)"
    return "\n\n".join([heading, *finalize_lines(summary, metric), table]) + "\n"
