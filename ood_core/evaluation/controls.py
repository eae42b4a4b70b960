"""Negative controls of a realism test: image sets made from real images that are known not to be real skies.

A statistic that claims to tell real images from fakes must catch these (``bench/c2st_table.py`` and
``tests/test_c2st.py`` check the C2ST against them). Each takes physical (N, H, W) images and returns the same
shape, seeded:

- ``white_noise``: Gaussian noise with each image's own mean and standard deviation (the pixel histogram's first
  two moments kept, all structure gone);
- ``blurred``: a Gaussian blur of ``sigma`` pixels (sources and noise smoothed away);
- ``sources_removed``: compact sources (photutils segments of at most ``max_area`` pixels, 3 sigma over the
  sigma-clipped background) replaced by the surrounding background (interpolated) plus noise at the image's
  own high-pass level, so only the sources are missing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from astropy.convolution import Gaussian2DKernel, interpolate_replace_nans
from astropy.stats import sigma_clipped_stats
from photutils.segmentation import detect_sources
from scipy.ndimage import binary_dilation, gaussian_filter, median_filter

FloatArray = npt.NDArray[np.float64]


def _stack(images: npt.ArrayLike) -> FloatArray:
    stack: FloatArray = np.asarray(images, dtype=np.float64)
    return stack


def white_noise(images: npt.ArrayLike, seed: int = 0) -> FloatArray:
    """Gaussian noise with each image's mean and standard deviation."""
    stack = _stack(images)
    rng = np.random.default_rng(seed)
    mean = stack.mean(axis=(1, 2), keepdims=True)
    std = stack.std(axis=(1, 2), keepdims=True)
    out: FloatArray = mean + std * rng.standard_normal(stack.shape)
    return out


def blurred(images: npt.ArrayLike, sigma: float = 2.0) -> FloatArray:
    """Each image convolved with a Gaussian of ``sigma`` pixels."""
    stack = _stack(images)
    out: FloatArray = np.stack([gaussian_filter(image, sigma, mode="reflect") for image in stack])
    return out


def _without_sources(image: FloatArray, rng: np.random.Generator, max_area: int) -> FloatArray:
    _, median, std = sigma_clipped_stats(image, sigma=3.0, maxiters=10)
    segments = detect_sources(gaussian_filter(image, 1.0), median + 3.0 * std, n_pixels=3)
    if segments is None:
        return image.copy()
    areas = np.bincount(segments.data.ravel())
    compact = np.flatnonzero((areas <= max_area) & (np.arange(areas.size) > 0))
    mask = binary_dilation(np.isin(segments.data, compact), iterations=1)
    if not mask.any():
        return image.copy()
    holes = np.where(mask, np.nan, image)
    for _ in range(8):  # large holes need a few passes of the kernel
        holes = interpolate_replace_nans(holes, Gaussian2DKernel(2.0))
        if np.isfinite(holes).all():
            break
    holes = np.where(np.isfinite(holes), holes, median)
    _, _, noise = sigma_clipped_stats(image - median_filter(image, size=3), sigma=3.0, maxiters=5)
    out: FloatArray = np.where(mask, holes + noise * rng.standard_normal(image.shape), image)
    return out


def sources_removed(images: npt.ArrayLike, seed: int = 0, max_area: int = 64) -> FloatArray:
    """Compact sources replaced by the interpolated background plus matching noise."""
    stack = _stack(images)
    rng = np.random.default_rng(seed)
    return np.stack([_without_sources(image, rng, max_area) for image in stack])
