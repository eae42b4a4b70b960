"""Sets of FITS files the project makes itself, beyond tests/made_fits.py's plain demo skies.

For tests that must run without the real dev set (tests/devdata.py) but need more than the default demo sky:
skies of any ``SkyConfig`` (e.g. ``CROWDED``, a field as dense in point sources as the dev set's GLIMPSE
cutouts), and skies whose pixel noise is known exactly (its standard deviation and its correlation length), so
that the noise estimator can be checked against the truth rather than against another estimate.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.ndimage import gaussian_filter

from ood_core.base_model.demo_skies import SkyConfig, make_sky

PLAIN = SkyConfig(nan_hole_probability=0.0)
"""The demo's sky without NaN defects (tests/made_fits.py's default)."""
CROWDED = replace(PLAIN, n_stars=(40, 100))
"""A crowded field: 40 to 100 stars per 128 px image (the demo draws 5 to 30)."""
SURVEY64 = replace(PLAIN, size=64, pixel_scale_arcsec=1.2, n_stars=(20, 40), star_flux_adu=(1000.0, 1e5))
"""A 64 px field (the model resolution: read without resampling) sampled as coarsely as the dev set's GLIMPSE
cutouts are at 64 px: a PSF of one pixel, 20 to 40 compact stars. With ``noise`` of 1 to 10 ADU the pixel noise is
a small fraction of the normalization interval (as on GLIMPSE: the DDIM samples come out smooth) and it dominates
the sky's pixel-to-pixel gradients (where the noise estimator can read it; the demo's well-sampled bright stars
are not such a background)."""


def write_sky_set(folder: Path, n: int, *, config: SkyConfig = PLAIN, seed: int = 0, prefix: str = "sky",
                  unit: str | None = None, noise: float | None = None, correlation: float = 0.0) -> list[str]:
    """``n`` skies made with ``config`` as ``folder/<prefix>_<i>.fits`` (paths as strings, sorted by name).

    Image i uses the seed derived from (seed, i), as tests/made_fits.py does. ``unit`` overrides BUNIT ("adu").
    ``noise``: instead of the CCD's Poisson and read noise, Gaussian noise of exactly this standard deviation
    (ADU) per image, white or, with ``correlation`` > 0, smoothed by a Gaussian of that many pixels first
    (periodic, so every pixel is alike), on the noiseless sky."""
    folder.mkdir(parents=True, exist_ok=True)
    if noise is not None:  # gain 1e6 e-/ADU and no read noise: Poisson noise of about 0.014 ADU on the sky
        config = replace(config, gain_e_per_adu=1e6, read_noise_e=0.0)
    paths = []
    for i in range(n):
        image_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        data, header = make_sky(config, image_seed)
        if noise is not None:
            field = np.random.default_rng([seed, i, 1]).standard_normal(data.shape)
            if correlation > 0:
                field = gaussian_filter(field, correlation, mode="wrap")
            data = (data + noise * (field - field.mean()) / field.std()).astype(np.float32)
            header["HISTORY"] = f"Gaussian noise of std {noise:g} ADU, correlated over {correlation:g} px"
        if unit is not None:
            header["BUNIT"] = unit
        path = folder / f"{prefix}_{i:03d}.fits"
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        paths.append(str(path))
    return paths
