"""The whole house-price pipeline, scored on several held-out splits instead of one.

    python benchmarks/house_splits.py --splits 1 2 3 4 5     # five more random test splits
    python benchmarks/house_splits.py --dev                  # five dev folds of split 0

The house-price test figures in docs/results.md come from one split of 292 houses (data
seed 0), where two unusual houses weigh heavily in the comparison with gradient boosting.
This benchmark reruns what a user runs, ``hpsearch run STUDY --trials N`` then
``hpsearch finalize STUDY``, once per held-out split, and prints each split's RMSE for the
tuned network, its ensemble and gradient boosting, side by side, then the RMSE pooled over
every held-out row.

- ``--splits``: each data seed cuts other train / validation / test rows from the 1,460.
  Their test rows overlap split 0's, so use them to report a pipeline, not to choose one.
- ``--dev``: ``[data] dev_fold`` 0-4 on data seed 0 (``--dev-seed``). Split 0's real test
  rows are never loaded; each fold of its 1,168 train + validation rows stands in for test
  once. Choices between pipelines (data options, spaces, ``finalize``) are made here.

Each held-out split is read once, by its own ``finalize``; nothing here chooses anything.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from hpsearch.problems.house_prices import DEV_FOLDS
from hpsearch.search.study_file import find_study_file


def with_data(study_file: Path, options: dict[str, int], folder: Path, tag: str) -> Path:
    """A copy of ``study_file`` whose ``[data]`` table sets ``options`` (replacing them)."""
    lines = study_file.read_text().splitlines()
    if "[data]" not in lines:
        raise SystemExit(f"{study_file} has no [data] table")
    start = lines.index("[data]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    body = [line for line in lines[start + 1 : end] if line.split("=")[0].strip() not in options]
    lines[start + 1 : end] = [f"{key} = {value}" for key, value in options.items()] + body
    path = folder / f"{study_file.stem}-{tag}.toml"
    path.write_text("\n".join(lines) + "\n")
    parsed = tomllib.loads(path.read_text())["data"]
    assert all(parsed[key] == value for key, value in options.items())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="house-prices", help="a house-price study")
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--dev", action="store_true", help="dev folds of one split instead")
    parser.add_argument("--dev-seed", type=int, default=0)
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(DEV_FOLDS)))
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--finalize-args", default="", help="extra `hpsearch finalize` flags")
    parser.add_argument("--save", type=Path, help="also write every finalize.json here")
    args = parser.parse_args()

    study_file = find_study_file(args.study)
    runs: list[tuple[str, dict[str, int]]] = (
        [(f"dev{k}", {"seed": args.dev_seed, "dev_fold": k}) for k in args.folds]
        if args.dev
        else [(f"split{seed}", {"seed": seed}) for seed in args.splits]
    )
    hpsearch = [sys.executable, "-m", "hpsearch"]
    rows: list[tuple[str, dict[str, Any]]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        storage = f"sqlite:///{folder / 'splits.db'}"
        for tag, options in runs:
            path = with_data(study_file, options, folder, tag)
            out = folder / f"final-{tag}"
            common = ["--storage", storage]
            subprocess.run(
                [*hpsearch, "run", str(path), "--trials", str(args.trials), *common],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            subprocess.run(
                [*hpsearch, "finalize", path.stem, "--out", str(out), *common]
                + args.finalize_args.split(),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            rows.append((tag, json.loads((out / "finalize.json").read_text())))
            print(f"{tag}: done ({time.perf_counter() - started:.0f} s)", flush=True)
            if args.save:
                args.save.write_text(json.dumps(dict(rows), indent=1))

    def rmse(record: dict[str, Any], which: str) -> float:
        if which == "network":
            return float(record["test"]["rmse"])
        if which == "ensemble":
            return float(record["ensemble"]["test"]["rmse"]) if record["ensemble"] else math.nan
        [boosting] = (b for b in record["baselines"] if b["name"] == "gradient boosting")
        return float(boosting["test"]["rmse"])

    columns = ("network", "ensemble", "boosting")

    def line(label: str, values: list[float]) -> str:
        cells = "".join(f"{v:>12,.0f}" for v in values)
        return f"{label:<10}{cells}{values[0] / values[2]:>8.3f}"

    print(f"{study_file.name}: {args.trials} trials + finalize per split, held-out RMSE ($)")
    print(f"{'split':<10}" + "".join(f"{c:>12}" for c in columns) + f"{'ratio':>8}")
    for tag, record in rows:
        print(line(tag, [rmse(record, c) for c in columns]))
    # Every held-out row counts once: the root of the row-weighted mean squared error.
    total = sum(record["test_rows"] for _, record in rows)
    pooled = [
        math.sqrt(sum(rmse(r, c) ** 2 * r["test_rows"] for _, r in rows) / total) for c in columns
    ]
    print(line("pooled", pooled))
    ratios = [rmse(r, "network") / rmse(r, "boosting") for _, r in rows]
    wins = sum(r <= 1.0 for r in ratios)
    print(
        f"network at or below boosting on {wins} of {len(rows)} splits; median ratio "
        f"{statistics.median(ratios):.3f} ({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
