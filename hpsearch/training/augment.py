"""Data augmentation on the training device, one call per batch.

``random_affine`` moves each image of a batch by its own random translation, rotation, scale
and shear, and optionally a smooth random elastic displacement (Simard et al., 2003), with one
``affine_grid`` + ``grid_sample`` (no per-image Python work): the kind of distortion a new
writer's digits show. Strength 0 everywhere returns the batch unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Affine:
    """Largest random change per image: ``translate`` as a fraction of the image size,
    ``rotate`` and ``shear`` in degrees, ``scale`` as a relative size change (0.1: 0.9-1.1),
    ``elastic`` as the root-mean-square displacement of a pixel, in pixels, of a random field
    smoothed over ``ELASTIC_SIGMA`` pixels."""

    translate: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic: float = 0.0

    @property
    def active(self) -> bool:
        return any((self.translate, self.rotate, self.scale, self.shear, self.elastic))


# Smoothness of the elastic field, in pixels: Simard et al. used 4 on 28x28 MNIST digits.
ELASTIC_SIGMA = 2.0


def _uniform(n: int, limit: float, device: torch.device) -> torch.Tensor:
    """``n`` draws from U(-limit, limit), from the global generator of ``device``."""
    return (torch.rand(n, device=device) * 2 - 1) * limit


def elastic_field(
    n: int, height: int, width: int, strength: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``n`` random smooth displacement fields (n, H, W, 2) in ``grid_sample`` coordinates:
    uniform noise blurred by a Gaussian of ``ELASTIC_SIGMA`` pixels, rescaled per image to a
    root-mean-square displacement drawn from U(0, ``strength``) pixels."""
    radius = math.ceil(3 * ELASTIC_SIGMA)
    taps = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-(taps**2) / (2 * ELASTIC_SIGMA**2))
    kernel = kernel / kernel.sum()
    noise = torch.rand(n * 2, 1, height, width, device=device, dtype=dtype) * 2 - 1
    noise = F.conv2d(noise, kernel.view(1, 1, 1, -1), padding=(0, radius))
    field = F.conv2d(noise, kernel.view(1, 1, -1, 1), padding=(radius, 0)).view(n, 2, height, width)
    rms = field.pow(2).sum(dim=1).mean(dim=(1, 2)).sqrt().clamp_min(1e-12)
    size = torch.rand(n, device=device, dtype=dtype) * strength / rms
    field = field * size.view(n, 1, 1, 1)
    # Pixels -> [-1, 1] coordinates; grid_sample's last axis is (x, y) = (width, height).
    per_pixel = torch.tensor([2.0 / width, 2.0 / height], device=device, dtype=dtype)
    return field.permute(0, 2, 3, 1) * per_pixel


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
    if affine.elastic > 0:
        grid = grid + elastic_field(n, x.shape[2], x.shape[3], affine.elastic, device, x.dtype)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    moved = F.grid_sample(x - background, grid, padding_mode="zeros", align_corners=False)
    return moved + background
