"""Texture and source features of image tiles: what a classifier two-sample test (``c2st``) compares.

The three older fidelity numbers (pixel W1, power spectrum, source counts) are blind to structure: a tangled
high-contrast texture can match a star field's pixel histogram and its power spectrum. These features see
structure, per tile (``TILE`` x ``TILE`` pixels, default 32: four non-overlapping tiles of a 64x64 image):

- **scattering** (Mallat 2012; the torch backend of kymatio, ``J`` = 3 scales, ``L`` = 8 orientations; the
  Fréchet Scattering Distance of Zhao et al. 2023 is the astrophysical precedent): the first-order coefficients'
  slope across scales, ``S1(j) / S1(0)`` (``S1(j)``: mean modulus of the wavelet transform at scale 2^j, averaged
  over orientations and the tile; log), and the second-order ones relative to their parent, ``S2(j1, j2) / S1(j1)``
  (log): how the fluctuations at scale j1 are themselves modulated at j2 (sparse point sources, filaments and
  Gaussian noise differ there even at equal power spectra);
- **background and sources**: the tile's noise (sigma-clipped std of the high-pass residual, the image minus its
  3x3 running median, as in ``ood_core.method.noise``), its bright tail (99th percentile over the noise), the
  number of local maxima 5 noise sigma above the median (point sources), and their sharpness (peak over its 8
  neighbours' mean, relative to the peak's height: a point source as wide as the data's PSF has the data's
  sharpness; a blurred or extended one less).

Absolute levels (the tile's median, ``S1(0)`` itself) are left out on purpose: real fields vary in brightness
from one cutout to the next (held-out cutouts of one mosaic are told from its other cutouts by level alone),
and the pixel distribution is already judged by pixel W1. The noise and bright tail keep the contrast, in the
real set's units.

Images are compared in the units of the *real* set: ``Standardization.of(real)`` takes the real pixels'
sigma-clipped median and standard deviation, and every tile of every set goes through the same map
``asinh((x - median) / std)`` (linear within the noise, logarithmic for bright sources, as the run's own
asinh normalization), so a sample too bright, too faint or too noisy is seen as such.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from astropy.stats import sigma_clipped_stats
from scipy.ndimage import maximum_filter, median_filter, uniform_filter

from ood_core.errors import ConfigurationError

FloatArray = npt.NDArray[np.float64]

TILE = 32
"""Tile side in pixels (a 64x64 image gives four tiles)."""
SCATTERING_J = 3
SCATTERING_L = 8
PEAK_SIGMA = 5.0
"""A local maximum this many noise sigma above the tile's median counts as a point source."""


def scales(side: int) -> int:
    """Scattering scales J of a tile of ``side`` pixels: ``SCATTERING_J``, fewer for tiles under 32 pixels."""
    if side < 16:
        raise ConfigurationError(f"texture features need tiles of at least 16 pixels, got {side}")
    return min(SCATTERING_J, int(np.log2(side)) - 2)


def feature_names(side: int = TILE) -> list[str]:
    """Names of the columns of :func:`tile_features` for tiles of ``side`` pixels, in order."""
    j = scales(side)
    slope = [f"log_s1_j{a}_over_j0" for a in range(1, j)]
    second = [f"log_s2_over_s1_j{a}{b}" for a in range(j) for b in range(a + 1, j)]
    return [*slope, *second, "log_noise", "log_bright_tail", "log_peaks", "peak_sharpness"]


@dataclass(frozen=True)
class Standardization:
    """The affine map of the real set's pixels to noise units, then asinh: applied to every set alike."""

    centre: float
    scale: float

    @classmethod
    def of(cls, real: npt.ArrayLike) -> Standardization:
        """Sigma-clipped median and standard deviation of the real images' finite pixels."""
        values = np.asarray(real, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ConfigurationError("the real images have no finite pixel")
        _, median, std = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
        scale = float(std) if std > 0 else float(np.std(values)) or 1.0
        return cls(float(median), scale)

    def apply(self, images: npt.ArrayLike) -> FloatArray:
        stack = np.asarray(images, dtype=np.float64)
        stack = np.where(np.isfinite(stack), stack, self.centre)
        out: FloatArray = np.arcsinh((stack - self.centre) / self.scale)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"centre": self.centre, "scale": self.scale, "map": "asinh((x - centre) / scale)"}


