"""Simulated photon-counts maps: point sources through a PSF on diffuse emission, under a radial acceptance.

A gamma-ray or X-ray counts map is mostly zeros and ones: a few thousand photons spread over tens of thousands of
pixels. These maps are made by the project itself (issue 27) so that tests and benchmarks of counts domains need
nothing downloaded. Each map is one Poisson draw from an expected-counts map

    mu(x) = A(x) * [ B(x) + sum_k F_k * PSF(x - x_k) ],

where ``A`` is the exposure (acceptance), 1 at the centre and falling as a Gaussian toward the edges, ``B`` a
diffuse background (a Galactic-plane-like band plus a power-law Gaussian random field, log-normal so it stays
positive), and the sources have fluxes drawn from Euclidean counts (N(>F) proportional to F^-1.5), one of them
the bright target near the centre. The expectation is scaled so that each map holds a total count drawn
log-uniform from ``total_counts``. Maps are written as FITS integer images (``BUNIT = 'count'``, Galactic CAR
WCS), the expectation kept beside the counts for tests that need the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.wcs import WCS

from ood_core.errors import ConfigurationError


@dataclass(frozen=True)
class CountsSkyConfig:
    """How a simulated counts map looks. Angles in degrees, counts in photons per map."""

    size: int = 128
    pixel_scale_deg: float = 0.04
    total_counts: tuple[float, float] = (2700.0, 7000.0)
    """Expected photons per map, drawn log-uniform (the Poisson draw scatters the realised total around it)."""
    source_share: tuple[float, float] = (0.2, 0.45)
    """Share of a map's expected counts that comes from point sources, drawn uniform."""
    n_field_sources: tuple[int, int] = (2, 8)
    """Inclusive range of faint field sources besides the central target."""
    target_offset_deg: float = 0.2
    """The target lies within this distance of the map centre."""
    psf_sigma_deg: tuple[float, float] = (0.08, 0.16)
    """Gaussian PSF width, one per map (a LAT-like PSF at a few GeV)."""
    acceptance_sigma_deg: float = 1.6
    """Exposure falls as exp(-r^2 / 2 sigma^2) from the centre: fewer photons toward the edges."""
    plane_width_deg: tuple[float, float] = (0.5, 1.5)
    """Width (Gaussian sigma) of the diffuse band along the map's horizontal axis."""
    field_slope: float = 3.0
    """Power-law slope of the diffuse random field's power spectrum, P(k) proportional to k^-slope."""

    def __post_init__(self) -> None:
        pairs = {"total_counts": self.total_counts, "source_share": self.source_share,
                 "n_field_sources": self.n_field_sources, "psf_sigma_deg": self.psf_sigma_deg,
                 "plane_width_deg": self.plane_width_deg}
        for name, (low, high) in pairs.items():
            if not 0 <= low <= high:
                raise ConfigurationError(f"CountsSkyConfig.{name} = {(low, high)}: need 0 <= low <= high")
        if self.size < 16 or self.pixel_scale_deg <= 0 or self.acceptance_sigma_deg <= 0:
            raise ConfigurationError(
                f"CountsSkyConfig(size={self.size}, pixel_scale_deg={self.pixel_scale_deg}, acceptance_sigma_deg="
                f"{self.acceptance_sigma_deg}): need size >= 16 and positive scales")
        if self.source_share[1] >= 1:
            raise ConfigurationError(f"CountsSkyConfig.source_share = {self.source_share}: must stay below 1")


@dataclass(frozen=True)
class CountsMap:
    """One simulated map: the Poisson counts, the expectation they were drawn from, and what went in."""

    counts: npt.NDArray[np.int32]
    expected: npt.NDArray[np.float64]
    n_sources: int
    target_pixel: tuple[float, float]
    """(y, x) of the central target, in pixels."""
    psf_sigma_deg: float


def _grid(config: CountsSkyConfig) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(y, x) offsets from the map centre in degrees."""
    axis = (np.arange(config.size, dtype=np.float64) - (config.size - 1) / 2.0) * config.pixel_scale_deg
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return y, x


def _random_field(config: CountsSkyConfig, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A zero-mean, unit-variance Gaussian random field with a power-law spectrum."""
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(config.size), np.fft.fftfreq(config.size), indexing="ij"))
    k[0, 0] = np.inf  # no mean
    amplitude = k ** (-config.field_slope / 2.0)
    noise = rng.normal(size=(config.size, config.size)) + 1j * rng.normal(size=(config.size, config.size))
    field = np.fft.ifft2(noise * amplitude).real
    out: npt.NDArray[np.float64] = (field - field.mean()) / field.std()
    return out


