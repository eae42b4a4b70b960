"""Each evaluation metric on cases with known answers, plus the set-level comparison on the project's own skies
(FITS files written and read back)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from made_sets import CROWDED, write_sky_set

from ood_core.errors import ConfigurationError
from ood_core.evaluation import metrics as M
from ood_core.evaluation import morphology as MO
from ood_core.io.fits import read_fits_image

YY, XX = np.indices((64, 64)).astype(np.float64)


def gaussian(cy: float, cx: float, sigma: float, size: int = 64) -> np.ndarray:
    yy, xx = np.indices((size, size)).astype(np.float64)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


# --------------------------------------------------------------------------------------------- pixel W1


def test_identical_sets_have_zero_wasserstein() -> None:
    values = np.random.default_rng(0).lognormal(size=(5, 32, 32))
    assert M.wasserstein_1(values, values.copy()) == 0.0


@pytest.mark.parametrize("shift", [0.5, 3.0, -7.25])
def test_shifted_distribution_gives_the_shift(shift: float) -> None:
    values = np.random.default_rng(1).normal(size=4000)
    assert M.wasserstein_1(values + shift, values) == pytest.approx(abs(shift), rel=1e-9)


def test_wasserstein_of_two_point_masses_and_nan_ignored() -> None:
    assert M.wasserstein_1([0.0, 0.0, np.nan], [2.0, 2.0]) == pytest.approx(2.0)
    with pytest.raises(ConfigurationError):
        M.wasserstein_1([np.nan], [1.0])


# --------------------------------------------------------------------------------------------- spectrum


def test_white_noise_has_a_flat_spectrum_at_its_variance() -> None:
    sigma = 2.0
    noise = np.random.default_rng(2).normal(0.0, sigma, size=(64, 64, 64))
    spectrum = M.isotropic_power_spectrum(noise)
    assert spectrum.k[0] == pytest.approx(1 / 64) and spectrum.k[-1] == pytest.approx(0.5)
    # Flat at sigma^2: every bin within 10 % (the lowest rings hold few modes), and no trend with k.
    assert np.all(np.abs(spectrum.power / sigma**2 - 1) < 0.1)
    slope = np.polyfit(np.log(spectrum.k), np.log(spectrum.power), 1)[0]
    assert abs(slope) < 0.02


def test_power_law_field_recovers_its_slope() -> None:
    rng = np.random.default_rng(3)
    ky, kx = np.fft.fftfreq(128)[:, None], np.fft.fftfreq(128)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = 1.0
    amplitude = k ** (-1.5)  # P(k) ~ k^-3
    fields = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(16, 128, 128))) * amplitude))
    spectrum = M.isotropic_power_spectrum(fields, window=False)
    mid = (spectrum.k > 0.03) & (spectrum.k < 0.3)
    slope = np.polyfit(np.log(spectrum.k[mid]), np.log(spectrum.power[mid]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.1)


def test_spectrum_distance_zero_for_identical_and_log_ratio_for_scaled() -> None:
    images = np.random.default_rng(4).normal(size=(4, 32, 32))
    a = M.isotropic_power_spectrum(images)
    assert M.spectrum_distance(a, M.isotropic_power_spectrum(images.copy())) == 0.0
    # Scaling images by 10 scales the power by 100: exactly 2 dex everywhere.
    assert M.spectrum_distance(M.isotropic_power_spectrum(10 * images), a) == pytest.approx(2.0)
    with pytest.raises(ConfigurationError):
        M.spectrum_distance(a, M.isotropic_power_spectrum(np.zeros((1, 16, 16)) + images[0, :16, :16]))


# --------------------------------------------------------------------------------------------- detection


def test_detection_counts_known_sources_and_none_in_noise() -> None:
    rng = np.random.default_rng(5)
    image = rng.normal(10.0, 1.0, size=(64, 64))
    positions = [(12, 15), (40, 22), (30, 50), (52, 52)]
    for cy, cx in positions:
        image += 40.0 * gaussian(cy, cx, 1.5)
    found = M.detect_image_sources(image)
    assert found.count == len(positions)
    # Each segment holds about the injected flux 40 * 2 pi 1.5^2 = 565.
    assert np.all(np.abs(found.fluxes / (40 * 2 * math.pi * 1.5**2) - 1) < 0.15)
    assert M.detect_image_sources(rng.normal(10.0, 1.0, size=(64, 64))).count == 0


# --------------------------------------------------------------------------------------------- morphology


def test_gini_known_values() -> None:
    assert MO.gini(np.ones((16, 16))) == 0.0
    one_pixel = np.zeros((16, 16))
    one_pixel[3, 4] = 5.0
    assert MO.gini(one_pixel) == pytest.approx(1.0)
    # Half the pixels 0, half 1: G = n / (2 (n - 1)).
    half = np.array([0.0] * 50 + [1.0] * 50)
    assert MO.gini(half) == pytest.approx(100 / (2 * 99))
    assert math.isnan(MO.gini(np.zeros(10)))


def test_m20_and_concentration_of_a_gaussian() -> None:
    blob = gaussian(31.5, 31.5, 6.0)
    # Analytic for a 2-D Gaussian: M20 = log10(1 - 0.8 (1 - ln 0.8)) = -1.667; C = 5 log10(sqrt(ln 5 / ln 1.25)).
    assert MO.m20(blob) == pytest.approx(math.log10(1 - 0.8 * (1 - math.log(0.8))), abs=0.03)
    assert MO.concentration(blob) == pytest.approx(5 * math.log10(math.sqrt(math.log(5) / math.log(1.25))), abs=0.02)


def test_concentration_of_an_exponential_disc() -> None:
    r = np.hypot(YY - 31.5, XX - 31.5)
    # r20 = 0.824 h, r80 = 2.994 h for I ~ exp(-r / h): C = 5 log10(2.994 / 0.824) = 2.80 (truncated at 10 h).
    assert MO.concentration(np.exp(-r / 3.0)) == pytest.approx(2.80, abs=0.04)


def test_asymmetry_known_values() -> None:
    symmetric = gaussian(32, 32, 4.0)
    assert MO.asymmetry(symmetric) == pytest.approx(0.0, abs=1e-12)
    # The minimizing centre is found even away from the centroid's half-pixel grid point.
    assert MO.asymmetry(gaussian(30.5, 33.0, 4.0)) == pytest.approx(0.0, abs=1e-12)
    # Off the half-pixel grid the continuous centre refinement (bilinear) still finds the symmetry centre.
    # Half-pixel grid only: 0.113 for this Gaussian; what remains is bilinear interpolation error.
    off_grid = gaussian(30.3, 33.2, 4.0)
    grid_only = min(MO._asymmetry_about(off_grid, y, x, 0.0) for y in range(56, 66) for x in range(62, 72))
    assert grid_only > 0.1
    assert 0.0 <= MO.asymmetry(off_grid) < 0.015
    # A symmetric body of flux 1 plus an unmatched point of flux e: A = 2 e / (1 + e).
    body = symmetric / symmetric.sum()
    body[32, 52] += 0.05
    assert MO.asymmetry(body) == pytest.approx(2 * 0.05 / 1.05, rel=1e-6)


def test_asymmetry_noise_term_removes_the_noise() -> None:
    rng = np.random.default_rng(8)
    noise = rng.normal(0.0, 1.0, size=(64, 64))
    # Without the term pure noise looks very asymmetric; with it, A is about 0 (min over centres: slightly below).
    assert MO.asymmetry(noise) > 1.0
    assert abs(MO.asymmetry(noise, noise_sigma=1.0)) < 0.1
    blob = 200 * gaussian(32, 32, 4.0)
    noisy = blob + rng.normal(0.0, 1.0, size=blob.shape)
    assert MO.asymmetry(noisy) > 0.15  # 4096 pixels x 2 / sqrt(pi) over a flux of 20100: 0.23
    assert abs(MO.asymmetry(noisy, noise_sigma=1.0)) < 0.05
    morph = M.image_morphology(noisy + 5.0)  # estimates background and noise itself
    assert abs(morph.asymmetry) < 0.05 and morph.gini > 0.5


def test_morphology_is_nan_without_flux() -> None:
    flat = np.zeros((16, 16))
    assert math.isnan(MO.m20(flat)) and math.isnan(MO.concentration(flat)) and math.isnan(MO.asymmetry(flat))


# --------------------------------------------------------------------------------------------- Minkowski


def test_minkowski_functionals_of_known_shapes() -> None:
    r2 = (YY - 32) ** 2 + (XX - 32) ** 2
    disc = r2 <= 10**2
    area, perim, euler = M.excursion_functionals(disc)
    assert euler == 1.0
    assert area == disc.mean() and area == pytest.approx(math.pi * 100 / 4096, rel=0.02)
    assert perim == pytest.approx(2 * math.pi * 10, rel=0.06)
    annulus = disc & (r2 > 4**2)
    assert M.excursion_functionals(annulus)[2] == 0.0
    two_discs = ((YY - 15) ** 2 + (XX - 15) ** 2 <= 16) | ((YY - 45) ** 2 + (XX - 45) ** 2 <= 16)
    assert M.excursion_functionals(two_discs)[2] == 2.0


def test_minkowski_curves_of_a_cone_and_curve_distance() -> None:
    cone = -np.hypot(YY - 31.5, XX - 31.5)  # excursion sets are discs: Euler 1 at every threshold
    curves = M.minkowski_curves(cone, [-20.0, -10.0, -5.0])
    assert curves.euler.tolist() == [1.0, 1.0, 1.0]
    assert np.all(np.diff(curves.area) < 0)
    assert M.curve_distance(curves.area, curves.area) == 0.0
    assert M.curve_distance(2 * curves.area, curves.area) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------- geometry


def test_novelty_statistics_of_copies_and_of_far_images() -> None:
    rng = torch.Generator().manual_seed(0)
    inputs = torch.rand((5, 3, 8, 8), generator=rng) * 2 - 1
    copies = M.novelty_statistics(inputs.clone(), inputs)
    assert copies["nearest_input_median"] == 0.0 and copies["near_copy_fraction"] == 1.0
    far = M.novelty_statistics(inputs + 10.0, inputs)
    assert far["near_copy_fraction"] == 0.0 and far["nearest_input_ratio"] > 5
    # A constant offset c moves every image by RMS distance exactly |c|.
    assert M.nearest_distances(inputs + 0.25, inputs) == pytest.approx(np.full(5, 0.25), abs=1e-6)


def test_domain_separation_scores_reference_high_and_in_domain_low() -> None:
    gen = torch.Generator().manual_seed(1)
    in_domain = torch.rand((8, 3, 16, 16), generator=gen) * 2 - 1  # flat spectrum, wide pixel range
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blobs = [torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0) for y, x in ((4, 4), (10, 12), (8, 3), (12, 6))]
    reference = torch.stack([-0.9 + 1.5 * b + 0.02 * torch.randn((16, 16), generator=gen) for b in blobs])
    reference = reference[:, None].repeat(1, 3, 1, 1)  # dark sky with one source: a different domain
    own = M.domain_separation(reference, in_domain, reference)
    assert own["domain_classifier_loo_accuracy"] == 1.0
    assert own["domain_separation"] > 0.8 and own["in_domain_distance_ratio"] == pytest.approx(1.0)
    collapsed = M.domain_separation(in_domain, in_domain, reference)
    assert collapsed["domain_separation"] < 0.2 and collapsed["in_domain_distance"] == 0.0
    with pytest.raises(ConfigurationError):
        M.domain_separation(reference, in_domain[:1], reference)


# --------------------------------------------------------------------------------------------- whole sets


@pytest.fixture(scope="module")
def skies(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Six made 128 px crowded fields (Sersic galaxies and 40 to 100 stars through a Moffat PSF, CCD noise),
    read back from FITS and taken every other pixel, as the dev set's GLIMPSE cutouts were."""
    paths = write_sky_set(tmp_path_factory.mktemp("skies"), 6, config=CROWDED)
    return np.stack([read_fits_image(p).data[::2, ::2] for p in paths]).astype(np.float64)


