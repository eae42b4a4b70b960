"""Is a set of inputs a photon-counts domain? (issue 27, item 2)

Gamma-ray and X-ray images hold photons: most pixels 0 or 1, every value a whole number. There a Gaussian is the
wrong noise and the wrong statistics, so the run and its calibration treat such inputs as **counts**. The rule,
first that applies, on the resized model-resolution planes (block sums of counts stay counts):

1. every input's BUNIT is a photon count (``count``, ``ct``, ``photon``, ``ph``, optionally per pixel: not a rate
   such as ``ct/s``, not a detector unit such as ``adu``, ``DN`` or ``electron``) and the values are non-negative
   whole numbers: counts;
2. some BUNIT names another unit: not counts (a raw CCD frame in ADU holds whole numbers that are not photons);
3. no BUNIT at all: counts when the values are non-negative whole numbers *and* at least
   :data:`SPARSE_ZERO_FRACTION` of the pixels hold none, the regime where a Gaussian fails; an integer frame with
   a bias level (no zeros) is not taken for photons.

A count BUNIT over values that are not whole numbers (a smoothed, background-subtracted or exposure-corrected
counts image) is continuous, not counts, and the reason says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy import units as u

from ood_core.errors import ConfigurationError
from ood_core.io.units import parse_bunit

SPARSE_ZERO_FRACTION = 0.10
"""Without a BUNIT, integer inputs are counts only when at least this fraction of their pixels is zero."""
_PHOTON_COUNTS = (u.ct, u.ph, u.ct / u.pix, u.ph / u.pix)


@dataclass(frozen=True)
class CountsDomain:
    """The decision and why, as provenance records it."""

    counts: bool
    reason: str

    def record(self) -> dict[str, Any]:
        return {"counts": self.counts, "reason": self.reason}


NOT_CHECKED = CountsDomain(False, "not checked (band groups)")
"""The decision of batches the rule does not look at."""


def is_counts_data(images: npt.ArrayLike) -> bool:
    """True when every finite value is a non-negative whole number and at least one photon is there."""
    values = np.asarray(images, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return bool(finite.size and (finite >= 0).all() and (finite == np.round(finite)).all() and finite.sum() > 0)


def is_photon_count_unit(bunit: str) -> bool:
    """True for a BUNIT that astropy reads as photon counts (or counts per pixel), scale 1."""
    unit = parse_bunit(bunit)
    return unit is not None and any(unit == counts for counts in _PHOTON_COUNTS)


def counts_domain(planes: Sequence[npt.ArrayLike], bunits: Sequence[str]) -> CountsDomain:
    """Whether the resized input ``planes`` (their BUNITs beside them) are photon counts; see the module's rules."""
    given = sorted({b.strip() for b in bunits if b.strip()})
    whole = all(is_counts_data(plane) for plane in planes)
    if given and all(is_photon_count_unit(b) for b in given):
        if not whole:  # smoothed, background-subtracted or exposure-corrected counts: continuous values
            return CountsDomain(False, f"BUNIT {', '.join(map(repr, given))} but values not all non-negative whole "
                                       "numbers (smoothed or corrected counts): treated as continuous")
        return CountsDomain(True, f"BUNIT {', '.join(map(repr, given))}: photon counts, every value a whole number")
    if given:
        return CountsDomain(False, f"BUNIT {', '.join(map(repr, given))} is not a photon count")
    if not whole:
        return CountsDomain(False, "no BUNIT, values not all non-negative whole numbers")
    zeros = float(np.mean([np.mean(np.asarray(p, dtype=np.float64) == 0) for p in planes]))
    if zeros < SPARSE_ZERO_FRACTION:
        return CountsDomain(False, f"no BUNIT; whole numbers but {zeros:.0%} zero pixels (under "
                                   f"{SPARSE_ZERO_FRACTION:.0%}: an integer frame, not sparse photons)")
    return CountsDomain(True, f"no BUNIT; non-negative whole numbers with {zeros:.0%} zero pixels")


def poisson_draws(expected: npt.ArrayLike, seeds: Sequence[int]) -> npt.NDArray[np.float64]:
    """One Poisson draw per (H, W) expectation map of ``expected`` (N, H, W), map k from ``seeds[k]`` alone (so any
    split of the maps into shards draws the same counts); negative or non-finite expectations count as none."""
    stack = np.asarray(expected, dtype=np.float64)
    if len(seeds) != len(stack):
        raise ConfigurationError(f"poisson_draws: {len(stack)} maps but {len(seeds)} seeds")
    rates = np.clip(np.nan_to_num(stack, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    drawn = [np.random.default_rng(int(seed)).poisson(rate).astype(np.float64) for rate, seed in zip(rates, seeds,
                                                                                                    strict=True)]
    return np.stack(drawn) if drawn else np.empty_like(rates)
