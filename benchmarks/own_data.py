"""Your own table, end to end, on real data sets that ship with scikit-learn, beside classic
baselines on the same rows.

    python benchmarks/own_data.py [--trials 30] [--data diabetes breast_cancer wine digits]

For each data set this writes the data as a user would have them (diabetes and breast cancer
as CSV files, wine as an ``.npz``, the 8x8 digits as a folder of PNG files, one sub-folder per
class), runs what a user runs, ``hpsearch run --data FILE [--target COLUMN] --trials N`` then
``hpsearch finalize STUDY``, and prints the network's test figure and its ensemble's beside a
linear model (ridge or logistic regression) and gradient boosting (scikit-learn's
HistGradientBoosting, default settings; for the digits an RBF SVM), the task's own baselines
that ``finalize`` fits on the same train + validation rows and scores on the same test rows.
Lower is better for RMSE, higher for accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine


def write(name: str, folder: Path) -> tuple[Path, str]:
    """The data set as a user's file, and its target column."""
    if name == "diabetes":
        path = folder / "diabetes.csv"
        load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index=False)
        return path, "target"
    if name == "breast_cancer":
        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.frame.drop(columns="target")
        frame["diagnosis"] = np.where(bunch.target == 0, "malignant", "benign")
        path = folder / "breast_cancer.csv"
        frame.to_csv(path, index=False)
        return path, "diagnosis"
    if name == "wine":
        wine = load_wine()
        path = folder / "wine.npz"
        np.savez(path, x=wine.data, y=wine.target)
        return path, "y"
    digits = load_digits()
    path = folder / "digits"
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        (path / str(label)).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * 255 / 16).astype(np.uint8), mode="L")
        image.save(path / str(label) / f"{i}.png")
    return path, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--data", nargs="+", default=["diabetes", "breast_cancer", "wine", "digits"]
    )
    args = parser.parse_args()
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        storage = f"sqlite:///{folder / 'studies.db'}"
        for name in args.data:
            path, target = write(name, folder)
            begun = time.perf_counter()
            hpsearch = [sys.executable, "-m", "hpsearch"]
            run = [*hpsearch, "run", "--data", str(path), *(["--target", target] if target else [])]
            subprocess.run(
                [*run, "--trials", str(args.trials), "--storage", storage],
                check=True,
                capture_output=True,
                cwd=folder,
            )
            task = {"diabetes": "regression", "digits": "image-classification"}.get(
                name, "classification"
            )
            subprocess.run(
                [*hpsearch, "finalize", f"{path.stem}-{task}", "--storage", storage],
                check=True,
                capture_output=True,
                cwd=folder,
            )
            (out,) = folder.glob(f"final-{path.stem}-*")
            result = json.loads((out / "finalize.json").read_text())
            metric = "rmse" if task == "regression" else "accuracy"
            linear, boosted = (b["test"][metric] for b in result["baselines"])
            ensemble = (result.get("ensemble") or {}).get("test") or {}
            rows.append(
                (
                    name,
                    metric,
                    result["test"][metric],
                    ensemble.get(metric, float("nan")),
                    linear,
                    boosted,
                    result["test_rows"],
                    time.perf_counter() - begun,
                )
            )
    print(
        f"{args.trials} trials per data set, then finalize (top 3 x 3 seeds); test split 20%, "
        f"seed 0; {time.perf_counter() - started:.0f} s in all"
    )
    header = ("data", "metric", "network", "ensemble", "linear", "boost/SVM", "vs that")
    print(f"{header[0]:<15}{header[1]:<10}" + "".join(f"{h:>12}" for h in header[2:]))
    for name, metric, net, ens, linear, boosted, n_test, seconds in rows:
        ratio = net / boosted
        print(
            f"{name:<15}{metric:<10}{net:>12.4f}{ens:>12.4f}{linear:>12.4f}{boosted:>12.4f}"
            f"{ratio:>11.3f}x   ({n_test} test rows, {seconds:.0f} s)"
        )


if __name__ == "__main__":
    main()