def tiles(images: npt.ArrayLike, tile: int = TILE) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Non-overlapping ``tile`` x ``tile`` tiles of (N, H, W) images and each tile's parent image index.
    An image smaller than ``tile`` is one tile of its own (cropped square)."""
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ConfigurationError(f"tiles expect (N, H, W) images, got shape {stack.shape}")
    _, height, width = stack.shape
    side = min(tile, height, width)
    rows, cols = height // side, width // side
    cut = stack[:, : rows * side, : cols * side].reshape(-1, rows, side, cols, side)
    out: FloatArray = cut.transpose(0, 1, 3, 2, 4).reshape(-1, side, side)
    parents = np.repeat(np.arange(stack.shape[0], dtype=np.int64), rows * cols)
    return out, parents


@lru_cache(maxsize=4)
def _scattering(side: int, j: int, orientations: int) -> Any:
    # kymatio.torch also imports the 3-D harmonic scattering, whose filter bank needs scipy.special.sph_harm
    # (removed in SciPy 1.15); the 2-D frontend alone imports cleanly.
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    return ScatteringTorch2D(J=j, shape=(side, side), L=orientations, max_order=2)


def scattering_features(tiles_: FloatArray, orientations: int = SCATTERING_L) -> FloatArray:
    """Per tile: log S1(j) / S1(0) for j >= 1 (S1 averaged over orientations and positions), log S2(j1, j2) /
    S1(j1)."""
    side = int(tiles_.shape[-1])
    j = scales(side)
    with torch.no_grad():
        coefficients = _scattering(side, j, orientations)(torch.from_numpy(tiles_.astype(np.float32)))
    mean = coefficients.mean(dim=(-2, -1)).double().numpy()  # (N, 1 + jL + L^2 j(j-1)/2)
    tiny = 1e-12
    first = mean[:, 1: 1 + j * orientations].reshape(-1, j, orientations).mean(axis=2)
    log_first = np.log(first + tiny)
    columns = [log_first[:, 1:] - log_first[:, :1]]
    offset = 1 + j * orientations
    pairs = [(a, b) for a in range(j) for b in range(a + 1, j)]
    second = mean[:, offset:].reshape(-1, len(pairs), orientations * orientations).mean(axis=2) if pairs else None
    for k, (a, _) in enumerate(pairs):
        assert second is not None
        columns.append(np.log(second[:, k:k + 1] + tiny) - np.log(first[:, a:a + 1] + tiny))
    out: FloatArray = np.concatenate(columns, axis=1)
    return out


def _noise(residual: FloatArray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, std = sigma_clipped_stats(residual, sigma=3.0, maxiters=5)
    return float(std) if np.isfinite(std) and std > 0 else 1e-6


def source_features(tile: FloatArray) -> list[float]:
    """Log noise, log bright tail, log(1 + peaks) and mean peak sharpness of one standardized tile."""
    median = float(np.median(tile))
    residual = tile - median_filter(tile, size=3, mode="reflect")
    noise = _noise(residual)
    tail = max(float(np.percentile(tile, 99)) - median, 0.0) / noise
    is_peak = (tile == maximum_filter(tile, size=3, mode="nearest")) & (tile > median + PEAK_SIGMA * noise)
    neighbours = (uniform_filter(tile, size=3, mode="nearest") * 9 - tile) / 8
    heights = tile[is_peak] - median
    sharpness = float(np.mean((tile[is_peak] - neighbours[is_peak]) / heights)) if heights.size else 0.0
    return [float(np.log(noise)), float(np.log1p(tail)), float(np.log1p(heights.size)), sharpness]


def tile_features(images: npt.ArrayLike, standardization: Standardization, tile: int = TILE
                  ) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """(features (T, F), parent image of each tile (T,)) of physical (N, H, W) images; columns
    :func:`feature_names`."""
    cut, parents = tiles(standardization.apply(images), tile)
    scattering = scattering_features(cut)
    sources = np.array([source_features(t) for t in cut], dtype=np.float64)
    features: FloatArray = np.concatenate([scattering, sources], axis=1)
    return features, parents
