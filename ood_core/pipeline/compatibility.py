"""Inputs that may not belong together: pixel scales and levels compared across the input frames, in words.

Units are compared elsewhere and refused when they mix (:class:`~ood_core.errors.MixedUnitsError`,
:mod:`ood_core.method.resampling`). Here, warnings (the run goes on; provenance ``input_warnings``):

- **pixel scales** (``astropy.wcs.utils.proj_plane_pixel_scales`` of each celestial WCS) differing by more than
  :data:`PIXEL_SCALE_TOLERANCE`; frames without a celestial WCS beside frames with one are named too;
- **levels**, under one per-run normalization only: each frame's background and noise (sigma-clipped median and
  standard deviation, ``astropy.stats.sigma_clipped_stats``) and its range above the background (the 99.8th
  percentile minus the background, what the normalization's interval spans; reported, not tested). Noise
  differing by more than :data:`LEVEL_RATIO`, or backgrounds further apart than :data:`LEVEL_RATIO` times the
  larger noise, means one shared normalization shows the fainter frames as black: the warning names the files
  and the fix (``--normalization per_image``, or separate runs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.wcs.utils import proj_plane_pixel_scales

from ood_core.io.fits import FitsImage

log = logging.getLogger(__name__)

PIXEL_SCALE_TOLERANCE = 0.05
"""Relative difference of pixel scales above which inputs are said not to share one scale."""
LEVEL_RATIO = 10.0
"""An order of magnitude: the noise ratio (and background offset in noise units) above which levels differ."""
STATS_PIXELS = 1 << 20
"""Level statistics use an evenly strided subset of at most this many valid pixels of each frame."""
UPPER_PERCENTILE = 99.8
"""The range above the background reaches this percentile (the normalization's upper percentile)."""
LISTED = 6
"""Files named in a warning before "and N more"."""


@dataclass(frozen=True)
class Levels:
    """A frame's background, noise and range above the background, in its own units."""

    path: str
    background: float
    noise: float
    range: float

    def words(self) -> str:
        return (f"{Path(self.path).name} (background {self.background:.4g}, noise {self.noise:.3g}, "
                f"range {self.range:.4g})")


def frame_levels(image: FitsImage) -> Levels:
    """Background and noise (sigma-clipped median and std, 3 sigma) and range (99.8th percentile - background)."""
    valid = image.data[~image.mask]
    valid = valid[:: max(1, valid.size // STATS_PIXELS)].astype(np.float64)
    _, median, std = sigma_clipped_stats(valid, sigma=3.0, maxiters=10)
    top = float(np.percentile(valid, UPPER_PERCENTILE))
    return Levels(image.path, float(median), float(std), top - float(median))


def pixel_scale_arcsec(image: FitsImage) -> float | None:
    """Mean pixel scale of the celestial WCS in arcsec, None without one."""
    if image.wcs is None or not image.wcs.has_celestial:
        return None
    scales = proj_plane_pixel_scales(image.wcs.celestial)
    value = float(np.mean(np.abs(scales))) * 3600.0
    return value if np.isfinite(value) and value > 0 else None


def _named(paths: Sequence[str]) -> str:
    names = [Path(p).name for p in paths]
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def pixel_scale_warnings(images: Sequence[FitsImage]) -> list[str]:
    """A warning when the frames' pixel scales differ by more than the tolerance, or only some have a WCS."""
    scales = {image.path: pixel_scale_arcsec(image) for image in images}
    known = {path: s for path, s in scales.items() if s is not None}
    out = []
    if known and len(known) < len(scales):
        bare = _named([p for p, s in scales.items() if s is None])
        out.append(f"pixel scales cannot be compared: no celestial WCS in {bare}, one in {_named(list(known))}; "
                   f"check that the inputs come from one instrument, or run them separately")
    if len(known) > 1 and max(known.values()) > (1 + PIXEL_SCALE_TOLERANCE) * min(known.values()):
        listed = ", ".join(f"{Path(p).name} {s:.3g}\"" for p, s in list(known.items())[:LISTED])
        out.append(f"pixel scales differ by more than {PIXEL_SCALE_TOLERANCE:.0%}: {listed} per pixel; the model "
                   f"sees each at its own scale: resample them to one grid (e.g. reproject) or run them separately")
    return out


def _spread(values: Sequence[float]) -> float:
    low, high = min(values), max(values)
    return float("inf") if low <= 0 < high else high / low if low > 0 else 1.0


def level_warnings(levels: Sequence[Levels]) -> list[str]:
    """A warning when the frames' levels differ by an order of magnitude (one per-run normalization cannot show
    them all), naming every frame's levels and the fix."""
    if len(levels) < 2:
        return []
    # A frame whose clipped noise is 0 (sparse photon counts: most pixels hold none) has no measurable noise level;
    # only measured ones are compared.
    noise = [lv.noise for lv in levels if lv.noise > 0]
    backgrounds = [lv.background for lv in levels]
    differ = []
    if len(noise) >= 2 and _spread(noise) > LEVEL_RATIO:
        differ.append(f"noise by {_spread(noise):.3g}x")
    offset = max(backgrounds) - min(backgrounds)
    if noise and offset > LEVEL_RATIO * max(noise):
        differ.append(f"backgrounds by {offset / max(noise):.3g} times the larger noise")
    if not differ:
        return []
    shown = "; ".join(lv.words() for lv in levels[:LISTED])
    more = f"; and {len(levels) - LISTED} more" if len(levels) > LISTED else ""
    return [f"input levels differ ({', '.join(differ)}): {shown}{more}. One per-run normalization fitted to all of "
            f"them shows the fainter as black: use --normalization per_image, or run each instrument separately"]


def mixed_input_warnings(images: Sequence[FitsImage], normalization: str) -> list[str]:
    """Pixel-scale and (under per-run normalization) level warnings about the input frames; each is logged."""
    out = pixel_scale_warnings(images)
    if normalization == "per_run":
        out += level_warnings([frame_levels(image) for image in images])
    for line in out:
        log.warning("%s", line)
    return out
