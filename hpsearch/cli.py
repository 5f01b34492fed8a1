"""The ``hpsearch`` command line. Each command parses its options, calls one library function
and prints; settings resolve in ``settings.resolve_settings``. Bad input prints one line and
exits with code 2 (75: a service that cannot be reached, see ``errors``). Commands import
what they use inside their body, so that ``--help`` and the commands that only read a study
start fast.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from hpsearch import cli_options as opt
from hpsearch.settings import DEFAULTS

app = typer.Typer(
    help="Hyperparameter search for small PyTorch models, built on Optuna.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(interrupted: str) -> Callable[[F], F]:
    """Turn ``HpsearchError`` into one line on stderr and its exit code (2, or 75 for a
    service that cannot be reached), a database lost for good into one line and 75, and
    Ctrl-C / SIGTERM into the line ``interrupted`` and exit code 130, without a traceback."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                err_console.print(interrupted)
                raise typer.Exit(130) from None
            except Exception as error:
                # Bad input, or a database refused or lost for longer than the retries cover.
                from hpsearch.storage.errors import user_error

                failure = user_error(error)
                if failure is None:
                    raise
                err_console.print(f"[red]error:[/red] {escape(str(failure))}", soft_wrap=True)
                raise typer.Exit(failure.exit_code) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _configure_logging(verbose: bool = False, *, live: bool = False) -> None:
    """Warnings (with ``verbose``, info) of hpsearch's loggers on stderr; with ``live``,
    through rich, so that they print above the live progress display."""
    import optuna

    handler: logging.Handler = logging.StreamHandler()
    line = "%(levelname)s %(name)s: %(message)s"
    if live:
        from rich.logging import RichHandler  # imports pygments: only where it is needed

        handler = RichHandler(console=err_console, show_time=False, show_path=False)
        line = "%(message)s"  # rich shows the level itself
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, handlers=[handler], format=line)
    # Optuna's own per-trial lines would repeat hpsearch's.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@app.command()
@one_line_errors("interrupted; run the same command again to resume")
def run(
    study: opt.Study = None,
    data: opt.Data = None,
    target: opt.Target = None,
    task: opt.Task = None,
    metric: opt.Metric = None,
    trials: opt.Trials = None,
    storage: opt.Storage = None,
    study_name: opt.StudyNameOption = None,
    sampler: opt.Sampler = None,
    pruner: opt.Pruner = None,
    seed: opt.Seed = None,
    timeout: opt.Timeout = None,
    device: opt.Device = None,
    data_dir: opt.DataDir = None,
    threads: opt.Threads = None,
    workers: opt.Workers = None,
    artifacts: opt.Artifacts = None,
    group_size: opt.GroupSize = None,
    heartbeat_interval: opt.HeartbeatInterval = None,
    verbose: opt.Verbose = False,
) -> None:
    """Run or resume a study until it holds --trials finished trials.

    More workers, on this machine or others, join with the same command and --storage.
    """
    from hpsearch.search.plan import resolve_plan

    # Before the live display: bad input fails at once, in one line.
    plan = resolve_plan(
        study,
        data=data,
        target=target,
        task=task,
        metrics=metric,
        trials=trials,
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        timeout=timeout,
        device=device,
        data_dir=str(data_dir) if data_dir else None,
        threads=threads,
        workers=workers,
        artifacts=artifacts,
        heartbeat_interval=heartbeat_interval,
        group_size=group_size,
    )
    from hpsearch.display import RunProgress, run_header, summary_table
    from hpsearch.search.run import run_study

    _configure_logging(verbose, live=True)
    config, settings = plan.config, plan.settings
    header = run_header(config, settings)
    with RunProgress(err_console, config.metrics, header=header, verbose=verbose) as progress:
        opened, state = run_study(
            plan,
            on_progress=progress.update,
            on_data=lambda splits: progress.note(f"data: {splits.describe()}"),
        )
    if state.finished >= settings.trials and state.trials_this_run == 0:
        err_console.print(
            f"study already holds {state.finished} finished trials; nothing to run "
            "(raise --trials to add more)"
        )
    console.print(summary_table(opened, config.metrics))


