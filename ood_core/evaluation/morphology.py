"""Image-level morphology statistics (DESIGN section 7): Gini and M20 (Lotz, Primack & Madau 2004), concentration
and rotational asymmetry (Conselice 2003), on a whole background-subtracted cutout (a field, not one galaxy's
segmentation map; see :mod:`.metrics`). Implemented from their definitions, asymmetry with statmorph's
continuous centre refinement."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from photutils.aperture import CircularAperture, aperture_photometry
from scipy.ndimage import map_coordinates
from scipy.optimize import minimize

from ood_core.errors import ConfigurationError

FloatArray = npt.NDArray[np.float64]


def finite_values(values: npt.ArrayLike) -> FloatArray:
    """The finite entries of ``values``, flattened, as float64."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    out: FloatArray = flat[np.isfinite(flat)]
    return out


def gini(values: npt.ArrayLike) -> float:
    """Gini coefficient of |values| (Lotz+2004 eq. 3): 0 when all equal, 1 when one pixel holds all the flux.

    G = sum_i (2 i - n - 1) |X_i| / (mean|X| n (n - 1)) with |X| sorted ascending, i = 1..n. NaN for an
    all-zero input or fewer than two values.
    """
    x = np.sort(np.abs(finite_values(values)))
    n = x.size
    mean = float(x.mean()) if n else 0.0
    if n < 2 or mean <= 0:
        return float("nan")
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2 * i - n - 1) * x) / (mean * n * (n - 1)))


def _positive(image: npt.ArrayLike) -> FloatArray:
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise ConfigurationError(f"morphology expects a 2-D image, got shape {data.shape}")
    out: FloatArray = np.where(np.isfinite(data) & (data > 0), data, 0.0)
    return out


def _centroid(flux: FloatArray) -> tuple[float, float]:
    total = float(flux.sum())
    if total <= 0:
        return (flux.shape[0] - 1) / 2, (flux.shape[1] - 1) / 2
    yy, xx = np.indices(flux.shape)
    return float((yy * flux).sum() / total), float((xx * flux).sum() / total)


def m20(image: npt.ArrayLike) -> float:
    """M20 (Lotz+2004 eqs. 4-5) of the positive flux: log10 of the second moment of the brightest 20 % of
    the flux over the total second moment, both about the centre that minimizes the total (the flux centroid).
    Typically -3 (one compact nucleus) to -1 (several clumps); -1.667 for a 2-D Gaussian. NaN without flux."""
    flux = _positive(image)
    total = float(flux.sum())
    if total <= 0:
        return float("nan")
    cy, cx = _centroid(flux)
    yy, xx = np.indices(flux.shape)
    moment = flux * ((yy - cy) ** 2 + (xx - cx) ** 2)
    m_tot = float(moment.sum())
    if m_tot <= 0:
        return float("nan")
    order = np.argsort(flux.ravel(), kind="stable")[::-1]
    cumulative = np.cumsum(flux.ravel()[order])
    # Brightest pixels while their summed flux stays below 20 % of the total (Lotz+2004 eq. 5).
    count = int(np.searchsorted(cumulative, 0.2 * total, side="left"))
    m_bright = float(moment.ravel()[order][: max(count, 1)].sum())
    if m_bright <= 0:
        return float("nan")
    return float(np.log10(m_bright / m_tot))


def _radius_of_fraction(radii: FloatArray, growth: FloatArray, fraction: float) -> float:
    target = fraction * growth[-1]
    index = int(np.searchsorted(growth, target, side="left"))
    if index == 0:
        return float(radii[0] * target / growth[0]) if growth[0] > 0 else float(radii[0])
    r0, r1, g0, g1 = radii[index - 1], radii[index], growth[index - 1], growth[index]
    return float(r0 + (target - g0) * (r1 - r0) / (g1 - g0)) if g1 > g0 else float(r1)


def concentration(image: npt.ArrayLike, *, n_radii: int = 64) -> float:
    """C = 5 log10(r80 / r20) (Conselice 2003), radii of circles about the flux centroid enclosing 20 % and
    80 % of the positive flux inside the largest circle that fits in the image. The growth curve is exact
    circular-aperture photometry (photutils, ``method="exact"``) on ``n_radii`` radii, linearly interpolated.
    2.15 for a 2-D Gaussian, about 2.7 for an exponential disc; NaN without flux."""
    flux = _positive(image)
    if not flux.sum() > 0:
        return float("nan")
    cy, cx = _centroid(flux)
    height, width = flux.shape
    r_max = min(cy + 0.5, cx + 0.5, height - 0.5 - cy, width - 0.5 - cx)
    if r_max <= 0.5:
        return float("nan")
    radii = np.linspace(r_max / n_radii, r_max, n_radii)
    apertures = [CircularAperture((cx, cy), r=float(r)) for r in radii]
    table = aperture_photometry(flux, apertures, method="exact")
    growth = np.array([float(table[f"aperture_sum_{i}"][0]) for i in range(n_radii)])
    if growth[-1] <= 0:
        return float("nan")
    growth = np.maximum.accumulate(growth)
    r20, r80 = _radius_of_fraction(radii, growth, 0.2), _radius_of_fraction(radii, growth, 0.8)
    if r20 <= 0:
        return float("nan")
    return float(5.0 * np.log10(r80 / r20))


