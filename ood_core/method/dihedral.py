"""The flips and right-angle rotations of an image tile (the dihedral group D4 of the square).

Transform ``k`` (0..7) rotates by ``k % 4`` quarter turns in the (y, x) plane of the last two axes, then flips
the x axis when ``k >= 4``; ``k = 0`` is the identity. A square tile has all eight; a non-square one keeps
its shape under four of them (identity, half turn, and the two mirror flips: k = 0, 2, 4, 6).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ood_core.errors import ConfigurationError

TRANSFORM_NAMES: tuple[str, ...] = (
    "identity", "rot90", "rot180", "rot270", "flip_x", "rot90+flip_x", "rot180+flip_x", "rot270+flip_x",
)
"""Name of transform k (rotation by quarter turns, then the flip of the x axis)."""


def dihedral(images: Tensor, k: int) -> Tensor:
    """Transform ``k`` of (..., H, W) images: rotate by k % 4 quarter turns, then flip x when k >= 4."""
    if not 0 <= k < 8:
        raise ConfigurationError(f"dihedral index must be 0..7, got {k}")
    if images.ndim < 2:
        raise ConfigurationError(f"dihedral transforms need (..., H, W) images, got {tuple(images.shape)}")
    out = torch.rot90(images, k % 4, dims=(-2, -1))
    return out.flip(-1) if k >= 4 else out


def shape_preserving(height: int, width: int) -> tuple[int, ...]:
    """Indices of the transforms that map an H x W tile onto an H x W tile: all 8 if square, else 0, 2, 4, 6."""
    return tuple(range(8)) if height == width else (0, 2, 4, 6)
