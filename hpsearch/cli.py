"""The ``hpsearch`` command line. Each command parses options and calls one library function;
errors from bad input print one line and exit non-zero."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpsearch.display import format_value
from hpsearch.errors import HpsearchError

app = typer.Typer(
    help="Hyperparameter search for small PyTorch models, built on Optuna.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="HPSEARCH_STORAGE",
        help="Database URL (sqlite:///file.db, postgresql+psycopg://user:pw@host/db). "
        "Default: sqlite:///hpsearch.db in the working directory.",
        show_default=False,
    ),
]


def clean_errors(command: F) -> F:
    """Turn ``HpsearchError`` (and Ctrl-C) into one line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except HpsearchError as error:
            err_console.print(
                f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; run the same command again to resume", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _quiet_libraries(verbose: bool) -> None:
    import optuna

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


@app.command()
@clean_errors
def run(
    target: Annotated[
        str,
        typer.Argument(
            help="A problem (usps, house-prices, house-prices-gaussian) or a study .toml file."
        ),
    ],
    trials: Annotated[
        int | None,
        typer.Option(help="Total finished trials the study should hold; a rerun resumes up to it."),
    ] = None,
    storage: StorageOption = None,
    study_name: Annotated[str | None, typer.Option(help="Default: the study file's name.")] = None,
    sampler: Annotated[
        str | None,
        typer.Option(help="tpe, random, gp, cmaes, qmc or grid. Default: the study file's."),
    ] = None,
    pruner: Annotated[
        str | None,
        typer.Option(
            help="hyperband, median, successive-halving or none. Default: the study file's."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Study seed; trial seeds are seed + trial number.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after this many seconds.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(envvar="HPSEARCH_DEVICE", help="auto, cpu or cuda.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="HPSEARCH_DATA_DIR",
            help="Folder with the data sets. Default: the packaged copies.",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads per worker. Default: cores / workers.", show_default=False),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            envvar="HPSEARCH_WORKERS",
            help="Worker processes on this machine, sharing the study; CPU threads "
            "are split between them. Default: one single-threaded worker per CPU core; "
            "on CUDA, as many per GPU as its free memory holds (2 GiB each, at most 8).",
            show_default=False,
        ),
    ] = None,
    checkpoint_dir: Annotated[
        str | None,
        typer.Option(
            envvar="HPSEARCH_CHECKPOINT_DIR",
            help="Folder for per-epoch training checkpoints that let a retried trial resume "
            "(share it between machines to resume across them); '' turns them off. "
            "Default: ./hpsearch-checkpoints.",
            show_default=False,
        ),
    ] = None,
    heartbeat_interval: Annotated[
        int | None,
        typer.Option(
            help="Seconds between heartbeats of a running trial; a trial silent "
            "for 3 intervals (its worker died) is failed and retried once. Default: 10."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every trial.")] = False,
) -> None:
    """Run (or resume) a study until it holds --trials finished trials, with one or more
    workers; more workers elsewhere may join with the same command and --storage."""
    from hpsearch.config import find_study_file, load_study_file, resolve_settings
    from hpsearch.search import prepare_study, run_local_workers, run_trials
    from hpsearch.storage import redact, storage_url

    _quiet_libraries(verbose)
    config = load_study_file(find_study_file(target))
    settings = resolve_settings(
        config,
        storage=storage_url(storage),
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        trials=trials,
        timeout=timeout,
        device=device,
        data_dir=str(data_dir) if data_dir else None,
        threads=threads,
        workers=workers,
        checkpoint_dir=checkpoint_dir,
        heartbeat_interval=heartbeat_interval,
    )
    study, objective = prepare_study(config, settings)
    err_console.print(
        f"study [bold]{escape(settings.study_name)}[/bold] ({config.problem.name}, "
        f"{config.direction} {config.metric}) on {escape(redact(settings.storage))}: "
        f"{settings.trials} trials, sampler {settings.sampler}, pruner {settings.pruner}"
        + (f", {settings.workers} workers" if settings.workers > 1 else ""),
        highlight=False,
    )
    from hpsearch.display import ProgressDisplay

    with ProgressDisplay(err_console, config.metric) as display:
        if settings.workers > 1:
            progress = run_local_workers(study, config, settings, on_progress=display.update)
        else:
            progress = run_trials(study, objective, settings, on_progress=display.update)
    if progress.finished >= settings.trials and progress.trials_this_run == 0:
        err_console.print(
            f"study already holds {progress.finished} finished trials; "
            "nothing to run (raise --trials to add more)",
            highlight=False,
        )
    from hpsearch.display import summary_table

    console.print(summary_table(study, config.metric))


@app.command()
@clean_errors
def studies(storage: StorageOption = None) -> None:
    """List the studies in the storage: trials by state and the best value."""
    import optuna

    from hpsearch.search import best_value, study_counts
    from hpsearch.storage import open_storage, storage_url

    _quiet_libraries(False)
    store = open_storage(storage_url(storage), create=False)
    table = Table(title="studies")
    for column in (
        "study",
        "problem",
        "direction",
        "complete",
        "pruned",
        "failed",
        "running",
        "best",
    ):
        table.add_column(
            column, justify="left" if column in ("study", "problem") else "right", overflow="fold"
        )
    for summary in optuna.get_all_study_summaries(store, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        counts = study_counts(study)
        from optuna.trial import TrialState as S

        table.add_row(
            summary.study_name,
            str(summary.user_attrs.get("problem", "-")),
            summary.direction.name.lower(),
            *(str(counts[state]) for state in (S.COMPLETE, S.PRUNED, S.FAIL, S.RUNNING)),
            format_value(best_value(study)),
        )
    console.print(table)


def _load_study(name: str, storage: str | None) -> Any:
    import optuna

    from hpsearch.storage import open_storage, storage_url

    _quiet_libraries(False)
    store = open_storage(storage_url(storage), create=False)
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(store)) or "none"
        raise HpsearchError(f"no study named {name!r} in the storage (studies: {names})") from None


@app.command()
@clean_errors
def best(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    storage: StorageOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the best trial: its params, full configuration and metrics."""
    study = _load_study(study_name, storage)
    try:
        trial = study.best_trial
    except ValueError:
        raise HpsearchError(f"study {study_name!r} has no complete trial yet") from None
    attrs = dict(trial.user_attrs)
    record = {
        "study": study_name,
        "trial": trial.number,
        "value": trial.value,
        "metric": study.user_attrs.get("metric"),
        "params": trial.params,
        "config": attrs.pop("config", {}),
        "metrics": attrs,
    }
    if as_json:
        typer.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    table = Table(
        title=f"{study_name}: best trial {trial.number}, "
        f"{record['metric']} = {format_value(trial.value)}"
    )
    table.add_column("key", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in sorted(record["config"].items()):
        table.add_row(key + (" *" if key in trial.params else ""), str(value))
    for key, value in sorted(attrs.items()):
        table.add_row(key, format_value(value) if isinstance(value, float) else str(value))
    console.print(table)
    console.print("* searched; the rest were fixed by the study file or the report's defaults")


@app.command()
@clean_errors
def trials(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    storage: StorageOption = None,
    csv: Annotated[Path | None, typer.Option(help="Write every trial to this CSV file.")] = None,
) -> None:
    """List a study's trials, or write them to a CSV file (pandas)."""
    study = _load_study(study_name, storage)
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "duration", "params", "user_attrs")
    )
    frame = frame.drop(columns=[c for c in frame.columns if c == "user_attrs_config"])
    if csv is not None:
        try:
            frame.to_csv(csv, index=False)
        except OSError as error:
            raise HpsearchError(f"cannot write {csv}: {error.strerror}") from None
        err_console.print(f"wrote {len(frame)} trials to {csv}", highlight=False)
        return
    table = Table(title=f"{study_name}: {len(frame)} trials")
    shown = [c for c in ("number", "state", "value", "duration") if c in frame.columns]
    shown += [c for c in frame.columns if c.startswith("params_")]
    for column in shown:
        table.add_column(column.removeprefix("params_"), overflow="fold")
    for _, row in frame.iterrows():
        table.add_row(*(_cell(row[c]) for c in shown))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return format_value(value)
    if hasattr(value, "total_seconds"):
        seconds = value.total_seconds()
        return "-" if math.isnan(seconds) else f"{seconds:.1f}s"
    return str(value)


@app.command()
@clean_errors
def finalize(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    storage: StorageOption = None,
    top_k: Annotated[int, typer.Option(help="Configurations to retrain.")] = 3,
    seeds: Annotated[int, typer.Option(help="Seeds per configuration.")] = 3,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for model.pt and finalize.json. Default: ./final-STUDY."),
    ] = None,
    ensemble: Annotated[
        bool,
        typer.Option(
            help="Also retrain every configuration x seed on train + validation and score "
            "the average of their predictions on test (top-k x seeds more fits)."
        ),
    ] = True,
    device: Annotated[
        str, typer.Option(envvar="HPSEARCH_DEVICE", help="auto, cpu or cuda.")
    ] = "auto",
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="HPSEARCH_DATA_DIR", help="Folder with the data sets."),
    ] = None,
) -> None:
    """Retrain the best configurations with several seeds, choose by validation mean -/+ std,
    retrain the choice on train + validation and score it once on the held-out test split,
    beside an ensemble of all of them and the problem's classic baseline."""
    from hpsearch.data import resolve_data_dir
    from hpsearch.finalize import finalize as run_finalize
    from hpsearch.finalize import test_columns
    from hpsearch.problems import get_problem
    from hpsearch.search import resolve_device

    if top_k < 1 or seeds < 1:
        raise HpsearchError("--top-k and --seeds must be >= 1")
    study = _load_study(study_name, storage)
    attrs = study.user_attrs
    if "problem" not in attrs:
        raise HpsearchError(f"study {study_name!r} was not made by hpsearch run")
    problem = get_problem(attrs["problem"])
    metric = str(attrs["metric"])
    options = attrs.get("data")
    if options is None:  # studies from before the data options were recorded
        from hpsearch.config import load_study_file

        options = load_study_file(attrs["study_file"]).data
    splits = problem.load_data(resolve_data_dir(data_dir), **options)
    splits = splits.to(resolve_device(device))
    out = out or Path(f"final-{study_name}")
    err_console.print(
        f"finalizing {study_name}: top {top_k} configurations x {seeds} seeds on "
        f"{len(splits.x_train)} training rows, chosen on {len(splits.x_val)} validation rows",
        highlight=False,
    )

    def show(candidate: Any) -> None:
        err_console.print(
            f"  trial {candidate.trial}: {metric} {format_value(candidate.mean)} "
            f"± {format_value(candidate.std)} over {len(candidate.val_scores)} seeds "
            f"(search: {format_value(candidate.search_value)}; {candidate.seconds:.0f} s)",
            highlight=False,
        )

    result = run_finalize(
        study,
        problem,
        splits,
        metric,
        top_k=top_k,
        seeds=seeds,
        out=out,
        ensemble=ensemble,
        on_candidate=show,
    )
    table = Table(
        title=f"{study_name}: trial {result.chosen.trial} retrained on "
        f"{result.train_rows} rows, scored once on {result.test_rows} test rows"
    )
    table.add_column("test metric")
    columns = test_columns(study.user_attrs["finalize"])
    for label, _ in columns:
        table.add_column(label, justify="right", overflow="fold")
    metric_columns = [metrics for _, metrics in columns]

    def cell(metrics: dict[str, Any], key: str) -> str:
        value = metrics.get(key)
        if value is None:
            return ""
        if isinstance(value, dict):
            return " ".join(f"{k}:{format_value(v)}" for k, v in value.items())
        return value if isinstance(value, str) else format_value(value)

    for key in result.test_metrics:
        table.add_row(key, *(cell(metrics, key) for metrics in metric_columns))
    console.print(table)
    saved = "model.pt, ensemble.pt" if result.ensemble_test is not None else "model.pt"
    err_console.print(f"saved {out}/{saved} and {out}/finalize.json", highlight=False)


@app.command()
@clean_errors
def report(
    study_name: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    storage: StorageOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder. Default: ./report-STUDY.")
    ] = None,
) -> None:
    """Write the lab report's tables and figures for a study: index.html (self-contained),
    tables.md and the figures as PNG."""
    from hpsearch.report import build_report

    study = _load_study(study_name, storage)
    page = build_report(study, out or Path(f"report-{study_name}"))
    err_console.print(f"wrote {page}", highlight=False)


@app.command()
@clean_errors
def dashboard(
    storage: StorageOption = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the same storage (http://127.0.0.1:8080 by default)."""
    import optuna_dashboard

    from hpsearch.storage import open_storage, redact, storage_url

    _quiet_libraries(False)
    url = storage_url(storage)
    store = open_storage(url, create=False)
    err_console.print(
        f"optuna-dashboard for {redact(url)} at http://{host}:{port}/ (Ctrl-C stops it)",
        highlight=False,
    )
    optuna_dashboard.run_server(store, host=host, port=port)
