"""What a FITS unit (BUNIT) says about resampling: is the value per pixel or per unit area?

A **per-pixel** quantity (``count``, ``adu``, ``DN``, ``electron``, ``nanomaggy``, ``Jy/pixel``, ``ct/s``, a plain
flux such as ``Jy``) holds what fell into one pixel: a block of pixels holds their *sum*. A **surface brightness**
(anything per solid angle: ``MJy/sr``, ``W/m^2-sr``, ``mag/arcsec2``; per beam: ``Jy/beam``; a brightness
temperature: ``K``, ``K km/s``) is the same for a block as the *mean* of its pixels. Anything else (an empty or
missing BUNIT, a velocity, ``mag``, a dimensionless ratio, a string astropy cannot read) is **unknown**.

:func:`classify_bunit` parses with ``astropy.units`` (the FITS format, then the generic and CDS ones) after
respelling common non-standard forms (:data:`SPELLINGS`: ``counts``, ``ADU``, ``e-``, ``nanomaggies``,
``JY/BEAM``, a ``-`` between factors as in ``W/m^2-sr``, ...), then decides by the unit's factors, first rule
that applies:

1. a solid angle (``sr``, an angle squared such as ``arcsec2``) or a ``beam`` in the denominator: surface
   brightness;
2. a ``pix`` in the denominator: per pixel;
3. a temperature factor (``K``): surface brightness (brightness temperature);
4. a count-like factor (``ct``, ``ph``, ``adu``, ``DN``, ``electron``, ``mgy``; a rate ``/s`` too): per pixel;
5. a flux or flux density (``Jy``, ``W/m2``, ``erg/s/cm2/Hz``) with no area factor: per pixel;
6. otherwise unknown.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Literal

from astropy import units as u

UnitKind = Literal["per_pixel", "surface_brightness", "unknown"]

SPELLINGS: dict[str, str] = {
    "count": "ct", "counts": "ct", "cnt": "ct", "cnts": "ct", "ct": "ct", "cts": "ct",
    "photon": "ph", "photons": "ph",
    "adu": "adu", "adus": "adu",
    "dn": "DN",
    "electron": "electron", "electrons": "electron",
    "nanomaggy": "nmgy", "nanomaggies": "nmgy", "nmgy": "nmgy", "maggy": "mgy", "maggies": "mgy",
    "pixel": "pix", "pixels": "pix", "pix": "pix",
    "beam": "beam", "beams": "beam",
    "jy": "Jy",
    "sr": "sr", "arcsec": "arcsec", "arcmin": "arcmin",
}
"""Words (case-insensitive) respelled before parsing."""
CAPITALS: dict[str, str] = {"MJY": "MJy", "KJY": "kJy", "GJY": "GJy", "KM": "km"}
"""Words of all-capital headers whose prefix the lower-case map cannot tell (``MJY/SR`` is a megajansky)."""

_WORD = re.compile(r"[A-Za-z]+")
_ELECTRON = re.compile(r"(?<![A-Za-z0-9])e-(?![0-9A-Za-z])")
"""``e-`` (electrons) as a word of its own, not an exponent's sign (``10**(-6)``, ``m-2``)."""
_PRODUCT_DASH = re.compile(r"(?<=[A-Za-z0-9])-(?=[A-Za-z])")
"""A ``-`` between two factors (``m^2-sr``): a product."""
_COUNT_LIKE = (u.ct, u.ph, u.adu, u.DN, u.electron, u.mgy)
_FLUXES = (u.Jy, u.W / u.m**2, u.W / u.m**3, u.ph / (u.s * u.m**2))
"""Flux density per frequency, flux, flux density per wavelength, photon flux: per pixel when not per area."""


@dataclass(frozen=True)
class UnitClass:
    """A BUNIT's kind for resampling, astropy's reading of it and why."""

    kind: UnitKind
    unit: str
    """The BUNIT as given (stripped)."""
    parsed: str | None
    """astropy's reading (``None`` when empty or unreadable)."""
    why: str
    """The rule that decided, in words ("per solid angle", "a count per pixel", ...)."""


def respell(text: str) -> str:
    """``text`` with the common non-standard unit spellings of :data:`SPELLINGS` in astropy's."""
    text = _ELECTRON.sub("electron", text.strip())
    text = _PRODUCT_DASH.sub(" ", text)
    return _WORD.sub(lambda m: CAPITALS.get(m.group(0)) or SPELLINGS.get(m.group(0).lower(), m.group(0)), text)


def parse_bunit(text: str) -> u.UnitBase | None:
    """The unit astropy reads in ``text`` (FITS format, else generic, else CDS, each after :func:`respell`),
    or None when empty or unreadable."""
    if not text.strip():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's advice on FITS style ("multiple slashes", ...)
        for candidate in dict.fromkeys((text.strip(), respell(text))):
            for fmt in ("fits", "generic", "cds"):
                try:
                    unit = u.Unit(candidate, format=fmt, parse_strict="raise")
                except (ValueError, TypeError):
                    continue
                if isinstance(unit, u.UnitBase) and not isinstance(unit, u.UnrecognizedUnit):
                    return unit
    return None


def _factors(unit: u.UnitBase) -> list[tuple[u.UnitBase, float]]:
    bases = getattr(unit, "bases", None) or [unit]
    powers = getattr(unit, "powers", None) or [1]
    return [(base, float(power)) for base, power in zip(bases, powers, strict=True)]


def _is(base: u.UnitBase, other: u.UnitBase) -> bool:
    try:
        return bool(base.is_equivalent(other))
    except (u.UnitsError, TypeError, ValueError):
        return False


def _kind(unit: u.UnitBase) -> tuple[UnitKind, str]:
    factors = _factors(unit)
    for base, power in factors:
        if power < 0 and (_is(base, u.sr) or (_is(base, u.rad) and power <= -2)):
            return "surface_brightness", "per solid angle"
        if power < 0 and _is(base, u.beam):
            return "surface_brightness", "per beam"
    if any(power < 0 and _is(base, u.pix) for base, power in factors):
        return "per_pixel", "per pixel"
    if any(power > 0 and _is(base, u.K) for base, power in factors):
        return "surface_brightness", "a brightness temperature"
    if any(power > 0 and any(_is(base, c) for c in _COUNT_LIKE) for base, power in factors):
        return "per_pixel", "a count or count rate in each pixel"
    if any(_is(unit, flux) for flux in _FLUXES):
        return "per_pixel", "a flux with no per-area factor: the flux in each pixel"
    return "unknown", "neither per pixel nor per unit area"


def classify_bunit(bunit: str | None) -> UnitClass:
    """The resampling kind of a BUNIT value (None or empty: unknown); see the module's rules."""
    text = "" if bunit is None else str(bunit).strip()
    if not text:
        return UnitClass("unknown", "", None, "BUNIT missing")
    unit = parse_bunit(text)
    if unit is None:
        return UnitClass("unknown", text, None, "astropy cannot read it")
    kind, why = _kind(unit)
    return UnitClass(kind, text, unit.to_string(), why)
