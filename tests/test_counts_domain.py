"""Photon-counts domains (ood_core/method/counts_domain.py) and the calibration's counts scores (issue 27).

A run decides once, on its resized inputs, whether they are photon counts; the calibration then ranks settings and
words its verdict on the counts metrics. One row per rule of the module, and a check that the counts scores tell
the shots' own kind from a Gaussian look-alike where the pixel scores cannot.
"""

from __future__ import annotations

import numpy as np
import pytest

from ood_cli.main import _calibration_summary
from ood_core.base_model.counts_skies import make_counts_map, write_counts_maps
from ood_core.calibration.scores import COUNTS_FIDELITY, FIDELITY, HeldOut, fidelity, rank_sum, verdict
from ood_core.errors import ConfigurationError
from ood_core.io.fits import read_fits_image
from ood_core.method.counts_domain import counts_domain, is_photon_count_unit, poisson_draws
from ood_core.method.normalization import prepare_batch
from ood_core.pipeline import PipelineParameters, run_in_process
from ood_core.pipeline.compatibility import frame_levels, level_warnings
from ood_core.store import open_run

SPARSE = np.array([[0, 0, 1], [0, 2, 0], [0, 0, 0]], dtype=np.float64)
BIASED = np.array([[512, 514, 530], [511, 600, 512], [513, 512, 515]], dtype=np.float64)
FRACTIONAL = np.array([[0.0, 0.5, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("bunit, expected", [
    ("count", True), ("counts", True), ("ct", True), ("photons", True), ("ph", True), ("ct/pix", True),
    ("ct/s", False), ("10**(-6)counts/s", False), ("adu", False), ("DN", False), ("electron", False),
    ("MJy/sr", False), ("nanomaggy", False), ("", False), ("not a unit", False),
])
def test_photon_count_units(bunit: str, expected: bool) -> None:
    assert is_photon_count_unit(bunit) is expected


@pytest.mark.parametrize("planes, bunits, counts, said", [
    ([SPARSE, SPARSE], ["count", "count"], True, "photon counts"),
    ([SPARSE], ["photons"], True, "photon counts"),
    ([SPARSE], ["adu"], False, "not a photon count"),  # a detector unit: whole numbers, not photons
    ([SPARSE, SPARSE], ["count", "MJy/sr"], False, "not a photon count"),
    ([SPARSE], [""], True, "zero pixels"),  # no unit: sparse whole numbers are counts
    ([BIASED], [""], False, "an integer frame"),  # no unit, whole numbers on a bias level: not photons
    ([FRACTIONAL], [""], False, "not all non-negative whole numbers"),
    ([-SPARSE], [""], False, "not all non-negative whole numbers"),
])
def test_counts_domain_rules(planes: list[np.ndarray], bunits: list[str], counts: bool, said: str) -> None:
    decision = counts_domain(planes, bunits)
    assert decision.counts is counts and said in decision.reason
    assert decision.record() == {"counts": counts, "reason": decision.reason}


def test_a_count_unit_over_fractional_values_is_continuous_and_says_why() -> None:
    decision = counts_domain([FRACTIONAL], ["count"])
    assert decision.counts is False and "smoothed or corrected counts" in decision.reason


def test_batches_of_counts_maps_are_a_counts_domain_and_block_sums_stay_counts(tmp_path) -> None:
    """128-px maps in BUNIT 'count' resized to 64 px are block sums: still whole numbers, still counts."""
    images = [read_fits_image(p) for p in write_counts_maps(tmp_path, n=3, seed=2)]
    batch = prepare_batch(images, resolution=64, channels=1)
    assert batch.counts.counts and "photon counts" in batch.counts.reason
    assert batch.resampling[0].rule == "sum"


def _maps(n: int, seed: int) -> np.ndarray:
    return np.stack([make_counts_map(seed=seed + k).counts for k in range(n)]).astype(np.float64)


def test_counts_calibration_ranks_on_the_counts_scores_and_says_so() -> None:
    """Held-out counts shots: the counts scores are computed and name the ranking; a Gaussian field with the shots'
    mean and spread (negative, fractional "photons", no acceptance, no sources) scores worse than other maps of the
    same sky on the counts per pixel, the radial profile and the sources (its total is the shots' by construction)."""
    shots = _maps(4, 0)
    held = HeldOut.of(shots + 1e-6, counts=True)  # a normalization round trip is whole counts up to float error
    assert held.names == COUNTS_FIDELITY and HeldOut.of(shots).names == FIDELITY
    same_sky = fidelity(_maps(6, 40), held)
    rng = np.random.default_rng(0)
    gaussian = fidelity(rng.normal(shots.mean(), shots.std(), size=(6, *shots.shape[1:])), held)
    for name in ("counts_pmf_tv", "counts_profile_dex", "counts_source_rel"):
        assert same_sky[name] < gaussian[name], name
    assert same_sky["counts_pmf_tv"] < 0.05 and gaussian["counts_pmf_tv"] > 0.2
    rows = [{"scores": gaussian}, {"scores": same_sky}]
    assert rank_sum(rows, COUNTS_FIDELITY)[1] < rank_sum(rows, COUNTS_FIDELITY)[0]
    said = verdict(gaussian, same_sky, None, COUNTS_FIDELITY)
    assert set(said["per_metric"]) == set(COUNTS_FIDELITY)
    assert said["per_metric"]["counts_pmf_tv"] == "worse" and "on counts per pixel" in said["line"]
    assert "Li & Ma sources" in said["line"] and "pixel distribution" not in said["line"]


def test_poisson_draws_are_whole_seeded_per_map_and_ignore_negative_expectations() -> None:
    expected = np.stack([np.full((16, 16), 0.5), np.full((16, 16), -1.0), np.full((16, 16), 3.0)])
    drawn = poisson_draws(expected, [1, 2, 3])
    assert np.array_equal(drawn, np.round(drawn)) and drawn.min() >= 0 and drawn[1].sum() == 0
    assert np.array_equal(poisson_draws(expected[2:], [3]), drawn[2:])  # map k depends on its seed alone
    assert abs(drawn[2].mean() - 3.0) < 0.5
    with pytest.raises(ConfigurationError, match="2 seeds"):
        poisson_draws(expected, [1, 2])


def test_a_counts_run_stores_whole_counts_the_same_in_any_number_of_shards(tmp_path) -> None:
    """Noise on in a counts domain is the Poisson draw: samples_physical holds non-negative whole counts, provenance
    says so, and one or two shards give the same bytes."""
    write_counts_maps(tmp_path / "maps", n=4, seed=5)
    stores = {}
    for shards in (1, 2):
        store = tmp_path / f"s{shards}.zarr"
        params = PipelineParameters(inputs=[str(tmp_path / "maps")], store=str(store), samples=5, steps=2, t0=400,
                                    reference_count=4, batch_size=2, device="cpu", seed=3, prior="ppca",
                                    noise="on", calibrate=False, candidate_budget=600, shards=shards)
        assert run_in_process(params).n_samples == 5
        stores[shards] = open_run(str(store), chunks=None)
    ds = stores[1]
    record = ds.attrs["ood_run"]
    assert record["normalization"]["counts_domain"]["counts"] is True
    assert record["noise"]["kind"] == "poisson" and record["noise"]["enabled"] is True
    physical = ds.samples_physical.values
    assert physical.min() >= 0 and np.array_equal(physical, np.round(physical))
    assert ds.samples_physical.attrs["units"] == "count"
    for name in ("samples", "samples_physical", "sample_seed"):
        np.testing.assert_array_equal(ds[name].values, stores[2][name].values, err_msg=name)


def test_the_calibration_table_prints_a_counts_domains_own_scores(capsys: pytest.CaptureFixture[str]) -> None:
    row = {"setting": {"t0": 600, "strategy": "prior", "slerp_range": None, "prior": "ppca", "noise": "on"},
           "scores": {"counts_pmf_tv": 0.123, "counts_profile_dex": 0.456, "counts_source_rel": 0.789,
                      "c2st_accuracy": 0.8, "near_copy_fraction": 0.0, "acceptance": 0.5}, "rank_sum": 4.0}
    calibration = {"enabled": True, "table": [row], "best": 0, "held_out": ["a"], "verdict": {"line": "v"},
                   "ranking": "sum of ranks over " + ", ".join(COUNTS_FIDELITY) + "; near-copies disqualify"}
    _calibration_summary({"calibration": calibration, "settings": {}})
    printed = capsys.readouterr().out
    assert "pmf TV" in printed and "Li&Ma" in printed and "W1/sd" not in printed
    assert "0.123" in printed and "0.456" in printed and "0.789" in printed


def test_sparse_counts_maps_of_one_sky_raise_no_level_warning(tmp_path) -> None:
    """Sigma clipping measures no noise on maps that are mostly zeros: that is not a level mismatch."""
    images = [read_fits_image(p) for p in write_counts_maps(tmp_path, n=6, seed=0)]
    levels = [frame_levels(image) for image in images]
    assert any(lv.noise == 0 for lv in levels)
    assert level_warnings(levels) == []
