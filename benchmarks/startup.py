"""How long each command takes from the shell to its answer, beside the stock ``optuna`` CLI
on the same SQLite file, side by side in one run (medians of alternating repeats).

    python benchmarks/startup.py [--repeats 7]

It first runs a tiny USPS study (2 trials of a small net) into a temporary folder, then times:
``--help``; ``studies``, ``best`` and ``trials`` (which import no torch) against ``optuna
studies``; a misspelled study name; and ``run`` of the finished study, which has nothing to do.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

TINY_USPS = """
[study]
problem = "usps"
trials = 2
[pruner]
name = "none"
[fixed]
channels = 8
epochs = 1
batch_size = 256
n_conv_layers = 1
[space.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    hpsearch, optuna = shutil.which("hpsearch"), shutil.which("optuna")
    if hpsearch is None or optuna is None:
        raise SystemExit("needs the hpsearch and optuna commands on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tiny.toml").write_text(TINY_USPS)
        storage = ["--storage", f"sqlite:///{folder / 'tiny.db'}"]
        run = [hpsearch, "run", "tiny.toml", "--workers", "1", *storage]
        subprocess.run(run, cwd=folder, check=True, capture_output=True)
        commands = {
            "optuna studies": ([optuna, "studies", *storage], 0),
            "hpsearch studies": ([hpsearch, "studies", *storage], 0),
            "hpsearch best": ([hpsearch, "best", "tiny", *storage], 0),
            "hpsearch trials": ([hpsearch, "trials", "tiny", *storage], 0),
            "hpsearch --help": ([hpsearch, "--help"], 0),
            "hpsearch run (misspelled)": ([hpsearch, "run", "uspss", *storage], 2),
            "hpsearch run (study full)": (run, 0),
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, (command, code) in commands.items():
                started = time.perf_counter()
                done = subprocess.run(command, cwd=folder, capture_output=True)
                seconds[name].append(time.perf_counter() - started)
                if done.returncode != code:
                    raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr.decode()}")
    reference = statistics.median(seconds["optuna studies"])
    print(f"median of {args.repeats} runs each; ratio to `optuna studies` on the same file")
    print(f"{'command':28} {'seconds':>8} {'ratio':>7}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:28} {median:8.2f} {median / reference:7.2f}")


if __name__ == "__main__":
    main()
