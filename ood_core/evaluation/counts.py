"""Metrics for photon-counts skies, where most pixels hold 0 or 1 photons (issue 27, item 3).

Pixel W1, the power spectrum and peaks found on raw pixels mean little at under one count a pixel: a Gaussian
field with the right mean and variance matches them, yet it holds negative and fractional "photons". These
statistics are the ones a gamma-ray or X-ray astronomer reads off a counts map:

- the **distribution of counts per pixel** (the fraction of pixels with 0, 1, 2, ... photons), compared by total
  variation, and the fraction of pixels that are not counts at all (negative or fractional);
- the **total counts per map**, compared in dex (median) and by W1 relative to the reference median;
- the **radial profile** (mean counts per pixel in annuli about the map centre, where the acceptance peaks:
  ``photutils.profiles.RadialProfile``), compared in dex;
- **sources on a significance map**: counts in a disc (``on``) against a ring around it (``off``, the ring
  background of TeV and GeV imaging), turned into the Li & Ma (1983, eq. 17) significance by gammapy's
  ``WStatCountsStatistic``; peaks above ``threshold`` sigma (``photutils.detection.find_peaks``) are sources.
  The number of sources per map is compared by W1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from photutils.detection import find_peaks
from photutils.profiles import RadialProfile
from photutils.utils.exceptions import NoDetectionsWarning
from scipy.ndimage import convolve
from scipy.stats import wasserstein_distance

from ood_core.errors import ConfigurationError
from ood_core.method.counts_domain import is_counts_data as is_counts_data  # defined where a run decides its domain

FloatArray = npt.NDArray[np.float64]

PMF_BINS = 8
"""Counts-per-pixel histogram: 0, 1, ..., 6 and ">= 7" photons."""
PROFILE_FLOOR = 1e-3
"""Counts per pixel added to both radial profiles before taking logs: empty annuli stay finite."""

COUNTS_METRIC_DOCS: dict[str, str] = {
    "counts_pmf_tv": "total variation between the sets' fractions of pixels holding 0, 1, ..., >=7 counts (0-1)",
    "counts_zero_fraction": "fraction of the set's pixels holding no count",
    "counts_not_integer": "fraction of the set's pixels that are negative or not whole numbers (0 for counts)",
    "counts_total_dex": "|log10| of the ratio of the sets' median total counts per map",
    "counts_total_w1_rel": "W1 between total counts per map, over the reference median",
    "counts_profile_dex": "RMS over annuli of log10 ratios of mean radial profiles (counts per pixel)",
    "counts_sources_mean": "mean number of Li & Ma sources per map",
    "counts_sources_w1": "W1 between the numbers of Li & Ma sources per map",
}


@dataclass(frozen=True)
class SignificanceConfig:
    """Geometry of the on/off significance map, in pixels, and the detection threshold in sigma."""

    on_radius: float = 3.0
    off_inner: float = 6.0
    off_outer: float = 12.0
    threshold: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.on_radius < self.off_inner < self.off_outer:
            raise ConfigurationError(
                f"significance geometry on={self.on_radius}, off={self.off_inner}-{self.off_outer}: need "
                "0 < on radius < off inner radius < off outer radius")


def _disc(radius: float, inner: float = -1.0) -> FloatArray:
    half = math.ceil(radius)
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(y, x)
    out: FloatArray = ((r <= radius) & (r > inner)).astype(np.float64)
    return out


def significance_map(image: npt.ArrayLike, config: SignificanceConfig | None = None) -> FloatArray:
    """Li & Ma significance of the counts in a disc against the ring around it, at every pixel (signed)."""
    from gammapy.stats import WStatCountsStatistic  # imports in ~1.5 s; only counts runs pay for it

    config = config or SignificanceConfig()
    counts = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0), 0.0, None)
    valid = np.isfinite(np.asarray(image, dtype=np.float64)).astype(np.float64)
    on_kernel, off_kernel = _disc(config.on_radius), _disc(config.off_outer, config.off_inner)
    n_on = convolve(counts, on_kernel, mode="constant")
    n_off = convolve(counts, off_kernel, mode="constant")
    # Areas from the valid pixels actually covered, so the map's edges and masked pixels stay unbiased.
    area_on = convolve(valid, on_kernel, mode="constant")
    area_off = convolve(valid, off_kernel, mode="constant")
    alpha = np.divide(area_on, area_off, out=np.zeros_like(area_on), where=area_off > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sig = np.asarray(WStatCountsStatistic(n_on=n_on, n_off=n_off, alpha=alpha).sqrt_ts, dtype=np.float64)
    sig[(area_off <= 0) | (area_on <= 0) | ~np.isfinite(sig)] = 0.0
    return sig


def count_sources(image: npt.ArrayLike, config: SignificanceConfig | None = None) -> int:
    """Peaks of the significance map above the threshold, at least an on-disc apart."""
    config = config or SignificanceConfig()
    sig = significance_map(image, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        peaks = find_peaks(sig, config.threshold, box_size=2 * math.ceil(config.on_radius) + 1)
    return 0 if peaks is None else len(peaks)


def counts_pmf(images: npt.ArrayLike, bins: int = PMF_BINS) -> FloatArray:
    """Fractions of finite pixels holding 0, 1, ..., bins-2 and >= bins-1 counts (values rounded, negatives 0)."""
    values = np.asarray(images, dtype=np.float64)
    finite = np.clip(np.round(values[np.isfinite(values)]), 0, bins - 1).astype(np.int64)
    if finite.size == 0:
        raise ConfigurationError("counts_pmf: the images hold no finite pixel")
    return np.bincount(finite, minlength=bins).astype(np.float64) / finite.size


def radial_profile(image: npt.ArrayLike, n_bins: int = 8) -> FloatArray:
    """Mean counts per pixel in ``n_bins`` equal annuli from the map centre to its inscribed circle."""
    data = np.asarray(image, dtype=np.float64)
    height, width = data.shape
    radii = np.linspace(0.0, min(height, width) / 2.0, n_bins + 1)
    profile = RadialProfile(data, ((width - 1) / 2.0, (height - 1) / 2.0), radii, mask=~np.isfinite(data))
    return np.asarray(profile.profile, dtype=np.float64)


@dataclass(frozen=True)
class CountsStatistics:
    """Per-set statistics of counts maps; computed once per set."""

    n: int
    pmf: FloatArray
    not_integer: float
    totals: FloatArray
    profile: FloatArray
    sources: FloatArray


def counts_statistics(images: npt.ArrayLike, config: SignificanceConfig | None = None) -> CountsStatistics:
    """Statistics of (N, H, W) maps in counts (physical units)."""
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ConfigurationError(f"counts statistics expect (N, H, W) maps, got shape {stack.shape}")
    finite = stack[np.isfinite(stack)]
    return CountsStatistics(
        n=int(stack.shape[0]),
        pmf=counts_pmf(stack),
        not_integer=float(np.mean((finite < 0) | (finite != np.round(finite)))) if finite.size else 1.0,
        totals=np.nansum(stack, axis=(1, 2)),
        profile=np.mean([radial_profile(image) for image in stack], axis=0),
        sources=np.array([count_sources(image, config) for image in stack], dtype=np.float64),
    )


def compare_counts(candidate: CountsStatistics, reference: CountsStatistics) -> dict[str, float]:
    """The counts metrics of one candidate set against the reference set (see COUNTS_METRIC_DOCS)."""
    ref_total = float(np.median(reference.totals))
    cand_total = float(np.median(candidate.totals))
    ratio = np.log10((candidate.profile + PROFILE_FLOOR) / (reference.profile + PROFILE_FLOOR))
    return {
        "counts_pmf_tv": 0.5 * float(np.abs(candidate.pmf - reference.pmf).sum()),
        "counts_zero_fraction": float(candidate.pmf[0]),
        "counts_not_integer": candidate.not_integer,
        "counts_total_dex": abs(math.log10(cand_total / ref_total)) if cand_total > 0 and ref_total > 0
        else float("inf"),
        "counts_total_w1_rel": float(wasserstein_distance(candidate.totals, reference.totals)) / ref_total
        if ref_total > 0 else float("nan"),
        "counts_profile_dex": float(np.sqrt(np.mean(ratio**2))),
        "counts_sources_mean": float(np.mean(candidate.sources)),
        "counts_sources_w1": float(wasserstein_distance(candidate.sources, reference.sources)),
    }
