"""What every problem's data loader returns: ``Splits``, train / validation / test tensors
already normalized; and the packaged data files, their checksums and the decoded-data cache."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.errors import HpsearchError

PACKAGED_DATA_DIR = Path(__file__).resolve().parent.parent / "datasets"

# Checksums of the copies shipped with hpsearch, plus those of torchvision's own USPS
# download (the shipped files were rebuilt from a float copy, so their bytes differ).
KNOWN_MD5 = {
    "usps/usps.bz2": {"41b2f6074f119ec27691da95e416ada0", "ec16c51db3855ca6c91edd34d0e9b197"},
    "usps/usps.t.bz2": {"13305b45f3ecdd497292913b6671a378", "8ea070ee2aca1ac39742fdd1ef5ed118"},
    "house_prices/train.csv": {"80ccab65fb115cbad143dbbd2bcd5577"},
}


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors of one problem, already normalized.

    ``x_test``/``y_test`` are the held-out split: the search never reads them.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    # Scale of the regression target, to turn normalized errors back into dollars; with
    # ``log_target`` the normalized target is log(price).
    target_mean: float = 0.0
    target_std: float = 1.0
    log_target: bool = False
    checksums: dict[str, str] = field(default_factory=dict)
    # Source rows of each split ("train", "val", "test"), for audits and tests.
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    # A classification target's class names, in the order of its indices (users' tables).
    classes: tuple[str, ...] = ()
    # What predictions on new inputs need, as JSON (a user's table: its fitted encoding).
    preprocess: dict[str, Any] = field(default_factory=dict)

    @property
    def model_params(self) -> dict[str, int]:
        """What the data tell a model builder beside a trial's params: the class count of
        a table whose classes the data define."""
        return {"n_classes": len(self.classes)} if self.classes else {}

    def describe(self, most: int = 12) -> str:
        """One line on the rows of each split and, for classes, how many rows of each there
        are in all (the ``most`` largest classes, then how many more)."""
        sizes = (len(self.y_train), len(self.y_val), len(self.y_test))
        line = "{:,} train / {:,} validation / {:,} test rows".format(*sizes)
        if not self.classes:
            return line
        labels = torch.cat([self.y_train, self.y_val, self.y_test]).cpu()
        counts = torch.bincount(labels, minlength=len(self.classes)).tolist()
        largest = sorted(range(len(counts)), key=lambda k: -counts[k])
        shown = sorted(largest[:most])
        named = ", ".join(f"{self.classes[k]} {counts[k]:,}" for k in shown)
        more = f" and {len(counts) - most} more" if len(counts) > most else ""
        return f"{line}; {len(counts)} classes: {named}{more}"

    def to(self, device: torch.device | str) -> Splits:
        """Return a copy with every tensor moved to ``device``: training reads the data
        there, so they must fit in its memory.

        Raises:
            HpsearchError: they do not.
        """
        names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        try:
            moved = {name: getattr(self, name).to(device) for name in names}
        except torch.OutOfMemoryError:
            size = sum(getattr(self, name).nbytes for name in names) / 2**30
            raise HpsearchError(
                f"the data ({size:.1f} GiB) do not fit in the memory of {device}; run on "
                "the CPU (--device cpu) or with fewer rows or columns"
            ) from None
        return replace(self, **moved)

    def to_dollars(self, normalized: torch.Tensor) -> torch.Tensor:
        """Normalized regression targets or predictions -> prices (float64)."""
        value = normalized.double() * self.target_std + self.target_mean
        return torch.exp(value) if self.log_target else value


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: the argument, else the packaged copy."""
    return Path(data_dir or PACKAGED_DATA_DIR).expanduser()


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256sum(path: Path) -> str:
    """``sha256:<hex>`` of a user's data file (SHA-256 runs about twice as fast as MD5 on CPUs
    with SHA instructions, which a large table notices)."""
    with path.open("rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def verify_checksum(path: Path, relative: str) -> str:
    """Check ``path`` against the known checksums of ``relative``; return its md5.

    Raises:
        HpsearchError: the file's checksum matches no known copy.
    """
    checksum = md5sum(path)
    if checksum not in KNOWN_MD5[relative]:
        raise HpsearchError(
            f"corrupt data file {path}: md5 {checksum} matches no known copy of {relative}"
        )
    return checksum


def available_memory() -> int | None:
    """Bytes this process may still allocate: the smaller of the machine's available memory
    and what its cgroup (a container's limit) leaves; None where neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def cache_dir() -> Path:
    """Where decoded data sets are kept between runs: ``$XDG_CACHE_HOME/hpsearch``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpsearch"
