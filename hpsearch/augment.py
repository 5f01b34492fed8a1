"""Data augmentation on the training device, one call per batch.

``random_affine`` moves each image of a batch by its own random translation, rotation, scale
and shear with one ``affine_grid`` + ``grid_sample`` (no per-image Python work), the kind of
distortion a new writer's digits show. Strength 0 everywhere returns the batch unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Affine:
    """Largest random change per image: ``translate`` as a fraction of the image size,
    ``rotate`` and ``shear`` in degrees, ``scale`` as a relative size change (0.1: 0.9-1.1)."""

    translate: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0

    @property
    def active(self) -> bool:
        return any((self.translate, self.rotate, self.scale, self.shear))


def _uniform(n: int, limit: float, device: torch.device) -> torch.Tensor:
    """``n`` draws from U(-limit, limit), from the global generator of ``device``."""
    return (torch.rand(n, device=device) * 2 - 1) * limit


def random_affine(x: torch.Tensor, affine: Affine) -> torch.Tensor:
    """A randomly distorted copy of the image batch ``x`` (B, C, H, W).

    Pixels moved in from outside the image take each image's background (its minimum), so
    normalized digits keep a clean background.
    """
    if not affine.active:
        return x
    n, device = x.shape[0], x.device
    angle = _uniform(n, math.radians(affine.rotate), device)
    shear = _uniform(n, math.radians(affine.shear), device)
    scale = 1.0 + _uniform(n, affine.scale, device)
    shift = _uniform(2 * n, 2.0 * affine.translate, device).view(n, 2)  # [-1, 1] coordinates
    cos, sin = torch.cos(angle), torch.sin(angle)
    tan = torch.tan(shear)
    # Rotation x shear, divided by the scale (the grid maps output pixels to input pixels).
    theta = torch.stack(
        [
            torch.stack([cos, cos * tan - sin, shift[:, 0]], dim=1),
            torch.stack([sin, sin * tan + cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    theta[:, :, :2] /= scale.view(n, 1, 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    moved = F.grid_sample(x - background, grid, padding_mode="zeros", align_corners=False)
    return moved + background
