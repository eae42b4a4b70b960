"""Synthetic sky images for the demo: Sersic galaxies and stars seen through a Moffat PSF, with noise.

The skies are made by the project itself so the demo needs nothing downloaded; they are written as ordinary
FITS files (float32 ADU, a celestial TAN WCS) and then read through exactly the path user files take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from astropy.convolution import Moffat2DKernel, convolve_fft
from astropy.io import fits
from astropy.modeling.models import Sersic2D
from astropy.time import Time
from astropy.wcs import WCS

from ood_core.errors import ConfigurationError

_GALAXY_OVERSAMPLING = 3
"""Sersic profiles are evaluated on a 3x finer grid and averaged: cuspy n=4 centres keep their flux."""


@dataclass(frozen=True)
class SkyConfig:
    """How a synthetic sky looks. Fluxes and levels in ADU, angles in arcsec, noise as a CCD makes it."""

    size: int = 128
    pixel_scale_arcsec: float = 0.4
    n_galaxies: tuple[int, int] = (1, 4)
    """Inclusive range of the number of galaxies per image."""
    n_stars: tuple[int, int] = (5, 30)
    galaxy_amplitude_adu: tuple[float, float] = (5.0, 60.0)
    """Surface brightness at the effective radius, drawn log-uniform."""
    galaxy_r_eff_arcsec: tuple[float, float] = (1.5, 6.0)
    sersic_index: tuple[float, float] = (0.5, 4.0)
    max_ellipticity: float = 0.7
    star_flux_adu: tuple[float, float] = (300.0, 100_000.0)
    """Total flux range; fluxes follow Euclidean counts, N(>F) proportional to F^-1.5."""
    psf_fwhm_arcsec: float = 1.2
    psf_moffat_beta: float = 3.5
    sky_level_adu: float = 200.0
    gain_e_per_adu: float = 2.0
    read_noise_e: float = 5.0
    saturation_adu: float = 60_000.0
    nan_hole_probability: float = 0.3
    """Chance that an image gets a masked (NaN) satellite trail, bad columns or circular holes."""
    band: str = "r"

    def __post_init__(self) -> None:
        ranges = {
            "n_galaxies": self.n_galaxies,
            "n_stars": self.n_stars,
            "galaxy_amplitude_adu": self.galaxy_amplitude_adu,
            "galaxy_r_eff_arcsec": self.galaxy_r_eff_arcsec,
            "sersic_index": self.sersic_index,
            "star_flux_adu": self.star_flux_adu,
        }
        for name, (low, high) in ranges.items():
            if not 0 <= low <= high:
                raise ConfigurationError(f"SkyConfig.{name}={(low, high)}: need 0 <= low <= high")
        if self.size < 16:
            raise ConfigurationError(f"SkyConfig.size={self.size}: use at least 16 pixels")
        if min(self.pixel_scale_arcsec, self.psf_fwhm_arcsec, self.gain_e_per_adu, self.sky_level_adu) <= 0:
            raise ConfigurationError("SkyConfig: pixel scale, PSF FWHM, gain and sky level must be positive")
        if not 0 <= self.nan_hole_probability <= 1 or not 0 <= self.max_ellipticity < 1:
            raise ConfigurationError("SkyConfig: need nan_hole_probability in [0, 1], ellipticity in [0, 1)")
        if self.read_noise_e < 0 or self.psf_moffat_beta <= 1:
            raise ConfigurationError("SkyConfig: read_noise_e >= 0 and psf_moffat_beta > 1 are required")

    @property
    def psf_fwhm_px(self) -> float:
        return self.psf_fwhm_arcsec / self.pixel_scale_arcsec


def psf_kernel(config: SkyConfig) -> Moffat2DKernel:
    """Moffat PSF with the configured FWHM, wide enough (about 8 FWHM) to keep its wings."""
    beta = config.psf_moffat_beta
    gamma = config.psf_fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    width = min(2 * math.ceil(4 * config.psf_fwhm_px) + 1, config.size - 1 + config.size % 2)
    return Moffat2DKernel(gamma=gamma, alpha=beta, x_size=width, y_size=width)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return float(np.exp(rng.uniform(np.log(low), np.log(high)))) if low > 0 else float(rng.uniform(low, high))


def _galaxies(config: SkyConfig, rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], int]:
    """Sum of Sersic profiles, pixel-integrated by oversampling; centres kept 10% away from the edges."""
    factor, size = _GALAXY_OVERSAMPLING, config.size
    fine = (np.arange(size * factor) + 0.5) / factor - 0.5  # fine-grid centres in pixel coordinates
    x, y = np.meshgrid(fine, fine)
    image = np.zeros_like(x)
    n_galaxies = int(rng.integers(config.n_galaxies[0], config.n_galaxies[1] + 1))
    for _ in range(n_galaxies):
        profile = Sersic2D(
            amplitude=_log_uniform(rng, config.galaxy_amplitude_adu),
            r_eff=rng.uniform(*config.galaxy_r_eff_arcsec) / config.pixel_scale_arcsec,
            n=rng.uniform(*config.sersic_index),
            x_0=rng.uniform(0.1, 0.9) * (size - 1),
            y_0=rng.uniform(0.1, 0.9) * (size - 1),
            ellip=rng.uniform(0.0, config.max_ellipticity),
            theta=rng.uniform(0.0, np.pi),
        )
        image += profile(x, y)
    return image.reshape(size, factor, size, factor).mean(axis=(1, 3)), n_galaxies


def _stars(config: SkyConfig, rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], int]:
    """Point sources as single pixels holding their total flux (the PSF convolution spreads them)."""
    image = np.zeros((config.size, config.size))
    n_stars = int(rng.integers(config.n_stars[0], config.n_stars[1] + 1))
    f_min, f_max = config.star_flux_adu
    fluxes = np.minimum(f_min * (1.0 - rng.uniform(0.0, 1.0, n_stars)) ** (-1.0 / 1.5), f_max)
    rows, cols = rng.integers(0, config.size, (2, n_stars))
    np.add.at(image, (rows, cols), fluxes)
    return image, n_stars


def _nan_holes(config: SkyConfig, rng: np.random.Generator) -> tuple[npt.NDArray[np.bool_], str]:
    """Mask of pixels to blank out and the kind of defect ("none", "trail", "columns" or "holes")."""
    size = config.size
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.zeros((size, size), dtype=bool)
    if rng.uniform() >= config.nan_hole_probability:
        return mask, "none"
    kind = str(rng.choice(["trail", "columns", "holes"]))
    if kind == "trail":  # a straight line through a random point, a few pixels wide
        angle, (x0, y0) = rng.uniform(0.0, np.pi), rng.uniform(0.2, 0.8, 2) * size
        distance = np.abs((x - x0) * np.sin(angle) - (y - y0) * np.cos(angle))
        mask = distance < rng.uniform(1.0, 2.5)
    elif kind == "columns":  # dead readout columns, each starting at a random row
        for col in rng.choice(size, int(rng.integers(1, 4)), replace=False):
            mask[int(rng.integers(0, size // 2)) :, col] = True
    else:
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.0, size, 2)
            mask |= np.hypot(x - cx, y - cy) < rng.uniform(0.03, 0.08) * size
    return mask, kind


def _header(
    config: SkyConfig, seed: int, rng: np.random.Generator, counts: dict[str, int | str]
) -> fits.Header:
    """TAN WCS at a random sky position (uniform on the sphere) plus instrument and provenance cards."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = [(config.size + 1) / 2.0, (config.size + 1) / 2.0]
    wcs.wcs.cdelt = [-config.pixel_scale_arcsec / 3600.0, config.pixel_scale_arcsec / 3600.0]
    wcs.wcs.crval = [rng.uniform(0.0, 360.0), math.degrees(math.asin(rng.uniform(-1.0, 1.0)))]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.dateobs = Time(rng.uniform(57_000.0, 60_650.0), format="mjd").isot  # 2015 to 2024
    header = wcs.to_header()
    header["BUNIT"] = ("adu", "Analog-to-digital units")
    header["TELESCOP"] = "OOD-SYNTH"
    header["INSTRUME"] = "SKYGEN"
    header["FILTER"] = config.band
    header["OBJECT"] = f"synthetic-{seed}"
    header["GAIN"] = (config.gain_e_per_adu, "[e-/adu] detector gain")
    header["RDNOISE"] = (config.read_noise_e, "[e-] read noise")
    header["SKYLEVEL"] = (config.sky_level_adu, "[adu] mean sky background")
    header["PSFFWHM"] = (config.psf_fwhm_arcsec, "[arcsec] Moffat PSF FWHM")
    header["SATURATE"] = (config.saturation_adu, "[adu] saturation level")
    header["SEED"] = (seed, "random seed of this image")
    header["NGALAXY"] = (counts["galaxies"], "number of Sersic galaxies")
    header["NSTAR"] = (counts["stars"], "number of point sources")
    header["DEFECT"] = (counts["defect"], "NaN mask kind: none, trail, columns, holes")
    header["HISTORY"] = "Synthetic sky made by ood_core.base_model.demo_skies; not an observation."
    header["HISTORY"] = "Sersic galaxies and stars, Moffat PSF, sky, Poisson and read noise."
    return header


