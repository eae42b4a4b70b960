"""A FITS unit string (BUNIT) in the syntax of UDUNITS-2, the unit library that CF requires.

FITS units and UDUNITS overlap but differ: UDUNITS has no jansky (``Jy``), spells the degree ``degree`` and the
count ``count``, and knows nothing of ``adu``, ``beam`` or magnitudes. :func:`udunits` parses a unit with astropy
and writes each factor with a symbol UDUNITS knows (:data:`UDUNITS_SYMBOLS`, each checked by
``tests/test_interop.py`` against UDUNITS itself), a jansky as 1e-26 W m-2 Hz-1, so ``MJy/sr`` becomes
``1e-20 W m-2 Hz-1 sr-1`` (the values are unchanged). A unit with a factor UDUNITS lacks gives None.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

from astropy import units as u

UDUNITS_SYMBOLS = frozenset({
    "m", "g", "s", "K", "A", "mol", "cd", "rad", "sr", "Hz", "N", "Pa", "J", "W", "C", "V", "T", "Wb", "H", "F",
    "S", "lm", "lx", "Bq", "Gy", "Sv", "min", "h", "d", "erg", "eV", "arcsec", "arcmin",
})
"""Unit symbols that astropy and UDUNITS-2 share, with the same meaning (prefixes allowed)."""
SI_PREFIXES = frozenset({"Y", "Z", "E", "P", "T", "G", "M", "k", "h", "da", "d", "c", "m", "u", "n", "p", "f", "a",
                         "z", "y"})
"""Prefix symbols both libraries read the same (astropy writes micro as ``u``, which UDUNITS accepts)."""
REPLACEMENTS: dict[str, tuple[float, tuple[tuple[str, int], ...]]] = {
    "Jy": (1e-26, (("W", 1), ("m", -2), ("Hz", -1))),
    "deg": (1.0, (("degree", 1),)),
    "ct": (1.0, (("count", 1),)),
    "Angstrom": (1.0, (("angstrom", 1),)),
    "AA": (1.0, (("angstrom", 1),)),
    "yr": (1.0, (("year", 1),)),
}
"""Astropy units UDUNITS spells otherwise: scale and UDUNITS factors (symbol, power)."""

Factors = tuple[float, list[tuple[str, int]]]


def _prefixed(base: u.UnitBase, name: str) -> Factors | None:
    """A prefixed unit (``km``, ``MJy``): kept as written when UDUNITS knows the unit, else scaled out."""
    for prefix in SI_PREFIXES:
        rest = name[len(prefix):]
        if not (name.startswith(prefix) and (rest in UDUNITS_SYMBOLS or rest in REPLACEMENTS)):
            continue
        try:
            ratio = float(base.to(u.Unit(rest)))  # astropy's reading of the split: MJy -> 1e6 Jy
        except (u.UnitsError, ValueError):
            continue
        if rest in UDUNITS_SYMBOLS:
            return 1.0, [(name, 1)]
        scale, factors = REPLACEMENTS[rest]
        return ratio * scale, list(factors)
    return None


def _factor(base: u.UnitBase) -> Factors | None:
    """One named astropy unit as (scale, UDUNITS factors), or None when UDUNITS has no equivalent."""
    name = base.to_string()
    if name in UDUNITS_SYMBOLS:
        return 1.0, [(name, 1)]
    if name in REPLACEMENTS:
        scale, factors = REPLACEMENTS[name]
        return scale, list(factors)
    return _prefixed(base, name)


def _combine(parts: Iterable[tuple[Factors, float]]) -> Factors | None:
    scale, powers = 1.0, {}  # type: float, dict[str, int]
    for (part_scale, factors), power in parts:
        if not float(power).is_integer():
            return None
        scale *= part_scale ** power
        for symbol, exponent in factors:
            powers[symbol] = powers.get(symbol, 0) + exponent * int(power)
    return scale, [(symbol, p) for symbol, p in powers.items() if p]


def _text(scale: float, factors: list[tuple[str, int]]) -> str:
    words = [symbol if power == 1 else f"{symbol}{power}" for symbol, power in factors]
    if not math.isclose(scale, 1.0, rel_tol=1e-12):
        words.insert(0, f"{scale:.12g}")
    return " ".join(words) or "1"


def udunits(fits_unit: str) -> str | None:
    """``fits_unit`` written for UDUNITS-2 (``"1"`` when dimensionless); None when it is empty, unparseable, or
    has a factor UDUNITS lacks (e.g. ``adu``, ``beam``, ``mag``)."""
    if not fits_unit.strip():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's advice on FITS style ("multiple slashes", ...)
        unit = u.Unit(fits_unit, parse_strict="silent")
    if isinstance(unit, u.UnrecognizedUnit):
        return None
    factors = [(_factor(base), power) for base, power in zip(unit.bases, unit.powers, strict=True)]
    if any(factor is None for factor, _ in factors):
        return None
    combined = _combine((factor, power) for factor, power in factors if factor is not None)
    if combined is None:
        return None
    return _text(unit.scale * combined[0], combined[1])
