"""Simulated photon-counts maps (ood_core.base_model.counts_skies) and the counts metrics (evaluation/counts.py).

Issue 27: the generators are seeded and stay in range; the metrics tell counts from what only looks like them
(Gaussian fields, fractional expectations, blurred maps, maps without sources, maps four times too faint), and
do not tell held-out maps of the same sky from the shots.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from astropy.io import fits
from scipy.ndimage import gaussian_filter

from ood_core.base_model.counts_skies import CountsSkyConfig, make_counts_map, write_counts_maps
from ood_core.errors import ConfigurationError
from ood_core.evaluation.counts import (
    SignificanceConfig,
    compare_counts,
    count_sources,
    counts_pmf,
    counts_statistics,
    is_counts_data,
    significance_map,
)
from ood_core.evaluation.evaluation_report import format_table
from ood_core.evaluation.loading import ImageSet
from ood_core.evaluation.scoring import score_sets, table_rows
from ood_core.io.fits import read_fits_image


def test_maps_are_seeded_integer_counts_in_the_asked_range() -> None:
    first, again, other = make_counts_map(seed=3), make_counts_map(seed=3), make_counts_map(seed=4)
    assert np.array_equal(first.counts, again.counts) and np.array_equal(first.expected, again.expected)
    assert not np.array_equal(first.counts, other.counts)
    config = CountsSkyConfig()
    for seed in range(12):
        sky = make_counts_map(config, seed)
        assert sky.counts.dtype == np.int32 and sky.counts.min() >= 0
        # The expectation's total is drawn in range; the Poisson total scatters by a few sqrt(N) around it.
        assert config.total_counts[0] <= sky.expected.sum() <= config.total_counts[1]
        assert abs(sky.counts.sum() - sky.expected.sum()) < 5 * math.sqrt(sky.expected.sum())
        assert 0.7 < np.mean(sky.counts == 0) < 0.92  # mostly empty pixels, as a GeV counts map
        ty, tx = sky.target_pixel
        assert abs(ty - 63.5) <= 0.2 / 0.04 + 1e-9 and abs(tx - 63.5) <= 0.2 / 0.04 + 1e-9


def test_acceptance_falls_toward_the_edges() -> None:
    expected = np.mean([make_counts_map(seed=s).expected for s in range(8)], axis=0)
    centre, corner = expected[48:80, 48:80].mean(), expected[:16, :16].mean()
    assert corner < 0.5 * centre


@pytest.mark.parametrize("field, bounds", [("total_counts", (5.0, 1.0)), ("source_share", (0.2, 1.0)),
                                            ("n_field_sources", (-1, 2))])
def test_config_refuses_impossible_ranges(field: str, bounds: tuple[float, float]) -> None:
    with pytest.raises(ConfigurationError, match=field):
        CountsSkyConfig(**{field: bounds})  # type: ignore[arg-type]


def test_written_maps_are_integer_fits_in_count_units_read_back_exactly(tmp_path) -> None:
    paths = write_counts_maps(tmp_path, n=3, seed=1)
    assert [p.name for p in paths] == ["counts_1_00.fits", "counts_1_01.fits", "counts_1_02.fits"]
    for path in paths:
        with fits.open(path) as hdul:
            header, stored = hdul[0].header, hdul[0].data
            assert header["BUNIT"] == "count" and stored.dtype.kind == "i"
            assert header["CTYPE1"] == "GLON-CAR" and abs(header["CDELT2"] - 0.04) < 1e-12
        image = read_fits_image(path)
        assert np.array_equal(image.data, stored.astype(np.float32)) and not image.mask.any()
        assert is_counts_data(image.data)
    again = write_counts_maps(tmp_path / "again", n=3, seed=1)
    assert all(fits.getdata(a).tobytes() == fits.getdata(b).tobytes() for a, b in zip(paths, again, strict=True))


@pytest.mark.parametrize("values, expected", [
    ([[0, 1], [2, 5]], True), ([[0, 0], [0, 0]], False), ([[0, 1.5], [2, 3]], False), ([[0, -1], [2, 3]], False),
    ([[np.nan, 1], [0, 2]], True),
])
def test_is_counts_data(values: list[list[float]], expected: bool) -> None:
    assert is_counts_data(np.array(values, dtype=np.float64)) is expected


def test_significance_is_li_and_ma_on_a_disc_against_its_ring() -> None:
    config = SignificanceConfig(on_radius=3.0, off_inner=6.0, off_outer=12.0)
    image = np.zeros((64, 64))
    image[32, 32] = 40.0  # 40 photons in the on disc of the centre
    image[32, 32 + 8] = 10.0  # 10 photons in its ring
    sig = significance_map(image, config)
    # Li & Ma (1983) eq. 17 by hand, with alpha = on area / off area in pixels
    y, x = np.mgrid[-12:13, -12:13]
    r = np.hypot(y, x)
    alpha = np.sum(r <= 3.0) / np.sum((r <= 12.0) & (r > 6.0))
    n_on, n_off = 40.0, 10.0
    li_ma = math.sqrt(2.0 * (n_on * math.log((1 + alpha) / alpha * n_on / (n_on + n_off))
                             + n_off * math.log((1 + alpha) * n_off / (n_on + n_off))))
    assert sig[32, 32] == pytest.approx(li_ma, rel=1e-9)
    assert sig[0, 0] == 0.0  # no counts anywhere near: no excess


def test_sources_are_found_on_the_significance_map_and_not_in_flat_noise() -> None:
    rng = np.random.default_rng(0)
    flat = rng.poisson(0.3, size=(20, 128, 128)).astype(np.float64)
    assert sum(count_sources(image) for image in flat) <= 1  # 5 sigma over 20 maps of pure background
    yy, xx = np.mgrid[:128, :128]
    source = 60.0 * np.exp(-0.5 * ((yy - 40) ** 2 + (xx - 90) ** 2) / 2.5**2) / (2 * math.pi * 2.5**2)
    with_source = rng.poisson(0.3 + source).astype(np.float64)
    assert count_sources(with_source) == 1
    sig = significance_map(with_source)
    assert np.unravel_index(np.argmax(sig), sig.shape) in {(y, x) for y in range(38, 43) for x in range(88, 93)}


def test_counts_pmf_bins_and_refuses_empty() -> None:
    pmf = counts_pmf(np.array([[0, 0, 1, 9], [2, 0, np.nan, -0.2]]))
    assert pmf.shape == (8,) and pmf.sum() == pytest.approx(1.0)
    assert pmf[0] == pytest.approx(4 / 7) and pmf[7] == pytest.approx(1 / 7)
    with pytest.raises(ConfigurationError, match="no finite pixel"):
        counts_pmf(np.full((2, 2), np.nan))


def _held_out(seeds: range) -> list:
    return [make_counts_map(seed=s) for s in seeds]


def _sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    held = _held_out(range(100, 108))
    return {
        "held out": np.stack([m.counts for m in held]).astype(np.float64),
        "expectation (not counts)": np.stack([m.expected for m in held]),
        "gaussian field": np.stack([m.expected + rng.normal(0.0, np.sqrt(m.expected)) for m in held]),
        "blurred": np.stack([gaussian_filter(m.counts.astype(np.float64), 3.0) for m in held]),
        "flat, no sources": np.stack([rng.poisson(np.full(m.counts.shape, m.counts.mean())) for m in held]
                                     ).astype(np.float64),
        "4x too faint": np.stack([rng.poisson(m.expected / 4.0) for m in held]).astype(np.float64),
    }


@pytest.fixture(scope="module")
def compared() -> dict[str, dict[str, float]]:
    shots = counts_statistics(np.stack([m.counts for m in _held_out(range(10))]).astype(np.float64))
    return {name: compare_counts(counts_statistics(images), shots) for name, images in _sets().items()}


# One row per set: the metrics that must call it like the shots (held out) or tell it apart.
CASES = [
    ("held out", lambda m: m["counts_not_integer"] == 0 and m["counts_pmf_tv"] < 0.04 and m["counts_total_dex"]
     < 0.15 and m["counts_profile_dex"] < 0.15 and m["counts_sources_w1"] < 1.5),
    ("expectation (not counts)", lambda m: m["counts_not_integer"] > 0.9),
    ("gaussian field", lambda m: m["counts_not_integer"] > 0.9),
    ("blurred", lambda m: m["counts_not_integer"] > 0.9 and m["counts_sources_w1"] > 1.5),
    ("flat, no sources", lambda m: m["counts_sources_mean"] == 0 and m["counts_profile_dex"] > 0.3),
    ("4x too faint", lambda m: m["counts_total_dex"] > 0.45 and m["counts_profile_dex"] > 0.3),
]


@pytest.mark.parametrize("name, passes", CASES, ids=[c[0] for c in CASES])
def test_counts_metrics_tell_counts_maps_from_lookalikes(compared, name, passes) -> None:
    assert passes(compared[name]), compared[name]


def _image_set(name: str, maps: np.ndarray) -> ImageSet:
    model = torch.asinh(torch.from_numpy(maps).float())[:, None] / 3.0 - 1.0  # any fixed map to model space
    return ImageSet(name, model, maps.astype(np.float32))


def test_evaluation_scores_counts_runs_with_the_counts_metrics_and_table_columns() -> None:
    config = CountsSkyConfig(size=64, pixel_scale_deg=0.08)
    reference = _image_set("reference", np.stack([make_counts_map(config, s).counts for s in range(6)]))
    method = _image_set("method", np.stack([make_counts_map(config, s).expected for s in range(10, 16)]))
    inputs = _image_set("inputs", np.stack([make_counts_map(config, s).counts for s in range(20, 26)]))
    scores = score_sets({"method": method, "inputs": inputs}, reference, inputs.model, reference.model, 2.0)
    assert scores.reference["counts"] is True
    assert scores.per_set["method"]["counts_not_integer"] == 1.0 and scores.per_set["inputs"]["counts_not_integer"] == 0
    rows = table_rows(scores.per_set)
    assert all("counts_sources_w1" in row for row in rows)
    table = format_table({"table": rows, "sets": scores.per_set})
    assert "Li&Ma src" in table.splitlines()[0] and "not counts" in table.splitlines()[0]
    # Not counts (a fractional reference): the counts metrics and columns stay out.
    fractional = _image_set("reference", reference.physical.astype(np.float64) + 0.5)
    plain = score_sets({"inputs": inputs}, fractional, inputs.model, reference.model, 2.0)
    assert plain.reference["counts"] is False and "counts_pmf_tv" not in plain.per_set["inputs"]
    assert "Li&Ma" not in format_table({"table": table_rows(plain.per_set), "sets": plain.per_set})
