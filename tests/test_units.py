"""What a BUNIT says about resampling (ood_core.io.units): one row per unit string, the real dev set's own BUNIT
values first (and, with the set, a check that every file's BUNIT is in the table with that kind)."""

from __future__ import annotations

from pathlib import Path

import pytest
from astropy.io import fits

from ood_core.io.units import classify_bunit, parse_bunit, respell

PER_PIXEL, SURFACE, UNKNOWN = "per_pixel", "surface_brightness", "unknown"

DEV_SET_UNITS: dict[str | None, str] = {
    "MJy/sr": SURFACE,  # Spitzer GLIMPSE (images/starfield_GLIMPSE_l18.fits, cutouts_128/glimpse_*)
    "Jy/Beam": SURFACE,  # Bolocam 1.1 mm (images/cloud_GC_Bolocam_1p1mm.fits, cutouts_128/bolocam_*)
    "W/m^2-sr": SURFACE,  # MSX 21 um (images/cloud_GC_MSX_E_21um.fits)
    "nanomaggy": PER_PIXEL,  # SDSS g/r/i of HCG 88 (images/galaxy_HCG88_SDSS_*.fits, cutouts_128/hcg88r_*)
    "10**(-6)counts/s": PER_PIXEL,  # ROSAT 3/4 keV all-sky (images/diffuse_allsky_ROSAT_3_4keV.fits)
    None: UNKNOWN,  # no BUNIT: 2MASS J/H/K and M17 Ks, DSS Horsehead, M13, M67, L1448 13CO (cube and moment 0)
}
"""Every BUNIT of the dev set (docs/DESIGN.md section 9), as measured 2026-12-05 over its 82 files."""

TABLE: list[tuple[str | None, str]] = [
    *DEV_SET_UNITS.items(),
    # counts and other per-pixel quantities, FITS and common non-standard spellings
    ("count", PER_PIXEL), ("counts", PER_PIXEL), ("ct", PER_PIXEL), ("cts", PER_PIXEL), ("adu", PER_PIXEL),
    ("ADU", PER_PIXEL), ("DN", PER_PIXEL), ("dn", PER_PIXEL), ("electron", PER_PIXEL), ("electrons", PER_PIXEL),
    ("e-", PER_PIXEL), ("e-/s", PER_PIXEL), ("photon", PER_PIXEL), ("nanomaggy", PER_PIXEL),
    ("nanomaggies", PER_PIXEL), ("nmgy", PER_PIXEL), ("Jy/pixel", PER_PIXEL), ("Jy/pix", PER_PIXEL),
    ("ct/pix", PER_PIXEL), ("counts/s", PER_PIXEL), ("ct/s", PER_PIXEL), ("adu/s", PER_PIXEL), ("DN/s", PER_PIXEL),
    ("Jy", PER_PIXEL), ("erg/s/cm2/Hz", PER_PIXEL),
    # surface brightness: per solid angle, per beam, brightness temperature
    ("MJy/sr", SURFACE), ("MJY/SR", SURFACE), ("MJy / sr", SURFACE), ("W/m2/sr", SURFACE), ("W.m-2.sr-1", SURFACE),
    ("Jy/beam", SURFACE), ("JY/BEAM", SURFACE), ("mJy/beam", SURFACE), ("Jy/arcsec2", SURFACE),
    ("mag/arcsec2", SURFACE), ("mag/arcsec**2", SURFACE), ("erg/s/cm^2/arcsec^2", SURFACE),
    ("count/s/arcmin2", SURFACE), ("cts/s/arcmin^2", SURFACE), ("K", SURFACE), ("K km/s", SURFACE),
    # neither: averaged as surface brightness, the declared default
    ("", UNKNOWN), ("   ", UNKNOWN), ("mag", UNKNOWN), ("km/s", UNKNOWN), ("deg", UNKNOWN), ("1", UNKNOWN),
    ("not a unit", UNKNOWN),
]


@pytest.mark.parametrize(("bunit", "kind"), TABLE, ids=[repr(b) for b, _ in TABLE])
def test_each_unit_string_has_its_kind(bunit: str | None, kind: str) -> None:
    found = classify_bunit(bunit)
    assert found.kind == kind, (bunit, found)
    assert found.unit == (bunit or "").strip() and found.why


@pytest.mark.parametrize(("text", "astropy_reads"), [
    ("counts", "ct"), ("ADU", "adu"), ("e-", "electron"), ("nanomaggies", "nmgy"), ("JY/BEAM", "Jy / beam"),
    ("W/m^2-sr", "W / (sr m2)"), ("10**(-6)counts/s", "1e-06 ct / s"), ("MJY/SR", "MJy / sr"),
])
def test_non_standard_spellings_are_read_as_astropy_units(text: str, astropy_reads: str) -> None:
    unit = parse_bunit(text)
    assert unit is not None and unit.to_string() == astropy_reads
    assert respell("mJy/beam") == "mJy/beam"  # a millijansky stays one: only all-capital MJY is respelled
    assert parse_bunit("") is None and parse_bunit("not a unit") is None


def test_every_bunit_of_the_dev_set_is_in_the_table(fits_dir: Path) -> None:
    seen: dict[str | None, list[str]] = {}
    for path in sorted(fits_dir.rglob("*.fits")):
        header = fits.getheader(path)
        seen.setdefault(header.get("BUNIT"), []).append(path.name)
    assert set(seen) == set(DEV_SET_UNITS), seen.keys()
    for bunit, names in seen.items():
        assert classify_bunit(bunit).kind == DEV_SET_UNITS[bunit], (bunit, names[:3])
