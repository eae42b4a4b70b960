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
