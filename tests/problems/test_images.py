"""Users' own images (problems/images.py): scikit-learn's 8x8 digits written out as a PNG
folder, one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from hpsearch.errors import HpsearchError
from hpsearch.problems import get_problem, images
from hpsearch.problems.images import load_images, read_images


def write_digits(folder: Path, limit: int | None = None) -> Path:
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images[:limit], digits.target, strict=False)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).astype(np.uint8), mode="L").save(
            folder / str(label) / f"{i}.png"
        )
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("data") / "digits")


def test_an_image_folder_is_split_by_class_and_standardized(digits: Path) -> None:
    s = load_images(path=str(digits))
    assert (
        s.x_train.shape[1:] == (1, 8, 8) and len(s.x_train) + len(s.x_val) + len(s.x_test) == 1797
    )
    assert s.classes == tuple(str(d) for d in range(10)) and s.model_params == {"n_classes": 10}
    assert abs(float(s.x_train.mean())) < 1e-4 and abs(float(s.x_train.std()) - 1) < 1e-2
    counts = torch.bincount(s.y_test, minlength=10)
    assert counts.min() >= 35  # stratified: each digit about 36 times in 360 test images
    assert s.preprocess["images"]["size"] == 8 and s.preprocess["classes"] == list(s.classes)
    model = get_problem("image-classification").build_model(
        {**get_problem("image-classification").defaults, **s.model_params}, (1, 8, 8)
    )
    assert model(s.x_val[:4]).shape == (4, 10)


def test_a_folder_is_decoded_once(digits: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = read_images(digits, size=6, channels=3)
    assert first[0].shape == (1797, 3, 6, 6)

    def fail(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "decode_images", fail)
    again = read_images(digits, size=6, channels=3)  # from the cache
    assert np.array_equal(first[0], again[0]) and first[3] == again[3]


def test_bad_image_folders_are_refused(tmp_path: Path) -> None:
    folder = write_digits(tmp_path / "d", limit=40)
    (folder / "notes.txt").write_text("skipped: not an image file ending")
    Image.new("L", (10, 10)).save(folder / "3" / "big.png")
    with pytest.raises(HpsearchError, match="different sizes"):
        read_images(folder)
    assert read_images(folder, size=8)[0].shape[-2:] == (8, 8)
    (folder / "3" / "broken.png").write_text("not a png")
    with pytest.raises(HpsearchError, match=r"broken.png: not an image"):
        read_images(folder, size=8)
    (folder / "3" / "broken.png").unlink()
    (folder / "empty").mkdir()
    with pytest.raises(HpsearchError, match="empty"):
        read_images(folder, size=8)
    with pytest.raises(HpsearchError, match="does not exist"):
        read_images(tmp_path / "none")
    with pytest.raises(HpsearchError, match="channels must be 1 or 3"):
        read_images(folder, channels=2)


def test_image_arrays(tmp_path: Path) -> None:
    digits = load_digits()
    npz = tmp_path / "digits.npz"
    np.savez(npz, x=digits.images.astype(np.float32) / 16, y=digits.target)
    s = load_images(path=str(npz))
    assert s.x_train.shape[1:] == (1, 8, 8) and len(s.classes) == 10
    np.savez(npz, x=np.full((20, 4, 4), np.nan), y=np.arange(20) % 2)
    with pytest.raises(HpsearchError, match="NaN"):
        load_images(path=str(npz))
