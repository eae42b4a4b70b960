"""FITS units in UDUNITS-2 syntax (what CF asks of a netCDF file's units); UDUNITS itself accepts each symbol
written here: tests/test_interop.py checks them with cf-units."""

from __future__ import annotations

import pytest
from astropy import units as u

from ood_core.store.udunits import udunits


@pytest.mark.parametrize(("fits_unit", "expected"), [
    ("MJy/sr", "1e-20 W m-2 Hz-1 sr-1"),  # UDUNITS has no jansky
    ("mJy", "1e-29 W m-2 Hz-1"),
    ("K km/s", "K km s-1"),
    ("K.km/s", "K km s-1"),
    ("K", "K"),
    ("deg", "degree"),  # UDUNITS reads "deg" as nothing
    ("count", "count"),
    ("10**(-17) erg/s/cm2/Angstrom", "1e-17 erg angstrom-1 s-1 cm-2"),
    ("1", "1"),
    ("Jy/beam", None),  # no beam in UDUNITS
    ("adu", None),
    ("mag", None),
    ("counts", None),  # not a FITS unit either (FITS: count, ct)
    ("no such unit", None),
    ("", None),
])
def test_fits_units_in_udunits_syntax(fits_unit: str, expected: str | None) -> None:
    assert udunits(fits_unit) == expected


@pytest.mark.parametrize("fits_unit", ["MJy/sr", "mJy", "K km/s", "deg", "10**(-17) erg/s/cm2/Angstrom"])
def test_the_udunits_form_is_the_same_quantity(fits_unit: str) -> None:
    """Read back with astropy (its generic format takes UDUNITS' "m-2" powers): the same unit, values unchanged."""
    written = str(udunits(fits_unit)).replace("degree", "deg").replace("angstrom", "Angstrom")
    assert u.Unit(written).to(u.Unit(fits_unit)) == pytest.approx(1.0, rel=1e-12)
