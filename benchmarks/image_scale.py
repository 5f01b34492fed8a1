"""A large image folder of your own: decoded once, then read from the cache.

    python benchmarks/image_scale.py [--images 50000] [--size 28]

Writes ``--images`` PNG files of ``--size`` x ``--size`` grey pixels in ten class sub-folders
(scikit-learn's 8x8 digits, enlarged, with noise: real files of a realistic size), then loads
them with ``problems.images.load_images`` (what ``hpsearch run --data FOLDER`` does) twice,
each in a fresh process with an empty, then a filled cache folder: the first decodes every
file and writes the cache, the second reads the cache. Prints seconds (imports not counted),
images per second and each process's peak resident memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent.parent


def write_images(folder: Path, count: int, size: int) -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    for k in range(10):
        (folder / str(k)).mkdir(parents=True)
    for i in range(count):
        j = i % len(digits.images)
        small = Image.fromarray((digits.images[j] * 255 / 16).astype(np.uint8))
        pixels = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR), dtype=float)
        noisy = np.clip(pixels + rng.normal(scale=12, size=pixels.shape), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / str(digits.target[j]) / f"{i}.png")


def load(folder: Path, cache: Path) -> tuple[float, float]:
    """Seconds and peak resident MiB of ``load_images`` in a fresh process."""
    code = (
        f"import resource, sys, time; sys.path.insert(0, {str(ROOT)!r});"
        "from hpsearch.problems.images import load_images; t = time.perf_counter();"
        f"s = load_images(path={str(folder)!r}); print(time.perf_counter() - t,"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    env = {"XDG_CACHE_HOME": str(cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    seconds, mib = out.stdout.split()[-2:]
    return float(seconds), float(mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        started = time.perf_counter()
        write_images(folder, args.images, args.size)
        size = sum(f.stat().st_size for f in folder.rglob("*.png")) / 2**20
        print(
            f"{args.images:,} PNG files of {args.size}x{args.size} grey pixels in 10 classes, "
            f"{size:,.0f} MiB, written in {time.perf_counter() - started:.0f} s"
        )
        first, second = load(folder, cache), load(folder, cache)
        cached = sum(f.stat().st_size for f in cache.rglob("*.npz")) / 2**20
    print(f"{'load':<22}{'seconds':>10}{'images/s':>12}{'peak MiB':>10}")
    for label, (seconds, mib) in (("decode, write cache", first), ("from the cache", second)):
        print(f"{label:<22}{seconds:>10.2f}{args.images / seconds:>12,.0f}{mib:>10,.0f}")
    print(f"cache file {cached:,.0f} MiB; the cache is {first[0] / second[0]:.1f}x faster")


if __name__ == "__main__":
    main()
