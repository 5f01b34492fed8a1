"""A large table of your own: load time beside pandas' own read, memory, one epoch, predictions.

    python benchmarks/table_scale.py [--rows 1000000] [--columns 50] [--repeat 5]

Writes a CSV of ``--rows`` x ``--columns`` (floats, two of them with 5% gaps, one string
column of 20 levels, a regression target), then, each in a fresh process so peak memory is its
own: pandas' ``read_csv`` of it, ``problems.tabular.load_table`` (read, check, split, encode),
and one epoch of the default MLP on the encoded rows followed by predictions for every row
(``results.predict.Predictor`` path: encoding from the stored state, one forward pass). Read and
load run ``--repeat`` times, in turn, each in a fresh process (a fresh process's first touch of
memory costs much on a virtual machine, and varies); prints median seconds (imports not
counted) and their range, the ratio of the medians to pandas' read, and each process's peak
resident memory.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent

# Each step: its imports (not timed), then what is timed.
STEPS = {
    "read": ("import pandas as pd", "pd.read_csv(PATH)"),
    "load": (
        "from hpsearch.problems.tabular import load_table",
        "load_table('regression', path=PATH, target='y')",
    ),
    "train": (
        "import torch;"
        "from hpsearch.problems import get_problem;"
        "from hpsearch.problems.tabular import load_table, read_table;"
        "from hpsearch.problems.table_encoder import TableEncoder;"
        "from hpsearch.training import TrainConfig, predict, train",
        "p = get_problem('tabular-regression');"
        "s = load_table('regression', path=PATH, target='y');"
        "params = {**p.defaults, 'epochs': 1, 'batch_size': 256};"
        "model = p.build_model(params, s.x_train.shape[1:]);"
        "train(model, s.x_train, s.y_train, p.losses['mse'], TrainConfig.from_params(params),"
        " evaluate=lambda m: {});"
        "encoder = TableEncoder.from_json(s.preprocess['table']);"
        "predict(model.eval(), encoder.transform(read_table(PATH)))",
    ),
}


def write_table(path: Path, rows: int, columns: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, columns - 2)).astype(np.float32)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(columns - 2)])
    for name in ("f0", "f1"):
        frame.loc[rng.random(rows) < 0.05, name] = np.nan
    frame["kind"] = rng.choice([f"level{i}" for i in range(20)], rows)
    frame["y"] = x[:, :5].sum(axis=1) + rng.normal(scale=0.1, size=rows)
    frame.to_csv(path, index=False)


def run(step: str, path: Path) -> tuple[float, float]:
    """Seconds and peak resident MiB of one step in a fresh process."""
    imports, timed = STEPS[step]
    code = (
        f"import resource, sys, time; sys.path.insert(0, {str(ROOT)!r}); PATH = {str(path)!r};"
        f"{imports}; t = time.perf_counter(); {timed}; print(time.perf_counter() - t,"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds, mib = out.stdout.split()[-2:]
    return float(seconds), float(mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        started = time.perf_counter()
        write_table(path, args.rows, args.columns)
        size = path.stat().st_size / 2**20
        print(
            f"{args.rows:,} rows x {args.columns} columns, CSV {size:,.0f} MiB, written in "
            f"{time.perf_counter() - started:.0f} s"
        )
        runs: dict[str, list[tuple[float, float]]] = {step: [] for step in STEPS}
        for _ in range(args.repeat):  # read and load in turn, so drift hits both alike
            for step in ("read", "load"):
                runs[step].append(run(step, path))
        runs["train"].append(run("train", path))
    medians = {step: statistics.median(s for s, _ in times) for step, times in runs.items()}
    print(f"{'step':<8}{'seconds':>10}{'range':>14}{'vs read':>10}{'peak MiB':>10}")
    for step, times in runs.items():
        seconds = [s for s, _ in times]
        spread = f"{min(seconds):.2f}-{max(seconds):.2f}" if len(seconds) > 1 else ""
        ratio = medians[step] / medians["read"]
        mib = max(m for _, m in times)
        print(f"{step:<8}{medians[step]:>10.2f}{spread:>14}{ratio:>9.2f}x{mib:>10,.0f}")
    print(f"median of {args.repeat} fresh processes each for read and load")
    print("train: load, one epoch of the default MLP (batch 256), then predictions for every row")


if __name__ == "__main__":
    main()
