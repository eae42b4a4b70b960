"""The GalSim stamp library of the simulated skies: point-spread functions and galaxy profiles, seeded, cached.

Simulated skies (:mod:`.sky_scenes`) are composed on the training device from two libraries rendered once by
GalSim (Rowe et al. 2015; PyPI ``galsim``, BSD) on a grid ``oversampling`` times finer than the model's pixels:

- **PSFs** (odd stamps, centred on the middle pixel, unit sum): Moffat (beta 2-5), Kolmogorov (atmospheric
  seeing), Gaussian (a radio/mm beam), an obscured telescope pupil with struts (diffraction spikes and Airy
  rings, ``galsim.OpticalPSF``, alone or seen through seeing), with FWHM log-uniform over ``psf_fwhm`` model
  pixels and a small shear.
- **Galaxies** without the PSF (unit flux, centred, with GalSim's pixel response at the fine scale), in three
  size classes whose stamps hold about four half-light radii: a Sérsic profile (index 0.5-6), a de Vaucouleurs
  bulge plus an exponential disk (bulge fraction 0-1), or a disk with star-forming knots
  (``galsim.RandomKnots``); sheared to ellipticity up to 0.8 at a random angle.

The scenes convolve a canvas of galaxies and stars with one PSF per image, so any galaxy can be seen through any
PSF and every star of an image shares its PSF, as in a real exposure.

Every stamp is drawn from its own generator, ``numpy.random.default_rng([seed, kind, index])``, so a library is
the same on every machine and a stamp does not depend on how many others were drawn. A library is written to
``<cache>/sky-library-<digest>.npz`` (the digest of its config), outside the repository; building the default
takes a few minutes of one core and is reused afterwards. Nothing here is a real survey image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ood_core.errors import ConfigurationError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
LICENCE = ("simulated with GalSim (BSD 3-clause, github.com/GalSim-developers/GalSim) by "
           "ood_core.base_model.sky_library (seeded); no survey image")
CACHE_ENV = "OOD_SYNTH_CACHE"
"""Environment variable naming the cache folder of simulated libraries (default ``~/.cache/ood-synth``)."""
PSF_KINDS = ("moffat", "kolmogorov", "gaussian", "optical", "optical+seeing")
PSF_WEIGHTS = (0.35, 0.25, 0.12, 0.14, 0.14)
GALAXY_KINDS = ("sersic", "bulge+disk", "knotty disk")
GALAXY_WEIGHTS = (0.5, 0.33, 0.17)
_SMOOTHING_SIGMA = 0.2
"""A 0.2-fine-pixel Gaussian convolves every galaxy: it bounds GalSim's FFT for cuspy profiles and is far below
any PSF the scenes apply (FWHM >= 1.4 fine pixels)."""


@dataclass(frozen=True)
class LibraryConfig:
    """How many stamps of which kinds, on which grid; the digest of this config names the cached file."""

    seed: int = 0
    oversampling: int = 2
    """Fine pixels per model pixel along each axis."""
    psfs: int = 192
    psf_stamp: int = 65
    """Side of a PSF stamp in fine pixels (odd: centred on its middle pixel)."""
    psf_fwhm: tuple[float, float] = (0.7, 8.0)
    """FWHM range in model pixels, drawn log-uniform."""
    galaxies: tuple[int, int, int] = (6000, 1500, 300)
    """Galaxies in each size class (small, medium, large)."""
    stamp_sizes: tuple[int, int, int] = (24, 64, 128)
    """Stamp side of each size class in fine pixels."""
    half_light_radius: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = (
        (0.25, 1.3), (1.3, 3.5), (3.5, 8.0))
    """Half-light radius range of each size class in model pixels, drawn log-uniform."""

    def __post_init__(self) -> None:
        if self.psf_stamp % 2 == 0:
            raise ConfigurationError(f"psf_stamp must be odd (centred on a pixel), got {self.psf_stamp}")
        if self.psfs < 1 or min(self.galaxies) < 1 or self.oversampling < 1:
            raise ConfigurationError("a sky library needs at least one PSF, one galaxy per class and oversampling >= 1")

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(f"{text}|galsim-library-2".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SkyLibrary:
    """Rendered stamps: ``psfs`` (P, S, S) unit-sum; ``galaxies[c]`` (N_c, S_c, S_c) unit flux, float32."""

    config: LibraryConfig
    psfs: FloatArray
    psf_fwhm: FloatArray
    """FWHM of each PSF in model pixels (as drawn)."""
    psf_kind: list[str]
    galaxies: tuple[FloatArray, FloatArray, FloatArray]
    galaxy_kind: tuple[list[str], list[str], list[str]]

    def describe(self) -> dict[str, Any]:
        """What the library holds, for training logs and model cards."""
        return {
            "config": asdict(self.config), "digest": self.config.digest(), "licence": LICENCE,
            "psf_kinds": {k: self.psf_kind.count(k) for k in PSF_KINDS},
            "galaxy_kinds": {k: sum(kinds.count(k) for kinds in self.galaxy_kind) for k in GALAXY_KINDS},
        }


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def _psf_profile(rng: np.random.Generator, fwhm: float, kind: str) -> Any:
    """One GalSim PSF of the given kind and FWHM (in model pixels = GalSim arcsec), before its shear."""
    import galsim

    if kind == "moffat":
        return galsim.Moffat(beta=rng.uniform(2.0, 5.0), fwhm=fwhm)
    if kind == "kolmogorov":
        return galsim.Kolmogorov(fwhm=fwhm)
    if kind == "gaussian":
        return galsim.Gaussian(fwhm=fwhm)
    # An obscured pupil with struts: Airy core FWHM ~ 1.03 lam/D, widened a little by the aberrations.
    seeing = kind == "optical+seeing"
    core = fwhm * (rng.uniform(0.3, 0.6) if seeing else 1.0)
    optical = galsim.OpticalPSF(
        lam_over_diam=core / 1.03, obscuration=rng.uniform(0.1, 0.4), nstruts=int(rng.choice([0, 3, 4, 6])),
        strut_thick=rng.uniform(0.02, 0.06), strut_angle=rng.uniform(0, 90) * galsim.degrees,
        defocus=rng.normal(0, 0.06), astig1=rng.normal(0, 0.06), astig2=rng.normal(0, 0.06),
        coma1=rng.normal(0, 0.04), coma2=rng.normal(0, 0.04))
    if not seeing:
        return optical
    return galsim.Convolve(optical, galsim.Kolmogorov(fwhm=float(np.sqrt(max(fwhm**2 - core**2, 0.04)))))


def render_psf(config: LibraryConfig, index: int) -> tuple[FloatArray, float, str]:
    """PSF ``index`` of the library: its fine-grid stamp (unit sum), FWHM in model pixels and kind."""
    import galsim

    rng = np.random.default_rng([config.seed, 0, index])
    kind = str(rng.choice(PSF_KINDS, p=PSF_WEIGHTS))
    fwhm = _log_uniform(rng, config.psf_fwhm)
    profile = _psf_profile(rng, fwhm, kind).shear(g1=rng.normal(0, 0.03), g2=rng.normal(0, 0.03))
    profile = profile.rotate(rng.uniform(0, 360) * galsim.degrees)
    params = galsim.GSParams(maximum_fft_size=16384)
    image = profile.withGSParams(params).drawImage(nx=config.psf_stamp, ny=config.psf_stamp,
                                                   scale=1.0 / config.oversampling)
    stamp = np.asarray(image.array, dtype=np.float64)
    stamp = np.clip(stamp, 0.0, None)
    return (stamp / stamp.sum()).astype(np.float32), fwhm, kind


def _galaxy_profile(rng: np.random.Generator, radius: float, kind: str) -> Any:
    """One unit-flux GalSim galaxy of half-light radius about ``radius`` model pixels."""
    import galsim

    angle = rng.uniform(0, 180) * galsim.degrees
    if kind == "sersic":
        n = round(float(rng.uniform(0.5, 6.0)) * 20) / 20  # a grid of indices: GalSim caches each one's tables
        return galsim.Sersic(n=n, half_light_radius=radius).shear(e=rng.uniform(0, 0.75), beta=angle)
    disk = galsim.Exponential(half_light_radius=radius)
    disk_shear = {"e": rng.uniform(0, 0.8), "beta": angle}
    if kind == "bulge+disk":
        bulge_fraction = rng.uniform(0.0, 1.0)
        bulge = galsim.DeVaucouleurs(half_light_radius=radius * rng.uniform(0.15, 0.6))
        bulge = bulge.shear(e=rng.uniform(0, 0.3), beta=angle + rng.normal(0, 10) * galsim.degrees)
        return bulge_fraction * bulge + (1 - bulge_fraction) * disk.shear(**disk_shear)
    knots = galsim.RandomKnots(int(rng.integers(8, 80)), half_light_radius=radius * rng.uniform(0.8, 1.3),
                               rng=galsim.BaseDeviate(int(rng.integers(1 << 30))))
    knot_fraction = rng.uniform(0.1, 0.6)
    return ((1 - knot_fraction) * disk + knot_fraction * knots).shear(**disk_shear)


def render_galaxy(config: LibraryConfig, size_class: int, index: int) -> tuple[FloatArray, str]:
    """Galaxy ``index`` of a size class: its fine-grid stamp (flux inside the stamp <= 1) and kind."""
    import galsim

    rng = np.random.default_rng([config.seed, 1 + size_class, index])
    kind = str(rng.choice(GALAXY_KINDS, p=GALAXY_WEIGHTS))
    radius = _log_uniform(rng, config.half_light_radius[size_class])
    profile = galsim.Convolve(_galaxy_profile(rng, radius, kind), galsim.Gaussian(sigma=_SMOOTHING_SIGMA))
    side = config.stamp_sizes[size_class]
    params = galsim.GSParams(maximum_fft_size=16384)
    offset = rng.uniform(-0.5, 0.5, 2)  # sub-pixel centre: stamps are pasted at whole fine pixels
    image = profile.withGSParams(params).drawImage(nx=side, ny=side, scale=1.0 / config.oversampling,
                                                   offset=tuple(offset))
    return np.clip(np.asarray(image.array, dtype=np.float32), 0.0, None), kind


def build_library(config: LibraryConfig, *, progress: bool = False) -> SkyLibrary:
    """Render every stamp of ``config`` with GalSim (one core; minutes for the default)."""
    import warnings

    try:
        import galsim  # noqa: F401
    except ImportError as exc:  # pragma: no cover - galsim is a dependency
        raise ConfigurationError("simulated skies need GalSim: pip install galsim") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GalSim's FFT-size advice: the sizes here are bounded by the stamps
        psfs = [render_psf(config, i) for i in _progress(range(config.psfs), progress, "PSFs")]
        classes = []
        for c, count in enumerate(config.galaxies):
            classes.append([render_galaxy(config, c, i) for i in _progress(range(count), progress, f"galaxies {c}")])
    stamps = tuple(np.stack([s for s, _ in rendered]) for rendered in classes)
    kinds = tuple([k for _, k in rendered] for rendered in classes)
    return SkyLibrary(config=config, psfs=np.stack([p for p, _, _ in psfs]),
                      psf_fwhm=np.array([f for _, f, _ in psfs], dtype=np.float32),
                      psf_kind=[k for _, _, k in psfs],
                      galaxies=(stamps[0], stamps[1], stamps[2]), galaxy_kind=(kinds[0], kinds[1], kinds[2]))


def _progress(items: range, show: bool, label: str) -> Any:
    if not show:
        return items
    from rich.progress import track

    return track(items, description=f"sky library: {label}")


def cache_dir() -> Path:
    """Where simulated libraries are cached: ``$OOD_SYNTH_CACHE`` or ``~/.cache/ood-synth``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ood-synth")


