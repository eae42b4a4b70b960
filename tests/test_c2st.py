"""The C2ST tells real skies from textures: table-driven on real cutouts, with the shipped model's N(0, I) samples.

For two dev sources (GLIMPSE: point sources on noise; Horsehead: diffuse emission) all cutouts go through the
pipeline's ingest (the shipped one-channel model's resolution, one normalization) and back to physical units,
split as a run's calibration splits its shots. Held-out real cutouts must not be told from the shots; flips of
the shots are not told apart either but are copies (the novelty rule); the shipped model's N(0, I) samples,
white noise, heavily blurred shots and (where there are compact sources) shots with their sources removed must
be told apart. ``bench/c2st_table.py`` measures the same table on every dev source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from ood_core.calibration import split_shots
from ood_core.errors import ConfigurationError
from ood_core.evaluation import controls
from ood_core.evaluation.baselines import in_domain_samples
from ood_core.evaluation.c2st import DISTINGUISHABLE_ACCURACY, balanced_interval, c2st, clopper_pearson
from ood_core.evaluation.realism import realism_record
from ood_core.evaluation.texture import Standardization, feature_names, tile_features, tiles
from ood_core.method.dihedral import dihedral
from ood_core.method.model import load_model
from ood_core.method.normalization import model_to_physical
from ood_core.method.novelty import NoveltyRule
from ood_core.pipeline import PipelineParameters, ingest
from ood_core.pipeline.config import SHIPPED_MODELS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCES = ("glimpse", "horsehead")


@pytest.fixture(scope="module")
def shipped_mono() -> Any:
    """The pipeline's default model for single-band inputs (models/mono64 today), as a run would pick it."""
    return load_model(SHIPPED_MODELS[1], device="cpu")