@app.command()
@one_line_errors("interrupted")
def init(
    data: Annotated[Path, typer.Option(help="Your own table (.csv, .parquet or .npz).")],
    target: Annotated[str | None, typer.Option(help="The column to predict (an .npz: y).")] = None,
    task: Annotated[
        str | None,
        typer.Option(help="regression, gaussian or classification. Default: from the target."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Default: <table>-<task>.toml here.")] = None,
) -> None:
    """Write the study file that run --data would use, to edit and run.

    It is the task's shipped study with your table named in it; hpsearch run FILE runs it.
    """
    from hpsearch.search.study_file import write_table_study

    path, name = write_table_study(out, str(data), target, task)
    err_console.print(
        escape(f"wrote {path} (study {name}); edit its [space], then: hpsearch run {path}")
    )


@app.command()
@one_line_errors("interrupted")
def create(
    study: opt.Study = None,
    data: opt.Data = None,
    target: opt.Target = None,
    task: opt.Task = None,
    metric: opt.Metric = None,
    storage: opt.Storage = None,
    study_name: opt.StudyNameOption = None,
    sampler: opt.Sampler = None,
    pruner: opt.Pruner = None,
    seed: opt.Seed = None,
) -> None:
    """Create a study without running a trial, so workers started next all join it.

    `hpsearch run` creates the study too; this is the set-up step of a cluster job, with
    run's options that name the study. An existing study of the same problem is left as it
    is.
    """
    from hpsearch.search.plan import resolve_plan
    from hpsearch.search.study import create_study
    from hpsearch.storage.urls import redact

    _configure_logging()
    plan = resolve_plan(
        study,
        data=data,
        target=target,
        task=task,
        metrics=metric,
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        workers=1,
    )
    created = create_study(plan)
    config = plan.config
    err_console.print(
        f"study {created.study_name} ({config.problem.name}, {', '.join(config.metrics)}) is "
        f"in {redact(plan.settings.storage)} with {len(created.get_trials(deepcopy=False))} "
        "trials"
    )


@app.command()
@one_line_errors("interrupted")
def studies(storage: opt.Storage = None) -> None:
    """List the studies in the storage: trials by state and the best value."""
    from hpsearch.display import studies_table
    from hpsearch.results.summaries import list_studies
    from hpsearch.settings import resolve_settings

    _configure_logging()
    console.print(studies_table(list_studies(resolve_settings(storage=storage).storage)))


@app.command()
@one_line_errors("interrupted")
def best(
    study_name: opt.StudyName,
    storage: opt.Storage = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the best trial (of several objectives, the Pareto front), params and metrics."""
    from hpsearch.display import best_table
    from hpsearch.results.summaries import best_trial
    from hpsearch.settings import resolve_settings

    _configure_logging()
    record = best_trial(study_name, resolve_settings(storage=storage).storage)
    if as_json:
        typer.echo(json.dumps(record, indent=2, sort_keys=True))
    else:
        console.print(best_table(record))


@app.command()
@one_line_errors("interrupted")
def trials(
    study_name: opt.StudyName,
    storage: opt.Storage = None,
    csv: Annotated[Path | None, typer.Option(help="Write every trial to this CSV file.")] = None,
) -> None:
    """List a study's trials, or write them all to a CSV file."""
    from hpsearch.display import trials_table
    from hpsearch.results.summaries import trials_frame, write_csv
    from hpsearch.settings import resolve_settings

    _configure_logging()
    url = resolve_settings(storage=storage).storage
    frame = trials_frame(study_name, url)
    if csv is None:
        console.print(trials_table(frame, study_name))
        return
    write_csv(frame, csv, url)
    err_console.print(f"wrote {len(frame)} trials to {csv}")


@app.command()
@one_line_errors("interrupted; nothing was saved (finalize starts over when run again)")
def finalize(
    study_name: Annotated[
        str,
        typer.Argument(
            metavar="STUDY", help="Study name, or the .toml study file it was run from."
        ),
    ],
    storage: opt.Storage = None,
    top_k: Annotated[
        int | None,
        typer.Option(help=f"Configurations to retrain. Default: {DEFAULTS.top_k}"),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help=f"Seeds per configuration. Default: {DEFAULTS.seeds}")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for model.pt, ensemble.pt and finalize.json. Default: ./final-STUDY"
        ),
    ] = None,
    ensemble: Annotated[
        bool | None,
        typer.Option(
            help="Also retrain every configuration x seed on train + validation and score "
            "their combined prediction on test (top-k x seeds - 1 more fits). Default: on",
            show_default=False,
        ),
    ] = None,
    pick: Annotated[
        str | None,
        typer.Option(
            help="Rank the feasible trials by this metric, among those that meet the "
            "conditions: 'val_accuracy where params <= 5000 and latency_ms < 1' (of several "
            "objectives: the choice from the front). Default: the study's validation metric",
            show_default=False,
        ),
    ] = None,
    trial: Annotated[
        int | None, typer.Option(help="Retrain this trial's configuration only.")
    ] = None,
    artifacts: opt.Artifacts = None,
    device: opt.Device = None,
    data_dir: opt.DataDir = None,
    group_size: opt.GroupSize = None,
    workers: opt.Workers = None,
    threads: opt.Threads = None,
    heartbeat_interval: opt.HeartbeatInterval = None,
) -> None:
    """Retrain the best configurations, choose one and score it once on the test split.

    Each of the --top-k best configurations is retrained with --seeds seeds; the one with
    the best validation mean minus one standard deviation (plus, when lower is better) is
    retrained on train + validation and scored once on the held-out test split, beside an
    ensemble of all of them and the problem's classic baselines. The retrains run on
    --workers local workers; the same command on other machines joins them.
    """
    from hpsearch.display import candidate_line, finalize_table, retrain_line
    from hpsearch.results.finalize import finalize_study
    from hpsearch.settings import resolve_settings

    _configure_logging()
    settings = resolve_settings(
        storage=storage,
        top_k=top_k,
        seeds=seeds,
        out=str(out) if out else None,
        ensemble=ensemble,
        artifacts=artifacts,
        device=device,
        data_dir=str(data_dir) if data_dir else None,
        group_size=group_size,
        pick=pick,
        trial=trial,
        workers=workers,
        threads=threads,
        heartbeat_interval=heartbeat_interval,
    )
    if study_name.endswith(".toml"):  # a cluster's settings name the study by its file
        from hpsearch.search.study_file import find_study_file, load_study_file

        study_name = load_study_file(find_study_file(study_name)).name
    result = finalize_study(
        study_name,
        settings,
        on_candidate=lambda c: err_console.print(candidate_line(c)),
        on_start=lambda: err_console.print(
            f"finalizing {study_name}: top {settings.top_k} x {settings.seeds} seeds"
        ),
        on_retrain=lambda trial, metric: err_console.print(retrain_line(trial, metric)),
    )
    console.print(finalize_table(result))
    saved = "model.pt, ensemble.pt" if result.ensemble_test is not None else "model.pt"
    err_console.print(f"saved {saved} and finalize.json in {result.out}")
    if result.artifacts:
        err_console.print(f"and in the artifact store {settings.artifacts} (see the dashboard)")


@app.command()
@one_line_errors("interrupted")
def predict(
    model_dir: Annotated[Path, typer.Argument(help="A finalize --out folder.")],
    rows: Annotated[Path, typer.Argument(help="New rows: a .csv, .parquet or .npz table.")],
    out: Annotated[Path, typer.Option(help="Where the predictions go (.csv, or .parquet).")] = Path(
        "predictions.csv"
    ),
    ensemble: Annotated[
        bool, typer.Option("--ensemble", help="Predict with the finalized ensemble.")
    ] = False,
) -> None:
    """Predict with a model finalized from your own table: one row per input row, in order.

    Writes predicted_<target> (the class, or the value in the target's units), plus
    probability_<class> for a classifier and predicted_<target>_std for a Gaussian one.
    """
    from hpsearch.results.predict import predict_file

    _configure_logging()
    n = predict_file(model_dir, rows, out, ensemble=ensemble)
    err_console.print(f"wrote {n:,} predictions to {out}")


@app.command()
@one_line_errors("interrupted")
def report(
    study_name: opt.StudyName,
    storage: opt.Storage = None,
    out: Annotated[Path | None, typer.Option(help="Output folder. Default: ./report-STUDY")] = None,
) -> None:
    """Write a study's report: index.html (self-contained), tables.md and PNG figures."""
    from hpsearch.results.report import build_report
    from hpsearch.settings import resolve_settings
    from hpsearch.storage.counts import load_study

    _configure_logging()
    study = load_study(study_name, resolve_settings(storage=storage).storage)
    err_console.print(f"wrote {build_report(study, out or Path(f'report-{study_name}'))}")


@app.command()
@one_line_errors("stopped")
def dashboard(
    storage: opt.Storage = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    artifacts: opt.Artifacts = None,
) -> None:
    """Serve optuna-dashboard on the storage: live plots of every study, finalized models."""
    from hpsearch.results.dashboard import serve_dashboard
    from hpsearch.settings import resolve_settings
    from hpsearch.storage.database import wait_for_database
    from hpsearch.storage.urls import redact

    _configure_logging()
    settings = resolve_settings(storage=storage, artifacts=artifacts)
    wait_for_database(settings.storage, settings.db_wait)
    serve_dashboard(
        settings.storage,
        settings.artifacts,
        host,
        port,
        on_ready=lambda: err_console.print(
            f"optuna-dashboard for {redact(settings.storage)} at http://{host}:{port}/ "
            "(Ctrl-C stops it)"
        ),
    )
