"""The USPS problem: handwritten digits (16x16, the official 7,291 training and 2,007 test
images), the ``image-classification`` task (the lab report's conv classifier) with the USPS
files as its data and the lab report's best configuration as its defaults."""

from __future__ import annotations

import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from hpsearch.errors import HpsearchError
from hpsearch.problems.images import IMAGE_CLASSIFICATION
from hpsearch.problems.registry import TRAINING_DEFAULTS, preset, register_problem
from hpsearch.problems.splits import Splits, cache_dir, resolve_data_dir, verify_checksum

logger = logging.getLogger(__name__)

USPS_FILES = {"train": "usps/usps.bz2", "test": "usps/usps.t.bz2"}


def _usps_file(data_dir: Path, split: str) -> Path:
    relative = USPS_FILES[split]
    path = data_dir / relative
    if path.exists():
        return path
    logger.info("%s missing, downloading USPS with torchvision", path)
    import torchvision

    try:
        torchvision.datasets.USPS(str(path.parent), train=split == "train", download=True)
    except Exception as error:  # any network failure surfaces as one clear line
        raise HpsearchError(
            f"USPS file {path} is missing and could not be downloaded ({error}); "
            f"point --data-dir or $HPSEARCH_DATA_DIR at a folder holding {relative}"
        ) from error
    return path


@lru_cache(maxsize=4)
def _read_usps(path: str, checksum: str) -> tuple[np.ndarray, np.ndarray]:
    """One USPS file's images and labels. Decoding its bz2 text takes seconds, which every
    worker process of every run would repeat, so the arrays are kept in ``cache_dir()``
    under the file's (verified) md5."""
    cached = cache_dir() / f"usps-{checksum}.npz"
    try:
        with np.load(cached) as saved:
            return saved["images"], saved["labels"]
    except (OSError, ValueError, KeyError):  # not there yet, or damaged: decode again
        pass
    import torchvision

    folder, name = os.path.split(path)
    dataset = torchvision.datasets.USPS(folder, train=name == "usps.bz2")
    images, labels = dataset.data, np.asarray(dataset.targets, dtype=np.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as tmp:
            np.savez(tmp, images=images, labels=labels)
        os.replace(tmp_name, cached)  # whole or not at all: workers may read it at once
    except OSError as error:  # a read-only home: decode every time
        logger.debug("not caching %s: %s", cached, error)
    return images, labels


def load_usps(
    data_dir: str | Path | None = None, *, val_fraction: float = 0.2, seed: int = 0
) -> Splits:
    """USPS digits as ``(N, 1, 16, 16)`` float tensors and int64 labels.

    The official 7,291-image training file is split, stratified, into train and validation;
    the official 2,007-image test file is the held-out test split. Pixels are standardized
    with the training split's mean and standard deviation.
    """
    folder = resolve_data_dir(data_dir)
    checksums: dict[str, str] = {}
    arrays = {}
    for split, relative in USPS_FILES.items():
        path = _usps_file(folder, split)
        checksums[relative] = verify_checksum(path, relative)
        try:
            arrays[split] = _read_usps(str(path), checksums[relative])
        except (OSError, ValueError, EOFError) as error:
            raise HpsearchError(f"cannot read USPS file {path}: {error}") from error
    images, labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, random_state=seed, stratify=labels
    )
    train_pixels = images[train_idx].astype(np.float32) / 255.0
    mean, std = float(train_pixels.mean()), float(train_pixels.std())

    def to_tensor(pixels: np.ndarray) -> torch.Tensor:
        scaled = (pixels.astype(np.float32) / 255.0 - mean) / std
        return torch.from_numpy(scaled).unsqueeze(1)  # (N, 1, 16, 16)

    digits = tuple(str(d) for d in range(10))
    return Splits(
        x_train=to_tensor(images[train_idx]),
        y_train=torch.from_numpy(labels[train_idx]),
        x_val=to_tensor(images[val_idx]),
        y_val=torch.from_numpy(labels[val_idx]),
        x_test=to_tensor(test_images),
        y_test=torch.from_numpy(test_labels),
        checksums=checksums,
        # USPS train/val rows index the official training file, test rows the test file.
        rows={"train": train_idx, "val": val_idx, "test": np.arange(len(test_labels))},
        classes=digits,
        # As an image folder's (images.load_images): predictions on new 16x16 digit images.
        preprocess={
            "images": {"mean": [mean], "std": [std], "size": 16, "channels": 1},
            "target": "digit",
            "classes": list(digits),
        },
    )


register_problem(
    preset(
        IMAGE_CLASSIFICATION,
        name="usps",
        description="USPS handwritten digits, conv classifier",
        load_data=load_usps,
        defaults={
            **TRAINING_DEFAULTS,
            "n_conv_layers": 3,
            "channels": 64,
            "activation": "relu",
            "batch_norm": True,
            "dropout": 0.1,
            "optimizer": "adam",
            "lr": 0.01,
            "lr_schedule": "step",
            "batch_size": 50,
            "epochs": 30,
            "loss": "mse",
            "n_classes": 10,  # the data's, which image-classification reads from a folder
        },
    )
)