def _asymmetry_about(data: FloatArray, c2y: float, c2x: float, noise_sigma: float) -> float:
    """(sum |I - I_180| - noise term) / sum |I| about the centre (c2y / 2, c2x / 2), over the pixels p whose
    180-degree image 2c - p lies inside the image. On the half-pixel grid (2c integer) the rotation is an exact
    pixel permutation; off it, I_180 is bilinearly interpolated, which also averages the noise: at fractional
    offsets (fy, fx) the interpolated noise variance is g sigma^2 with g = ((1-fy)^2 + fy^2)((1-fx)^2 + fx^2),
    so E|I - I_180| = sigma sqrt(2 (1 + g) / pi) per pixel (2 sigma / sqrt(pi) on the grid)."""
    height, width = data.shape
    y_lo, y_hi = max(0, math.ceil(c2y - (height - 1))), min(height - 1, math.floor(c2y))
    x_lo, x_hi = max(0, math.ceil(c2x - (width - 1))), min(width - 1, math.floor(c2x))
    if y_hi < y_lo or x_hi < x_lo:
        return float("inf")
    part = data[y_lo : y_hi + 1, x_lo : x_hi + 1]
    denominator = float(np.abs(part).sum())
    if denominator <= 0:
        return float("inf")
    fy, fx = c2y - math.floor(c2y), c2x - math.floor(c2x)
    if fy == 0.0 and fx == 0.0:
        # Exact: pixel (y, x) -> (2cy - y, 2cx - x), the overlap box maps onto itself reversed.
        rotated = part[::-1, ::-1]
    else:
        py, px = np.mgrid[y_lo : y_hi + 1, x_lo : x_hi + 1]
        rotated = map_coordinates(data, [c2y - py, c2x - px], order=1, mode="nearest")
    g = ((1 - fy) ** 2 + fy**2) * ((1 - fx) ** 2 + fx**2)
    # A pixel on the centre itself maps to itself and carries no noise difference.
    paired = part.size - (1 if fy == 0.0 and fx == 0.0 and int(c2y) % 2 == 0 and int(c2x) % 2 == 0 else 0)
    noise = paired * noise_sigma * math.sqrt(2.0 * (1.0 + g) / math.pi)
    return float((np.abs(part - rotated).sum() - noise) / denominator)


def asymmetry(image: npt.ArrayLike, *, search_radius: float = 2.0, noise_sigma: float = 0.0) -> float:
    """Rotational asymmetry A = min_c (sum|I - I_180| - B) / sum|I| (Conselice 2003).

    The centre c is first searched on the half-pixel grid within ``search_radius`` pixels of the flux
    centroid (where a 180-degree rotation is an exact pixel permutation), then refined continuously
    (Nelder-Mead, bilinear interpolation) within half a pixel of the best grid point, as statmorph does.
    B is the background term: Conselice measures it on a source-free patch, which a crowded field may not
    have, so here it is its expectation for Gaussian pixel noise of standard deviation ``noise_sigma``
    (see ``_asymmetry_about``). 0 for a point-symmetric image (about 0 for pure noise when ``noise_sigma``
    is its standard deviation), up to 2. NaN without flux.
    """
    data = np.asarray(image, dtype=np.float64)
    data = np.where(np.isfinite(data), data, 0.0)
    cy, cx = _centroid(_positive(data))
    if not np.abs(data).sum() > 0:
        return float("nan")
    steps = math.floor(2 * search_radius)
    best, best_c2 = float("inf"), (0.0, 0.0)
    cy2, cx2 = round(2 * cy), round(2 * cx)
    for dy in range(-steps, steps + 1):
        for dx in range(-steps, steps + 1):
            if dy * dy + dx * dx <= steps * steps:
                value = _asymmetry_about(data, cy2 + dy, cx2 + dx, noise_sigma)
                if value < best:
                    best, best_c2 = value, (float(cy2 + dy), float(cx2 + dx))
    if not math.isfinite(best):
        return float("nan")
    start = np.array(best_c2)

    def objective(c2: FloatArray) -> float:
        clipped = np.clip(c2, start - 1.0, start + 1.0)  # within half a pixel of the grid optimum
        return _asymmetry_about(data, float(clipped[0]), float(clipped[1]), noise_sigma)

    simplex = np.stack([start, start + np.array([0.5, 0.0]), start + np.array([0.0, 0.5])])
    refined = minimize(objective, start, method="Nelder-Mead",
                       options={"xatol": 0.01, "fatol": 1e-7, "initial_simplex": simplex})
    return float(min(best, float(refined.fun)))
