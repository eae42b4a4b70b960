"""Novelty on real GLIMPSE cutouts: copies of inputs are flagged, unseen cutouts of the same field are not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.nddata import block_reduce
from astropy.visualization import AsinhStretch, PercentileInterval

from ood_core.errors import ConfigurationError
from ood_core.method.novelty import (
    NoveltyRule,
    input_nearest_neighbour_distances,
    nearest_input_distance,
)

N_INPUTS = 6


@pytest.fixture(scope="module")
def fits_dir() -> Path:
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fits"
    if not path.is_dir():
        pytest.skip(f"real FITS test data not found at {path}")
    return path


@pytest.fixture(scope="module")
def glimpse(fits_dir: Path) -> torch.Tensor:
    """All 14 GLIMPSE 128x128 cutouts, block-averaged to 32x32, one asinh normalization, in [-1, 1]."""
    files = sorted((fits_dir / "cutouts_128").glob("glimpse_*.fits"))
    assert len(files) >= 10
    images = np.stack([block_reduce(fits.getdata(f).astype(np.float64), 4, func=np.mean) for f in files])
    scaled = AsinhStretch()(PercentileInterval(99.5)(images)) * 2.0 - 1.0
    return torch.from_numpy(scaled[:, None]).float()


def test_distances_match_a_naive_loop(glimpse: torch.Tensor) -> None:
    inputs, samples = glimpse[:N_INPUTS], glimpse[N_INPUTS:]
    distance, index = nearest_input_distance(samples, inputs)
    d = inputs[0].numel()
    for s in range(samples.shape[0]):
        naive = [np.linalg.norm((samples[s].double() - x.double()).numpy()) / math.sqrt(d) for x in inputs]
        assert distance[s].item() == pytest.approx(min(naive), rel=1e-12)
        assert index[s].item() == int(np.argmin(naive))
    nn = input_nearest_neighbour_distances(inputs)
    for i in range(N_INPUTS):
        others = [np.linalg.norm((inputs[i].double() - inputs[j].double()).numpy()) / math.sqrt(d)
                  for j in range(N_INPUTS) if j != i]
        assert nn[i].item() == pytest.approx(min(others), rel=1e-12)


def test_rule_flags_copies_and_passes_unseen_cutouts(glimpse: torch.Tensor) -> None:
    inputs, unseen = glimpse[:N_INPUTS], glimpse[N_INPUTS:]
    rule = NoveltyRule(factor=0.5)
    threshold = rule.threshold(inputs)
    assert threshold == pytest.approx(0.5 * float(input_nearest_neighbour_distances(inputs).median()))
    assert 0.05 < threshold < 0.5  # RMS units of [-1, 1] images

    noise = 0.01 * torch.randn(inputs[3].shape, generator=torch.Generator().manual_seed(0))
    samples = torch.cat([inputs[3:4], inputs[1:2] + noise, unseen])
    result = rule.evaluate(samples, inputs)
    assert result.distance[0].item() == 0.0 and result.index[0].item() == 3
    assert result.index[1].item() == 1 and result.distance[1].item() < 0.02
    assert result.is_near_copy[:2].tolist() == [True, True]
    # New cutouts of the same field are as far from the inputs as the inputs are from each other.
    assert not result.is_near_copy[2:].any()
    assert bool((result.distance[2:] > threshold).all())

    summary = result.to_dict()
    assert summary["n_near_copies"] == 2 and summary["n_samples"] == samples.shape[0]
    json.dumps(summary, allow_nan=False)
    words = rule.to_dict()
    assert "median" in words["rule"] and words["factor"] == 0.5


def test_bad_calls_raise(glimpse: torch.Tensor) -> None:
    with pytest.raises(ConfigurationError):
        NoveltyRule(factor=-1.0)
    with pytest.raises(ConfigurationError):
        input_nearest_neighbour_distances(glimpse[:1])
    with pytest.raises(ConfigurationError):
        nearest_input_distance(glimpse[:2, :, :16], glimpse[:3])
