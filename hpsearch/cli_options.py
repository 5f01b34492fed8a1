"""The options of the ``hpsearch`` commands (``cli``), declared once: the storage, device and
artifact options every command shares, and ``run``'s, which ``create`` shares, since a study
is named by the same options wherever it is created. The sampler and pruner lists come from
``settings.SAMPLERS`` and ``settings.PRUNERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpsearch.settings import DEFAULTS, ENVIRONMENT, PRUNERS, SAMPLERS, either


def _env(name: str) -> str:
    return f" (env: {ENVIRONMENT[name]})"


StudyName = Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")]
Storage = Annotated[
    str | None,
    typer.Option(
        help="Database URL: sqlite:///file.db or postgresql+psycopg://user@host/db; the "
        f"password may come from $HPSEARCH_DB_PASSWORD. Default: {DEFAULTS.storage}"
        + _env("storage"),
        show_default=False,
    ),
]
Device = Annotated[
    str | None,
    typer.Option(help=f"auto, cpu or cuda. Default: {DEFAULTS.device}" + _env("device")),
]
Artifacts = Annotated[
    str | None,
    typer.Option(
        help="Artifact store of per-epoch checkpoints (a retried trial resumes from them, on "
        "any machine sharing the store) and finalized models: a folder or s3://bucket/prefix, "
        "S3 endpoint and keys from the AWS_* variables; '' turns checkpoints off. Default: "
        f"./{DEFAULTS.artifacts}" + _env("artifacts"),
        show_default=False,
    ),
]
GroupSize = Annotated[
    int | None,
    typer.Option(
        help="Trials (finalize: retrains) of one shape trained as one model; 1: one at a "
        "time. Default: 1 on the CPU, 8 on CUDA" + _env("group_size"),
        show_default=False,
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder with the data sets. Default: the packaged copies" + _env("data_dir")),
]

# What names a study (run, create): the same options resolve the same study anywhere.
Study = Annotated[
    str | None,
    typer.Argument(
        help="A shipped study (usps, house-prices, ...) or a .toml file. Default with "
        "--data: the task's shipped study (tabular-regression, ...).",
        show_default=False,
    ),
]
Data = Annotated[
    Path | None,
    typer.Option(
        help="Your own table (.csv, .parquet or .npz) or image folder, in place of the "
        "study's own data."
    ),
]
Target = Annotated[str | None, typer.Option(help="With --data: the column to predict.")]
Task = Annotated[
    str | None,
    typer.Option(
        help="With --data and no study: regression, gaussian or classification. "
        "Default: from the target (many distinct numbers: regression)."
    ),
]
Metric = Annotated[
    list[str] | None,
    typer.Option(
        help="An objective, in place of the study file's; repeat it for several "
        "(--metric val_accuracy --metric params): a validation metric, params, "
        "size_bytes, flops, latency_ms or train_seconds.",
        show_default=False,
    ),
]
StudyNameOption = Annotated[str | None, typer.Option(help="Default: the study file's.")]
Sampler = Annotated[
    str | None,
    typer.Option(help=f"{either(list(SAMPLERS))}. Default: the study file's.", show_default=False),
]
Pruner = Annotated[
    str | None,
    typer.Option(
        help=f"{either(list(PRUNERS))} (dominated: of several objectives). Default: the "
        "study file's.",
        show_default=False,
    ),
]
Seed = Annotated[int | None, typer.Option(help="Sampler seed; trial n trains with seed + n.")]

# run's own.
Trials = Annotated[
    int | None,
    typer.Option(help="Finished trials the study should hold in all; a rerun resumes."),
]
Timeout = Annotated[float | None, typer.Option(help="Start no trial after this many seconds.")]
Threads = Annotated[
    int | None, typer.Option(help="CPU threads per worker. Default: cores / workers.")
]
Workers = Annotated[
    int | None,
    typer.Option(
        help="Worker processes on this machine. Default: one per CPU core; on CUDA, as "
        "many per GPU as its free memory holds at 2 GiB each (at most 8)" + _env("workers"),
        show_default=False,
    ),
]
HeartbeatInterval = Annotated[
    int | None,
    typer.Option(
        help="Seconds between a running trial's heartbeats; a trial silent for three is "
        f"failed and retried once. Default: {DEFAULTS.heartbeat_interval}"
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Print every finished trial with its params.")
]