@pytest.fixture(scope="module")
def n01(shipped_mono: Any) -> torch.Tensor:
    """The shipped model's own samples from N(0, I): 8 images, 8 DDIM steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return in_domain_samples(shipped_mono, 8, 8, seed=0, batch_size=8)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cutouts(fits_dir: Path, shipped_mono: Any) -> dict[str, dict[str, Any]]:
    """Per source: the kept shots and the held-out cutouts (model space and physical) and the normalization."""
    out = {}
    for source in SOURCES:
        files = [str(p) for p in sorted((fits_dir / "cutouts_128").glob(f"{source}_*.fits"))]
        params = PipelineParameters(inputs=files, store="unused.zarr", device="cpu")
        batch = ingest(params, shipped_mono.resolution, shipped_mono.channels).batch
        kept, held = split_shots(len(files), 0)
        physical = model_to_physical(batch.images, batch.params, np.arange(len(files)))
        out[source] = {"model": torch.from_numpy(batch.images), "physical": physical, "kept": kept, "held": held,
                       "params": batch.params}
    return out


def _flips(data: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray]:
    shots = data["model"][data["kept"]]
    flipped = torch.cat([dihedral(shots, k) for k in range(1, 8)])
    return flipped, np.tile(np.arange(len(data["kept"])), 7)


def _physical(data: dict[str, Any], images: torch.Tensor) -> np.ndarray:
    return model_to_physical(images.numpy(), data["params"][:1], np.zeros(len(images), np.int64))


Candidate = Callable[[dict[str, Any], torch.Tensor], tuple[np.ndarray, np.ndarray | None]]
CASES: list[tuple[str, Candidate, str]] = [
    ("flips", lambda d, _: (_physical(d, _flips(d)[0]), _flips(d)[1]), "indistinguishable"),
    ("n01", lambda d, s: (_physical(d, s), None), "caught"),
    ("white_noise", lambda d, _: (controls.white_noise(d["physical"][d["kept"]], 1), None), "caught"),
    ("blurred", lambda d, _: (controls.blurred(d["physical"][d["kept"]], 2.0), None), "caught"),
]


@pytest.mark.parametrize("source", SOURCES)
def test_held_out_real_cutouts_are_not_told_from_the_shots(cutouts: dict[str, dict[str, Any]], source: str) -> None:
    data = cutouts[source]
    result = c2st(data["physical"][data["kept"]], data["physical"][data["held"]], seed=0)
    assert not result.distinguishable and result.accuracy < DISTINGUISHABLE_ACCURACY, result
    assert result.ci_low < 0.5 < result.ci_high


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[case[0] for case in CASES])
def test_candidates_against_held_out_real_cutouts(cutouts: dict[str, dict[str, Any]], n01: torch.Tensor,
                                                  source: str, name: str, make: Candidate, expected: str) -> None:
    """The table: each candidate set against the held-out real cutouts."""
    data = cutouts[source]
    candidate, parents = make(data, n01)
    result = c2st(data["physical"][data["held"]], candidate, seed=0, candidate_parents=parents)
    if expected == "caught":
        assert result.accuracy >= 0.9 and result.distinguishable, (name, result)
        assert result.tile_accuracy >= 0.85, (name, result)
    else:
        assert result.accuracy < DISTINGUISHABLE_ACCURACY, (name, result)


def test_sources_removed_are_caught_where_there_are_point_sources(cutouts: dict[str, dict[str, Any]]) -> None:
    """GLIMPSE is a field of point sources: without its compact sources it is told apart (the Horsehead cutouts
    are mostly diffuse emission, where removing compact sources changes little: not asserted)."""
    data = cutouts["glimpse"]
    shots = data["physical"][data["kept"]]
    removed = controls.sources_removed(shots, 0)
    assert np.mean(removed != shots) > 0.02  # sources were there and went
    result = c2st(data["physical"][data["held"]], removed, seed=0)
    assert result.accuracy >= 0.9 and result.distinguishable, result


def test_flips_are_copies_for_the_novelty_rule(cutouts: dict[str, dict[str, Any]]) -> None:
    """What the C2ST cannot see (a flipped shot looks real), the novelty rule does: every flip is a near-copy."""
    data = cutouts["glimpse"]
    flipped, _ = _flips(data)
    copies = NoveltyRule(factor=0.5).evaluate(flipped, data["model"][data["kept"]]).is_near_copy
    assert bool(copies.all())


def test_flips_without_parents_leak_through_the_folds(cutouts: dict[str, dict[str, Any]]) -> None:
    """Without ``candidate_parents`` flips of one shot sit in train and test at once and the classifier learns
    to recognise the shots: the grouped test is lower."""
    data = cutouts["glimpse"]
    flipped, parents = _flips(data)
    physical, held = _physical(data, flipped), data["physical"][data["held"]]
    grouped = c2st(held, physical, seed=0, candidate_parents=parents)
    leaky = c2st(held, physical, seed=0)
    assert leaky.tile_accuracy > grouped.tile_accuracy, (leaky, grouped)


def test_clopper_pearson_matches_scipy_and_the_balanced_interval_contains_the_accuracy() -> None:
    for hits, n in ((0, 5), (3, 4), (10, 10), (7, 12)):
        expected = binomtest(hits, n).proportion_ci(confidence_level=0.9, method="exact")
        assert clopper_pearson(hits, n, 0.9) == pytest.approx((expected.low, expected.high), abs=1e-9)
    low, high = balanced_interval((4, 4), (16, 16))
    assert 0.5 < low < 1.0 and high == 1.0
    low, high = balanced_interval((1, 3), (5, 6))
    assert low < (1 / 3 + 5 / 6) / 2 < high


def test_tiles_and_features_shapes() -> None:
    images = np.random.default_rng(0).normal(size=(3, 64, 64))
    cut, parents = tiles(images, 32)
    assert cut.shape == (12, 32, 32) and parents.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_array_equal(cut[5], images[1, :32, 32:])
    features, parents = tile_features(images, Standardization.of(images))
    assert features.shape == (12, len(feature_names())) and np.isfinite(features).all()
    with pytest.raises(ConfigurationError, match="at least 2 images"):
        c2st(images[:1], images)


def test_realism_record_says_it_plainly(cutouts: dict[str, dict[str, Any]], n01: torch.Tensor) -> None:
    """What the end of a run records: the shipped model's N(0, I) samples against the GLIMPSE shots are
    DISTINGUISHABLE; held-out cutouts against the shots are not; too few images: not tested."""
    data = cutouts["glimpse"]
    shots = data["physical"][data["kept"]]
    told = realism_record(shots, _physical(data, n01))
    assert told["distinguishable"] is True and told["line"].startswith("DISTINGUISHABLE from real images")
    assert (told["n_samples"], told["n_shots"]) == (len(n01), len(data["kept"]))
    calm = realism_record(shots, data["physical"][data["held"]])
    assert calm["distinguishable"] is False and calm["line"].startswith("not distinguishable")
    assert realism_record(shots, shots[:1])["distinguishable"] is None
