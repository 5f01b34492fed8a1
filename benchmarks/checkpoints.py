"""What a checkpoint costs in each artifact store, next to the epoch it follows, in one run.

    python benchmarks/checkpoints.py [--repeats 30]

Saves (and loads) the training state of the lab report's best USPS model (3 conv x 64,
Adam) into a folder store and into an S3 store on moto's S3 server on loopback (started
here, as the tests do), and times one training epoch (with its evaluation) of that model on
the CPU. A trial
checkpoints at every evaluation (``eval_every``), so the save's share of an epoch is what
checkpointing adds with ``eval_every = 1``. Loopback S3 leaves out the network's latency.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpsearch.problems.registry import get_problem  # noqa: E402
from hpsearch.search.checkpoints import CheckpointStore  # noqa: E402
from hpsearch.search.study_file import load_study_file  # noqa: E402
from hpsearch.storage.artifacts import open_artifact_store  # noqa: E402
from hpsearch.training.config import TrainConfig, TrainState  # noqa: E402
from hpsearch.training.loop import train  # noqa: E402
from tests.servers import S3_CREDENTIALS, moto_server, new_bucket  # noqa: E402


def lab_report_run() -> tuple[TrainState, float]:
    """The lab report's best configuration trained for 2 epochs: its state after the second,
    and the second epoch's seconds."""
    config = load_study_file(REPO / "studies" / "usps-lab-report.toml")
    params = {**config.base_params, **config.enqueue[0]}
    problem = get_problem("usps")
    splits = problem.load_data(None, **config.data)
    model = problem.build_model(params, splits.x_train.shape[1:])
    states: list[TrainState] = []
    times: list[float] = [time.perf_counter()]
    train(
        model,
        splits.x_train,
        splits.y_train,
        problem.losses[params["loss"]],
        TrainConfig.from_params({**params, "epochs": 2}, seed=0),
        evaluate=lambda m: problem.evaluate(m, splits.x_val, splits.y_val, splits),
        on_epoch=lambda result: times.append(time.perf_counter()),
        on_checkpoint=states.append,
    )
    return states[-1], times[2] - times[1]


def timed(action: object, repeats: int) -> float:
    """Median milliseconds of ``action()``."""
    samples = []
    for _ in range(repeats):
        tic = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append((time.perf_counter() - tic) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    state, epoch_s = lab_report_run()
    rows = []
    with TemporaryDirectory() as folder, moto_server() as endpoint:
        os.environ.update(S3_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        bucket = new_bucket(endpoint)
        for name, url in (("folder", folder), ("S3 (moto, loopback)", bucket.url("bench"))):
            store = CheckpointStore(open_artifact_store(url), "bench")
            save = timed(lambda store=store: store.save(0, state, "t"), args.repeats)
            load = timed(lambda store=store: store.load(0, "t"), args.repeats)
            rows.append((name, save, load))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    print(
        f"one epoch (with its evaluation) of the lab report's USPS model, CPU, 2 threads: "
        f"{epoch_s * 1000:.0f} ms; its checkpoint: {len(buffer.getvalue()) / 1e6:.2f} MB"
    )
    print(f"{'store':<22}{'save ms':>9}{'load ms':>9}{'save / epoch':>14}")
    for name, save, load in rows:
        print(f"{name:<22}{save:9.1f}{load:9.1f}{save / (epoch_s * 1000):13.1%}")


if __name__ == "__main__":
    main()
