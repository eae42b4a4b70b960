"""FITS files the project makes itself, for tests that must run without the real dev set (tests/devdata.py).

Demo skies (ood_core.base_model.demo_skies: Sersic galaxies and stars through a Moffat PSF with CCD noise, a TAN
WCS) written as ordinary FITS files and read back through the path user files take. They stand in for the dev
set's cutouts where a test checks plumbing (storage, export, provenance, reading); the science claims keep their
real-data tests, marked ``devdata``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ood_core.base_model.demo_skies import SkyConfig, make_sky


def write_skies(folder: Path, n: int, *, size: int = 128, seed: int = 0, prefix: str = "sky",
                unit: str | None = None, holes: bool = False) -> list[Path]:
    """``n`` demo skies of ``size`` px as ``folder/<prefix>_<i>.fits`` (no NaN unless ``holes``), sorted by name.

    ``unit`` overrides BUNIT ("adu"), e.g. a mixed-case unit string that must survive a round trip."""
    folder.mkdir(parents=True, exist_ok=True)
    config = SkyConfig(size=size, nan_hole_probability=1.0 if holes else 0.0)
    paths = []
    for i in range(n):
        image_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        data, header = make_sky(config, image_seed)
        if unit is not None:
            header["BUNIT"] = unit
        path = folder / f"{prefix}_{i:03d}.fits"
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        paths.append(path)
    return paths


def write_band_set(folder: Path, bands: str = "gri", *, shape: tuple[int, int] = (384, 640), seed: int = 20,
                   prefix: str = "sky", filter_header: str | None = "g") -> list[Path]:
    """One demo sky per band on one shared TAN grid, ``folder/<prefix>_<band>.fits``, in the order of ``bands``.

    ``filter_header``: the FILTER every header carries (default "g" for all, as the dev set's HCG 88 r and i files
    wrongly say, so names must come from the file names); None: each header names its own band."""
    folder.mkdir(parents=True, exist_ok=True)
    size = max(shape)
    grid = WCS(make_sky(SkyConfig(size=size), seed=seed)[1])[: shape[0], : shape[1]].to_header()
    paths = []
    for k, band in enumerate(bands):
        config = SkyConfig(size=size, band=filter_header or band, nan_hole_probability=0.0)
        data, header = make_sky(config, seed=seed + k)
        header.update(grid)  # each seed has its own pointing: the bands share the first one's
        path = folder / f"{prefix}_{band}.fits"
        fits.writeto(path, data[: shape[0], : shape[1]], header, overwrite=True)
        paths.append(path)
    return paths
