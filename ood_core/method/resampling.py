"""The resampling rule: how a block of input pixels becomes one model pixel, decided by the inputs' units.

A per-pixel quantity (counts, ADU, nanomaggies, Jy/pixel, ...; :mod:`ood_core.io.units`) is **summed**: a block
holds the flux of its pixels, so a source keeps its total flux at the coarser pixel scale (the exported FITS
states BUNIT with that scale, OODPIXSC). A surface brightness (MJy/sr, Jy/beam, K, mag/arcsec2, ...) is
**averaged**. A missing or unrecognised BUNIT is treated as surface brightness (averaged), the rule of every
run before the units decided, so those runs give the same bits; the run records it and says how to change it.

Both rules are NaN-aware: a partially masked block's *mean* is the mean of its valid pixels; its *sum* is that
mean times the block area (``factor**2``), so masked pixels count as the valid pixels' average, not as zero,
and do not lower the sum. A block is masked only when every pixel in it is.

``resampling`` ("auto", "sum", "mean") is a run setting: "auto" decides by the units and refuses a run whose
inputs mix per-pixel and surface-brightness units; "sum" or "mean" forces one rule for every input.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from astropy.nddata import block_reduce

from ood_core.errors import ConfigurationError, MixedUnitsError
from ood_core.io.units import UnitClass, classify_bunit

ResamplingRule = Literal["mean", "sum"]
ResamplingSetting = Literal["auto", "sum", "mean"]
RULE_OF_KIND: dict[str, ResamplingRule] = {"per_pixel": "sum", "surface_brightness": "mean", "unknown": "mean"}
"""The rule of each unit kind under "auto"; unknown units are treated as surface brightness (averaged)."""


@dataclass(frozen=True)
class Resampling:
    """The rule chosen for a set of inputs (one band), the setting that chose it and why, in words."""

    rule: ResamplingRule
    reason: str
    setting: ResamplingSetting = "auto"

    def record(self, factor: int | None = None) -> dict[str, Any]:
        """JSON-safe provenance: rule, block factor per axis (when given), reason, setting."""
        out: dict[str, Any] = {"rule": self.rule}
        if factor is not None:
            out["factor"] = int(factor)
        return {**out, "reason": self.reason, "setting": self.setting}


DEFAULT_RESAMPLING = Resampling("mean", "not recorded: surface brightness (averaged)", "auto")
"""What a batch made without a rule uses (today's behaviour)."""


def _quoted(classes: Sequence[UnitClass]) -> str:
    return ", ".join(f"'{unit}'" if unit else "missing" for unit in sorted({c.unit for c in classes}))


def _listing(named: Sequence[tuple[str, UnitClass]], limit: int = 6) -> str:
    shown = [f"{path} ({c.unit or 'no BUNIT'!s})" for path, c in named[:limit]]
    more = f" and {len(named) - limit} more" if len(named) > limit else ""
    return ", ".join(shown) + more


def _auto_reason(kind: str, classes: Sequence[UnitClass]) -> str:
    units = _quoted(classes)
    if kind == "per_pixel":
        return f"BUNIT {units} is per pixel ({classes[0].why}): blocks summed"
    if kind == "surface_brightness":
        return f"BUNIT {units} is surface brightness ({classes[0].why}): blocks averaged"
    if all(not c.unit for c in classes):
        return "BUNIT missing: treated as surface brightness, blocks averaged (set --resampling sum for counts)"
    return (f"BUNIT {units} is neither per pixel nor per unit area to astropy: treated as surface brightness, "
            f"blocks averaged (set --resampling sum for counts)")


def choose_resampling(
    units: Sequence[tuple[str, str]], setting: ResamplingSetting = "auto", *, what: str = "inputs"
) -> Resampling:
    """The rule for inputs given as (path, BUNIT) pairs: forced by ``setting`` "sum"/"mean", else by the units.

    Under "auto", inputs that mix per-pixel units with surface-brightness (or unknown, hence averaged) units are
    refused with a :class:`MixedUnitsError` (a ConfigurationError) naming the files and their units.
    """
    if setting not in get_args(ResamplingSetting):
        raise ConfigurationError(f"unknown resampling {setting!r}; choose auto, sum or mean")
    named = [(path, classify_bunit(bunit)) for path, bunit in units]
    if not named:
        raise ConfigurationError("choose_resampling needs at least one input")
    if setting != "auto":
        units_text = _quoted([c for _, c in named]) if any(c.unit for _, c in named) else "missing"
        return Resampling(setting, f"set by resampling={setting} (BUNIT {units_text})", setting)
    by_rule: dict[ResamplingRule, list[tuple[str, UnitClass]]] = {}
    for path, unit_class in named:
        by_rule.setdefault(RULE_OF_KIND[unit_class.kind], []).append((path, unit_class))
    if len(by_rule) > 1:
        raise MixedUnitsError(
            f"the {what} mix per-pixel units, whose blocks are summed: {_listing(by_rule['sum'])}, with surface "
            f"brightness or unknown units, whose blocks are averaged: {_listing(by_rule['mean'])}. Run them "
            f"separately, fix their BUNIT, or force one rule for all with --resampling sum or --resampling mean")
    classes = [c for _, c in named]
    if "sum" in by_rule:
        return Resampling("sum", _auto_reason("per_pixel", classes))
    known = [c for c in classes if c.kind == "surface_brightness"]
    if not known:
        return Resampling("mean", _auto_reason("unknown", classes))
    unknown = [c for c in classes if c.kind == "unknown"]
    also = f"; inputs with no known unit (BUNIT {_quoted(unknown)}) are averaged too" if unknown else ""
    return Resampling("mean", _auto_reason("surface_brightness", known) + also)


def block_resample(
    values: npt.NDArray[np.float64], factor: int, rule: ResamplingRule
) -> npt.NDArray[np.float64]:
    """``values`` (NaN where invalid, sides multiples of ``factor``) reduced by ``factor`` per axis: the NaN-aware
    block mean, or for "sum" that mean times ``factor**2`` (masked pixels count as the valid ones' mean). A block
    with no valid pixel is NaN."""
    if rule not in get_args(ResamplingRule):
        raise ConfigurationError(f"unknown resampling rule {rule!r}; choose sum or mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" for fully masked blocks
        mean = np.asarray(block_reduce(values, factor, func=np.nanmean), dtype=np.float64)
    return mean if rule == "mean" else mean * float(factor * factor)
