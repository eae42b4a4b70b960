"""Demo skies: valid FITS with a celestial WCS, reproducible, realistic noise and sources."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.time import Time
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from ood_core.base_model.demo_skies import SkyConfig, make_sky, psf_kernel, write_demo_skies
from ood_core.errors import ConfigurationError

SMALL = SkyConfig(size=64, n_stars=(3, 10))


def _clipped_stats(data: np.ndarray) -> tuple[float, float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns that NaN pixels were masked, which is what we want
        mean, median, std = sigma_clipped_stats(data, sigma=3.0)
    return float(mean), float(median), float(std)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_demo_skies(tmp_path_factory.mktemp("skies"), n=6, seed=3, config=SMALL)


def test_header_is_valid_fits_with_celestial_wcs() -> None:
    data, header = make_sky(SMALL, seed=11)
    fits.PrimaryHDU(data, header).verify("exception")
    wcs = WCS(header)
    assert wcs.has_celestial and wcs.celestial.naxis == 2
    assert list(wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    assert proj_plane_pixel_scales(wcs) * 3600 == pytest.approx([0.4, 0.4])
    ra, dec = wcs.wcs.crval
    assert 0 <= ra < 360 and -90 <= dec <= 90
    expected = {"BUNIT": "adu", "TELESCOP": "OOD-SYNTH", "INSTRUME": "SKYGEN", "FILTER": "r"}
    assert {key: header[key] for key in expected} == expected
    assert header["OBJECT"] == "synthetic-11" and header["SEED"] == 11
    assert header["GAIN"] == 2.0 and header["RDNOISE"] == 5.0
    assert 2015 <= Time(header["DATE-OBS"]).decimalyear < 2025
    assert any("Synthetic" in str(line) for line in header["HISTORY"])


def test_files_read_back_equal_with_expected_names(demo_files: list[Path]) -> None:
    assert [path.name for path in demo_files] == [f"sky_3_{i}.fits" for i in range(6)]
    for path in demo_files:
        with fits.open(path) as hdul:
            hdul.verify("exception")
            stored, header = hdul[0].data, hdul[0].header
        data, _ = make_sky(SMALL, seed=header["SEED"])
        assert stored.dtype == np.dtype(">f4") and stored.shape == (64, 64)
        np.testing.assert_array_equal(stored, data)  # NaNs compare equal in the same places


def test_same_seed_reproduces_bytes_and_different_seeds_differ(tmp_path: Path) -> None:
    first = write_demo_skies(tmp_path / "a", n=3, seed=5, config=SMALL)
    again = write_demo_skies(tmp_path / "b", n=3, seed=5, config=SMALL)
    other = write_demo_skies(tmp_path / "c", n=3, seed=6, config=SMALL)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    arrays = [fits.getdata(p) for p in first + other]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert not np.array_equal(arrays[i], arrays[j], equal_nan=True)
    seeds = {fits.getheader(p)["SEED"] for p in first + other}
    assert len(seeds) == 6


@pytest.mark.parametrize(
    ("probability", "expect_some", "expect_all"), [(0.0, False, False), (1.0, True, True)]
)
def test_nan_holes_follow_probability(probability: float, expect_some: bool, expect_all: bool) -> None:
    config = SkyConfig(size=64, n_stars=(3, 10), nan_hole_probability=probability)
    images = [make_sky(config, seed)[0] for seed in range(12)]
    has_nan = [bool(np.isnan(image).any()) for image in images]
    assert any(has_nan) is expect_some and all(has_nan) is expect_all
    for image in images:
        assert np.isnan(image).mean() < 0.25  # a defect, never the whole image


def test_some_but_not_all_files_have_nan_holes(tmp_path: Path) -> None:
    config = SkyConfig(size=32, n_galaxies=(0, 1), n_stars=(1, 3), nan_hole_probability=0.5)
    paths = write_demo_skies(tmp_path, n=16, seed=0, config=config)
    defects = [fits.getheader(p)["DEFECT"] for p in paths]
    has_nan = [bool(np.isnan(fits.getdata(p)).any()) for p in paths]
    assert 0 < sum(has_nan) < len(paths)
    assert has_nan == [defect != "none" for defect in defects]
    assert {"trail", "columns", "holes"} <= set(defects)


def test_sources_stand_well_above_sky() -> None:
    for seed in range(4):
        data, _ = make_sky(SMALL, seed)
        _, median, std = _clipped_stats(data)
        assert np.nanmax(data) > median + 5 * std


def test_pure_sky_matches_configured_level_and_ccd_noise() -> None:
    config = SkyConfig(n_galaxies=(0, 0), n_stars=(0, 0), nan_hole_probability=0.0, sky_level_adu=300)
    data, _ = make_sky(config, seed=1)
    mean, _, std = _clipped_stats(data)
    expected_std = math.sqrt(300 / 2.0 + (5.0 / 2.0) ** 2)  # Poisson in electrons plus read noise, in ADU
    assert std == pytest.approx(expected_std, rel=0.03)
    assert abs(mean - 300) < 4 * expected_std / 128  # standard error of the mean of 128x128 pixels


def test_default_sky_level_within_noise() -> None:
    for seed in range(3):
        data, header = make_sky(seed=seed)
        assert data.shape == (128, 128) and data.dtype == np.float32
        _, median, std = _clipped_stats(data)
        # Faint galaxy wings lift the background a little, never by more than a fraction of the noise.
        assert 0 <= median - header["SKYLEVEL"] < 0.5 * std


def test_star_flux_is_conserved_by_the_psf() -> None:
    config = SkyConfig(
        size=64, n_galaxies=(0, 0), n_stars=(1, 1), star_flux_adu=(20_000.0, 20_000.0), nan_hole_probability=0
    )
    for seed in range(50):
        data, _ = make_sky(config, seed)
        row, col = np.unravel_index(np.argmax(data), data.shape)
        if 12 <= min(row, col) and max(row, col) < 64 - 12:
            break
    else:
        pytest.fail("no seed in 0..49 put the star away from the edges")
    y, x = np.mgrid[0:64, 0:64]
    aperture = np.hypot(y - row, x - col) <= 10  # 3.3 FWHM holds 99.7% of a beta=3.5 Moffat
    flux = float((data[aperture] - config.sky_level_adu).sum())
    assert flux == pytest.approx(20_000 * 0.997, rel=0.03)


def test_psf_kernel_has_the_configured_fwhm() -> None:
    config = SkyConfig(psf_fwhm_arcsec=1.6, pixel_scale_arcsec=0.2)  # 8 pixels
    kernel = psf_kernel(config).array
    centre = kernel.shape[0] // 2
    profile = kernel[centre, centre:] / kernel[centre, centre]
    below = int(np.argmax(profile < 0.5))
    half_width = below - 1 + (profile[below - 1] - 0.5) / (profile[below - 1] - profile[below])
    assert 2 * half_width == pytest.approx(8.0, rel=0.03)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 8},
        {"n_galaxies": (3, 1)},
        {"nan_hole_probability": 1.5},
        {"gain_e_per_adu": 0.0},
        {"max_ellipticity": 1.0},
    ],
)
def test_bad_config_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        SkyConfig(**bad)  # type: ignore[arg-type]


def test_demo_files_read_through_the_user_path(demo_files: list[Path]) -> None:
    fits_io = pytest.importorskip("ood_core.io.fits")
    for path in demo_files:
        image = fits_io.read_fits_image(path)
        raw = fits.getdata(path)
        np.testing.assert_array_equal(image.data, raw)
        np.testing.assert_array_equal(image.mask, np.isnan(raw))
        assert image.wcs is not None and image.wcs.has_celestial
        assert image.metadata()["TELESCOP"] == "OOD-SYNTH"