def make_sky(config: SkyConfig | None = None, seed: int = 0) -> tuple[npt.NDArray[np.float32], fits.Header]:
    """One synthetic sky: float32 image in ADU (NaN in masked defects) and its FITS header."""
    config = config or SkyConfig()
    rng = np.random.default_rng(seed)
    (galaxies, n_galaxies), (stars, n_stars) = _galaxies(config, rng), _stars(config, rng)
    # Zero outside the field: light from beyond the edge is simply not there, as on a real detector.
    seen = convolve_fft(galaxies + stars, psf_kernel(config), boundary="fill", fill_value=0.0)
    expected_e = (np.clip(seen, 0.0, None) + config.sky_level_adu) * config.gain_e_per_adu
    electrons = rng.poisson(expected_e) + rng.normal(0.0, config.read_noise_e, expected_e.shape)
    data = np.minimum(electrons / config.gain_e_per_adu, config.saturation_adu).astype(np.float32)
    mask, defect = _nan_holes(config, rng)
    data[mask] = np.nan
    counts: dict[str, int | str] = {"galaxies": n_galaxies, "stars": n_stars, "defect": defect}
    return data, _header(config, seed, rng, counts)


def write_demo_skies(
    outdir: str | Path, n: int = 12, seed: int = 0, config: SkyConfig | None = None
) -> list[Path]:
    """Write ``n`` skies as ``outdir/sky_<seed>_<i>.fits``; image i uses a seed derived from (seed, i)."""
    if n < 1 or seed < 0:
        raise ConfigurationError(f"write_demo_skies(n={n}, seed={seed}): need n >= 1 and seed >= 0")
    folder = Path(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        data, header = make_sky(config, image_seed)
        header["HISTORY"] = f"write_demo_skies(seed={seed}) image {i} of {n}"
        path = folder / f"sky_{seed}_{i}.fits"
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        paths.append(path)
    return paths
