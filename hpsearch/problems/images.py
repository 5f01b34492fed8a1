"""Users' own images: a folder with one sub-folder per class (torchvision's ``ImageFolder``
layout) or an ``.npz`` of arrays, decoded once into a cache, split and standardized with
training statistics; and the ``image-classification`` task (the conv classifier) that searches
them, as a registry entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.problems import baselines, metrics
from hpsearch.problems.registry import TRAINING_DEFAULTS, Problem, register_problem
from hpsearch.problems.splits import Splits, cache_dir, sha256sum
from hpsearch.training import CLASSIFICATION_LOSSES, GROUP_PARAMS, models

logger = logging.getLogger(__name__)


def read_images(
    path: str | Path, *, size: int | None = None, channels: int | None = None
) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    """Images as ``(N, C, H, W)`` floats in [0, 1], the class names, each image's class
    index and a checksum of the source. ``path`` is a folder of class sub-folders (read with
    torchvision's ``ImageFolder`` rules: image file endings only, others skipped) or an
    ``.npz`` of ``x`` ((N, C, H, W) or (N, H, W)) and ``y``. ``size`` resizes to size x size,
    ``channels`` 1 (grey) or 3 (RGB) converts.

    Raises:
        HpsearchError: a missing or empty folder or class, a file that is not an image,
            images of different or non-square sizes without ``size``, a bad ``.npz``.
    """
    source = Path(path).expanduser()
    if channels not in (None, 1, 3):
        raise HpsearchError(f"{source}: channels must be 1 or 3, got {channels}")
    if size is not None and size < 1:
        raise HpsearchError(f"{source}: size must be a positive number of pixels, got {size}")
    if source.is_file() and source.suffix.lower() == ".npz":
        return _npz_images(source, size, channels)
    if not source.is_dir():
        raise HpsearchError(f"image folder {source} does not exist")
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        names, index = find_classes(str(source))
        files = make_dataset(str(source), index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:  # no class folder, or a class without images
        raise HpsearchError(f"{source}: {error}") from None
    # Decoded once per folder and options: the cache key covers every file's name, size and
    # modification time (reading every image's bytes to checksum it costs what decoding does).
    prefix = os.path.join(str(source), "")  # make_dataset joins onto it: no relpath (slow)
    stats = [(f.removeprefix(prefix), os.stat(f)) for f, _ in files]
    listing = [(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats]
    key = hashlib.md5(
        json.dumps([listing, size, channels]).encode(), usedforsecurity=False
    ).hexdigest()
    cached = cache_dir() / "images" / f"{key}.npz"
    labels = np.array([label for _, label in files], dtype=np.int64)
    if cached.exists():
        try:
            with np.load(cached) as arrays:
                return arrays["x"].astype(np.float32) / 255.0, names, labels, f"files:{key}"
        except (OSError, ValueError, KeyError):
            logger.warning("damaged image cache %s: decoding again", cached)
    pixels = decode_images([f for f, _ in files], source, size, channels)
    _store(cached, pixels)
    return pixels.astype(np.float32) / 255.0, names, labels, f"files:{key}"


def decode_images(
    files: Sequence[str], source: Path, size: int | None, channels: int | None
) -> Any:
    """The image ``files`` as ``(N, C, H, W)`` uint8, of one square size (``size`` resizes)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                mode = {1: "L", 3: "RGB"}.get(channels or 0) or (
                    "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                )
                converted = image.convert(mode)
                if size is not None:
                    converted = converted.resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(converted, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as error:
            raise HpsearchError(f"{file}: not an image that can be read ({error})") from None
        images.append(array if array.ndim == 3 else array[:, :, None])
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        raise HpsearchError(
            f"{source}: images of different sizes or channels ({', '.join(map(str, shapes[:4]))}"
            "); set size = N (and channels = 1 or 3) in [data]"
        )
    height, width, _ = shapes[0]
    if height != width:
        raise HpsearchError(f"{source}: images are {height}x{width}; set size = N for square ones")
    return np.stack(images).transpose(0, 3, 1, 2)  # (N, C, H, W) uint8


def _store(path: Path, pixels: np.ndarray) -> None:
    """Keep the decoded pixels; a cache that cannot be written only costs the time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, x=pixels)
        os.replace(handle.name, path)  # whole or absent for concurrent workers
    except OSError as error:
        logger.warning("cannot cache decoded images in %s: %s", path.parent, error)


def _npz_images(
    path: Path, size: int | None, channels: int | None
) -> tuple[np.ndarray, list[str], np.ndarray, str]:
    with np.load(path, allow_pickle=False) as arrays:
        if "x" not in arrays or "y" not in arrays:
            raise HpsearchError(f"{path}: an image .npz holds x (N, C, H, W) and y (N,)")
        x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise HpsearchError(
            f"{path}: x must be (N, C, H, W) or (N, H, W) and y (N,), got {x.shape}, {y.shape}"
        )
    if x.dtype.kind in "fc" and not np.isfinite(x).all():
        raise HpsearchError(
            f"{path}: x holds {int((~np.isfinite(x)).sum())} NaN or infinite values"
        )
    if size is not None or channels is not None:
        raise HpsearchError(f"{path}: size and channels apply to image folders, not .npz arrays")
    if x.shape[2] != x.shape[3]:
        raise HpsearchError(f"{path}: images are {x.shape[2]}x{x.shape[3]}; give square ones")
    pixels = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    names = sorted({str(label) for label in y.tolist()})
    labels = np.array([names.index(str(label)) for label in y.tolist()], dtype=np.int64)
    return pixels, names, labels, sha256sum(path)


def image_files(folder: Path) -> list[str]:
    """Every image file below ``folder`` (torchvision's image file endings), sorted."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(
        str(path)
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS
    )


def load_images(
    data_dir: str | Path | None = None,
    *,
    path: str,
    size: int | None = None,
    channels: int | None = None,
    test: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """The images at ``path`` (``read_images``) as standardized ``(N, C, H, W)`` tensors and
    class indices (``Splits.classes``): ``test`` and ``val_fraction`` of all images held out
    at random (``seed``), stratified by class; each channel standardized with the training
    images' mean and deviation. ``data_dir`` is not used: ``path`` names the images.

    Raises:
        HpsearchError: what ``read_images`` refuses, one class, or a class too small to
            appear in every split.
    """
    pixels, names, labels, checksum = read_images(path, size=size, channels=channels)
    source = Path(path).expanduser()
    if not 0.0 < test < 1.0 or not 0.0 < val_fraction < 1.0 - test:
        raise HpsearchError(f"{source}: test and val_fraction must leave training images")
    counts = np.bincount(labels, minlength=len(names))
    if len(names) < 2:
        raise HpsearchError(f"{source}: one class ({names[0] if names else 'none'}); need two")
    if counts.min() < 3:
        small = names[int(counts.argmin())]
        raise HpsearchError(
            f"{source}: class {small!r} has {int(counts.min())} images; each class needs at "
            "least 3 to appear in every split"
        )
    rows = np.arange(len(labels))
    try:
        rest, test_rows = train_test_split(rows, test_size=test, random_state=seed, stratify=labels)
        train_rows, val_rows = train_test_split(
            rest, test_size=val_fraction / (1 - test), random_state=seed, stratify=labels[rest]
        )
    except ValueError as error:
        raise HpsearchError(f"{source}: cannot split {len(rows):,} images: {error}") from None
    train = pixels[train_rows]
    mean, deviation = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    std = np.where(deviation > 0, deviation, 1.0)

    def split(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels[idx] - mean[None, :, None, None]) / std[None, :, None, None]
        return torch.tensor(x, dtype=torch.float32), torch.tensor(labels[idx])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = map(
        split, (train_rows, val_rows, test_rows)
    )
    return Splits(
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        checksums={str(source): checksum},
        rows={"train": train_rows, "val": val_rows, "test": test_rows},
        classes=tuple(names),
        # What predictions on new images need (finalize.json).
        preprocess={
            "images": {
                "mean": mean.tolist(),
                "std": std.tolist(),
                "size": int(pixels.shape[-1]),
                "channels": int(pixels.shape[1]),
            },
            "target": "class",
            "classes": list(names),
        },
    )


def build_image_classifier(params: Mapping[str, Any], input_shape: Sequence[int]) -> nn.Module:
    """The conv classifier (``models.build_conv_classifier``) with one logit per class of
    the data (``n_classes``, from ``Splits.model_params``)."""
    return models.build_conv_classifier(params, input_shape, int(params["n_classes"]))


IMAGE_CLASSIFICATION = register_problem(
    Problem(
        name="image-classification",
        task="image-classification",
        description="your images, conv classifier",
        load_data=load_images,
        build_model=build_image_classifier,
        model_hyperparameters=models.CONV_HYPERPARAMETERS,
        per_layer=models.CONV_PER_LAYER,
        group_params=models.CONV_GROUP_PARAMS | GROUP_PARAMS,
        losses=CLASSIFICATION_LOSSES,
        evaluate=metrics.classification_metrics,
        test_metrics=metrics.classification_test_metrics,
        metrics={"val_accuracy": "maximize", "val_cross_entropy": "minimize"},
        defaults={
            **TRAINING_DEFAULTS,
            "n_conv_layers": 2,
            "channels": 32,
            "activation": "relu",
            "batch_norm": True,
            "dropout": 0.1,
            "optimizer": "adam",
            "lr": 3e-3,
            "lr_schedule": "cosine",
            "batch_size": 64,
            "epochs": 10,
            "loss": "cross_entropy",
        },
        combine=models.mean_softmax,
        baselines=(baselines.logistic_regression, baselines.rbf_svm),
    )
)