def library_path(config: LibraryConfig, folder: Path | None = None) -> Path:
    return (folder or cache_dir()) / f"sky-library-{config.digest()}.npz"


def save_library(library: SkyLibrary, path: Path) -> None:
    """Write a library atomically (float16 galaxy stamps, float32 PSFs, the config as JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    meta = {"config": asdict(library.config), "psf_kind": library.psf_kind,
            "galaxy_kind": list(library.galaxy_kind)}
    arrays: dict[str, Any] = {f"galaxies{c}": g.astype(np.float16) for c, g in enumerate(library.galaxies)}
    arrays.update(psfs=library.psfs, psf_fwhm=library.psf_fwhm,
                  meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_library(path: Path) -> SkyLibrary:
    """Read a library written by :func:`save_library`; a damaged or foreign file raises ConfigurationError."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes().decode())
            galaxies = tuple(np.asarray(archive[f"galaxies{c}"], dtype=np.float32) for c in range(3))
            psfs = np.asarray(archive["psfs"], dtype=np.float32)
            fwhm = np.asarray(archive["psf_fwhm"], dtype=np.float32)
        raw = meta["config"]
        config = LibraryConfig(**{k: _tuples(v) for k, v in raw.items()})
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise ConfigurationError(f"{path}: not a readable sky library ({exc}); delete it to rebuild") from exc
    if psfs.shape[0] != config.psfs or any(g.shape[0] != n for g, n in zip(galaxies, config.galaxies, strict=True)):
        raise ConfigurationError(f"{path}: its stamps do not match its config; delete it to rebuild")
    kinds = meta["galaxy_kind"]
    return SkyLibrary(config=config, psfs=psfs, psf_fwhm=fwhm, psf_kind=list(meta["psf_kind"]),
                      galaxies=(galaxies[0], galaxies[1], galaxies[2]),
                      galaxy_kind=(list(kinds[0]), list(kinds[1]), list(kinds[2])))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def sky_library(config: LibraryConfig | None = None, *, folder: Path | None = None,
                progress: bool = False) -> SkyLibrary:
    """The library of ``config`` (default: :class:`LibraryConfig`), from the cache or rendered and cached."""
    config = config or LibraryConfig()
    path = library_path(config, folder)
    if path.exists():
        return load_library(path)
    log.info("rendering the simulated-sky library %s with GalSim (cached at %s)", config.digest(), path)
    save_library(build_library(config, progress=progress), path)
    return load_library(path)  # as stored (float16 galaxies): a run draws the same skies, cached or not