def _background(config: CountsSkyConfig, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Diffuse emission, unit mean: a band across the map (tilted, offset) times a log-normal random field."""
    y, x = _grid(config)
    tilt = rng.uniform(-0.3, 0.3)
    offset = rng.uniform(-0.5, 0.5)
    width = rng.uniform(*config.plane_width_deg)
    band = 0.3 + np.exp(-0.5 * ((y - tilt * x - offset) / width) ** 2)
    diffuse = band * np.exp(0.5 * _random_field(config, rng))
    out: npt.NDArray[np.float64] = diffuse / diffuse.mean()
    return out


def _sources(
    config: CountsSkyConfig, rng: np.random.Generator, psf_sigma: float
) -> tuple[npt.NDArray[np.float64], int, tuple[float, float]]:
    """Point sources through a Gaussian PSF, unit total: the target near the centre, then fainter field sources."""
    y, x = _grid(config)
    n_field = int(rng.integers(config.n_field_sources[0], config.n_field_sources[1] + 1))
    half = config.size * config.pixel_scale_deg / 2.0
    radius, angle = config.target_offset_deg * math.sqrt(rng.uniform()), rng.uniform(0.0, 2 * math.pi)
    positions = [(radius * math.sin(angle), radius * math.cos(angle))]
    positions += [tuple(rng.uniform(-half, half, 2)) for _ in range(n_field)]
    # Euclidean counts, N(>F) ~ F^-1.5, from 1 to 100 (relative); the target is the brightest of the map.
    fluxes = (1.0 - rng.uniform(0.0, 0.999, n_field)) ** (-1.0 / 1.5)
    fluxes = np.concatenate([[max(3.0 * fluxes.max(initial=1.0), 10.0)], fluxes])
    image = np.zeros((config.size, config.size))
    for (py, px), flux in zip(positions, fluxes, strict=True):
        image += flux * np.exp(-0.5 * ((y - py) ** 2 + (x - px) ** 2) / psf_sigma**2)
    target = (positions[0][0] / config.pixel_scale_deg + (config.size - 1) / 2.0,
              positions[0][1] / config.pixel_scale_deg + (config.size - 1) / 2.0)
    return image / image.sum(), n_field + 1, target


def make_counts_map(config: CountsSkyConfig | None = None, seed: int = 0) -> CountsMap:
    """One simulated counts map (seeded): Poisson counts from exposure x (diffuse + point sources)."""
    config = config or CountsSkyConfig()
    rng = np.random.default_rng(seed)
    psf_sigma = rng.uniform(*config.psf_sigma_deg)
    sources, n_sources, target = _sources(config, rng, psf_sigma)
    share = rng.uniform(*config.source_share)
    sky = (1.0 - share) * _background(config, rng) / config.size**2 + share * sources
    y, x = _grid(config)
    exposure = np.exp(-0.5 * (y**2 + x**2) / config.acceptance_sigma_deg**2)
    total = math.exp(rng.uniform(math.log(config.total_counts[0]), math.log(config.total_counts[1])))
    seen = exposure * sky
    expected = total * seen / seen.sum()
    counts = rng.poisson(expected).astype(np.int32)
    return CountsMap(counts=counts, expected=expected, n_sources=n_sources, target_pixel=target,
                     psf_sigma_deg=float(psf_sigma))


def counts_header(config: CountsSkyConfig, seed: int, sky: CountsMap) -> fits.Header:
    """Galactic CAR WCS centred on the plane, ``BUNIT = 'count'``, and what the map holds."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = [(config.size + 1) / 2.0, (config.size + 1) / 2.0]
    wcs.wcs.cdelt = [-config.pixel_scale_deg, config.pixel_scale_deg]
    wcs.wcs.crval = [(seed * 7.0) % 360.0, 0.0]
    header = wcs.to_header()
    header["BUNIT"] = ("count", "photons per pixel")
    header["TELESCOP"] = "OOD-SYNTH"
    header["INSTRUME"] = "COUNTSGEN"
    header["OBJECT"] = f"counts-{seed}"
    header["SEED"] = (seed, "random seed of this map")
    header["NSOURCE"] = (sky.n_sources, "point sources, the central target included")
    header["PSFSIG"] = (sky.psf_sigma_deg, "[deg] Gaussian PSF sigma")
    header["EXPCTOT"] = (float(sky.expected.sum()), "expected photons in the map")
    header["HISTORY"] = "Simulated counts map made by ood_core.base_model.counts_skies; not an observation."
    return header


def write_counts_maps(
    outdir: str | Path, n: int = 10, seed: int = 0, config: CountsSkyConfig | None = None
) -> list[Path]:
    """Write ``n`` maps as ``outdir/counts_<seed>_<i>.fits`` (int32, BUNIT count); map i is seeded by (seed, i)."""
    if n < 1 or seed < 0:
        raise ConfigurationError(f"write_counts_maps(n={n}, seed={seed}): need n >= 1 and seed >= 0")
    config = config or CountsSkyConfig()
    folder = Path(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        map_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        sky = make_counts_map(config, map_seed)
        path = folder / f"counts_{seed}_{i:02d}.fits"
        fits.PrimaryHDU(sky.counts, header=counts_header(config, map_seed, sky)).writeto(path, overwrite=True)
        paths.append(path)
    return paths