def test_identical_sets_give_zero_for_every_distance(skies: np.ndarray) -> None:
    thresholds = M.minkowski_thresholds(skies)
    stats = M.set_statistics(skies, thresholds)
    same = M.compare_statistics(M.set_statistics(skies.copy(), thresholds), stats)
    distances = [k for k in same if k.endswith(("_w1", "_dex", "_rel")) or k.startswith("minkowski_")]
    assert len(distances) >= 12
    for key in distances:
        assert same[key] == 0.0, key
    assert stats.counts.mean() > 0, "the made skies hold point sources"


def test_skies_differ_from_noise_in_every_image_metric(skies: np.ndarray) -> None:
    """White noise of the set's mean and spread is far from the skies in every metric, and two such noise sets
    are close to each other (the distances measure the skies' structure, not the draw)."""
    thresholds = M.minkowski_thresholds(skies)
    stats = M.set_statistics(skies, thresholds)
    rng = np.random.default_rng(7)
    noise, other = rng.normal(skies.mean(), skies.std(), size=(2, *skies.shape))
    diff = M.compare_statistics(M.set_statistics(noise, thresholds), stats)
    between = M.compare_statistics(M.set_statistics(noise, thresholds), M.set_statistics(other, thresholds))
    for key in ("pixel_w1", "spectrum_dex", "source_count_rel", "gini_w1", "minkowski_euler"):
        assert diff[key] > 0.05, key
    for key in ("pixel_w1", "spectrum_dex", "gini_w1", "minkowski_euler"):  # no source in either noise set
        assert diff[key] > 3 * between[key], (key, diff[key], between[key])
    assert set(M.METRIC_DOCS) >= {"pixel_w1", "spectrum_dex", "gini_w1", "minkowski_euler", "domain_separation"}
    assert all(("lower" in doc) or ("higher" in doc) or ("closer" in doc) or ("compare" in doc)
               for doc in M.METRIC_DOCS.values())
