from __future__ import annotations

import pytest
import torch

from hpsearch import training
from hpsearch.training.augment import Affine, random_affine
from hpsearch.training.config import TrainConfig


def _digit() -> torch.Tensor:
    """A batch of 8 identical 16x16 'images': a bright 4x4 square on a -1 background."""
    x = torch.full((8, 1, 16, 16), -1.0)
    x[:, :, 6:10, 6:10] = 1.0
    return x


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Centre of brightness (row, col) of each image."""
    weight = (x - x.amin(dim=(1, 2, 3), keepdim=True))[:, 0]
    grid = torch.arange(16, dtype=x.dtype)
    rows = (weight.sum(2) * grid).sum(1) / weight.sum((1, 2))
    cols = (weight.sum(1) * grid).sum(1) / weight.sum((1, 2))
    return torch.stack([rows, cols], dim=1)


def test_strength_zero_is_the_identity() -> None:
    x = _digit()
    assert random_affine(x, Affine()) is x
    assert not Affine().active and Affine(rotate=5).active


def test_translation_moves_digits_within_the_limit_and_keeps_the_background() -> None:
    torch.manual_seed(0)
    x = _digit()
    moved = random_affine(x, Affine(translate=0.125))  # up to 2 pixels
    shift = (_centre(moved) - _centre(x)).abs()
    assert shift.max() > 0.2 and shift.max() <= 2.0 + 1e-4  # moved, by <= 2 px
    assert len({tuple(s.tolist()) for s in shift.round(decimals=3)}) > 1  # per image
    assert moved[:, :, 0, :].allclose(torch.tensor(-1.0))  # background, not zeros
    assert moved.shape == x.shape and moved.dtype == x.dtype


def test_rotation_and_scale_keep_the_centre_and_the_ink() -> None:
    torch.manual_seed(0)
    x = _digit()
    turned = random_affine(x, Affine(rotate=30, scale=0.1, shear=10))
    assert torch.allclose(_centre(turned), _centre(x), atol=0.3)
    ink = (x + 1).sum((1, 2, 3))
    assert torch.allclose((turned + 1).sum((1, 2, 3)), ink, rtol=0.3)
    assert not torch.allclose(turned, x)


def test_elastic_field_is_smooth_and_sized_in_pixels() -> None:
    from hpsearch.training.augment import elastic_field

    torch.manual_seed(0)
    field = elastic_field(256, 16, 16, 2.0, torch.device("cpu"), torch.float32)
    assert field.shape == (256, 16, 16, 2)
    pixels = field * torch.tensor([8.0, 8.0])  # back to pixels on a 16x16 grid
    rms = pixels.pow(2).sum(-1).mean((1, 2)).sqrt()
    # Per image, an RMS displacement drawn from U(0, 2) pixels.
    assert rms.max() <= 2.0 + 1e-4 and abs(float(rms.mean()) - 1.0) < 0.15
    # Smooth: neighbouring pixels move together far more than pixels half an image apart.
    near = (pixels[:, :, 1:] - pixels[:, :, :-1]).norm(dim=-1).mean()
    far = (pixels[:, :, 8:] - pixels[:, :, :-8]).norm(dim=-1).mean()
    assert near < 0.5 * far


def test_elastic_distortion_alone_changes_shape_not_place() -> None:
    torch.manual_seed(0)
    x = _digit()
    bent = random_affine(x, Affine(elastic=1.0))
    assert Affine(elastic=1.0).active and not torch.allclose(bent, x)
    assert torch.allclose(_centre(bent), _centre(x), atol=1.0)
    assert bent[:, :, 0, :].allclose(torch.tensor(-1.0), atol=0.05)


def test_training_with_augmentation_learns() -> None:
    from hpsearch.training.models import build_conv_classifier

    torch.manual_seed(0)
    x = torch.randn(128, 1, 16, 16)
    y = (x[:, 0, 4:12, 4:12].mean((1, 2)) > 0).long()  # a label robust to small shifts
    model = build_conv_classifier({"n_conv_layers": 2, "channels": 8, "activation": "relu"})
    config = TrainConfig(epochs=8, batch_size=32, lr=0.01, aug_translate=0.06, aug_rotate=10)
    result = training.train(
        model,
        x,
        y,
        training.CLASSIFICATION_LOSSES["cross_entropy"],
        config,
        evaluate=lambda m: {},
    )
    assert result.history[-1].train_loss < 0.69  # below chance-level cross-entropy


@pytest.mark.parametrize("key", ["aug_translate", "aug_rotate", "aug_scale", "aug_shear"])
def test_augmentation_keys_are_study_hyperparameters(key: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hpsearch.errors import HpsearchError
    from hpsearch.search.study_file import load_study_file

    path = tmp_path / "s.toml"
    path.write_text(f"[study]\nproblem = 'usps'\n[fixed]\n{key} = 0.1\n")
    assert load_study_file(path).base_params[key] == 0.1
    path.write_text(f"[study]\nproblem = 'usps'\n[fixed]\n{key} = -1\n")
    with pytest.raises(HpsearchError, match=key):
        load_study_file(path)
