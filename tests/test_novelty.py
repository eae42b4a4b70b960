"""Novelty on project-made skies (tests/made_fits.py, so it runs without the dev set): copies of inputs are
flagged, also when flipped or rotated by a right angle; unseen skies made the same way are not."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest
import torch
from astropy.io import fits
from astropy.nddata import block_reduce
from astropy.visualization import AsinhStretch, PercentileInterval
from made_fits import write_skies

from ood_core.errors import ConfigurationError
from ood_core.method.dihedral import TRANSFORM_NAMES, dihedral, shape_preserving
from ood_core.method.novelty import (
    InputTransforms,
    NoveltyRule,
    dihedral_distances,
    input_nearest_neighbour_distances,
    nearest_input_distance,
    rms_distances,
)

N_INPUTS = 6


@pytest.fixture(scope="module")
def skies(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """14 made 128x128 skies (as many as the dev set's GLIMPSE cutouts), block-averaged to 32x32, one asinh
    normalization, in [-1, 1]."""
    files = write_skies(tmp_path_factory.mktemp("skies"), 14)
    images = np.stack([block_reduce(fits.getdata(f).astype(np.float64), 4, func=np.mean) for f in files])
    scaled = AsinhStretch()(PercentileInterval(99.5)(images)) * 2.0 - 1.0
    return torch.from_numpy(scaled[:, None]).float()


def numpy_transform(image: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float32]:
    """Transform k written independently of ``dihedral``: k % 4 quarter turns, then mirror x if k >= 4."""
    out = np.rot90(image, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if k >= 4 else out)


def naive_distance(a: torch.Tensor, b: npt.NDArray[np.float32]) -> float:
    return float(np.linalg.norm(a.double().numpy() - b.astype(np.float64)) / math.sqrt(a.numel()))


def test_distances_match_a_naive_loop_over_samples_inputs_and_transforms(skies: torch.Tensor) -> None:
    inputs, samples = skies[:N_INPUTS], skies[N_INPUTS:]
    distance, index, transform = nearest_input_distance(samples, inputs)
    plain = rms_distances(samples, inputs).min(dim=1).values
    for s in range(samples.shape[0]):
        naive = np.array([[naive_distance(samples[s], numpy_transform(x.numpy(), k)) for k in range(8)]
                          for x in inputs])
        assert distance[s].item() == pytest.approx(naive.min(), rel=1e-12)
        assert naive[index[s].item(), transform[s].item()] == pytest.approx(naive.min(), rel=1e-12)
        assert distance[s].item() <= plain[s].item()
    # The unseen cutouts do come nearer some input's flip/rotation than the input itself (real data).
    assert bool((transform != 0).any())
    nn = input_nearest_neighbour_distances(inputs)
    for i in range(N_INPUTS):
        others = [naive_distance(inputs[i], numpy_transform(inputs[j].numpy(), k))
                  for j in range(N_INPUTS) if j != i for k in range(8)]
        assert nn[i].item() == pytest.approx(min(others), rel=1e-12)


@pytest.mark.parametrize("k", range(8), ids=TRANSFORM_NAMES)
@pytest.mark.parametrize("noise", [0.0, 0.01], ids=["exact", "noisy"])
def test_every_flip_and_rotation_of_an_input_is_a_near_copy(skies: torch.Tensor, k: int, noise: float) -> None:
    inputs, unseen = skies[:N_INPUTS], skies[N_INPUTS:]
    rule = NoveltyRule(factor=0.5)
    threshold = rule.threshold(inputs)
    assert 0.05 < threshold < 0.5  # RMS units of [-1, 1] images
    jitter = noise * torch.randn(inputs[2].shape, generator=torch.Generator().manual_seed(k))
    copy = torch.from_numpy(numpy_transform(inputs[2].numpy(), k)) + jitter
    result = rule.evaluate(torch.cat([copy[None], unseen]), inputs)
    assert result.index[0].item() == 2 and result.transform[0].item() == k
    if noise == 0.0:
        assert result.distance[0].item() == 0.0
    else:
        assert result.distance[0].item() == pytest.approx(noise, rel=0.1)
    assert bool(result.is_near_copy[0])
    # A genuinely different image (new cutouts of the same field) is not a near-copy.
    assert not result.is_near_copy[1:].any()
    assert bool((result.distance[1:] > threshold).all())


@pytest.mark.parametrize("k", [0, 2, 4, 6])
def test_non_square_tiles_use_the_four_shape_keeping_transforms(skies: torch.Tensor, k: int) -> None:
    tiles = skies[:, :, :, 4:28]  # 32 x 24
    assert shape_preserving(32, 24) == (0, 2, 4, 6) and shape_preserving(32, 32) == tuple(range(8))
    inputs, unseen = tiles[:N_INPUTS], tiles[N_INPUTS:]
    copy = torch.from_numpy(numpy_transform(inputs[4].numpy(), k))
    distances, transforms = dihedral_distances(torch.cat([copy[None], unseen]), inputs)
    assert distances.shape == (1 + unseen.shape[0], N_INPUTS)
    assert set(transforms.unique().tolist()) <= {0, 2, 4, 6}
    result = NoveltyRule().evaluate(torch.cat([copy[None], unseen]), inputs)
    assert result.distance[0].item() == 0.0 and result.index[0].item() == 4 and result.transform[0].item() == k
    assert result.is_near_copy.tolist() == [True] + [False] * unseen.shape[0]


def test_dihedral_is_the_group_of_the_square(skies: torch.Tensor) -> None:
    x = skies[:2]
    views = [dihedral(x, k) for k in range(8)]
    for k, view in enumerate(views):
        np.testing.assert_array_equal(view.numpy(), numpy_transform(x.numpy(), k))
        assert all(not torch.equal(view, other) for other in views[k + 1 :])
    assert torch.equal(dihedral(dihedral(x, 1), 3), x) and torch.equal(dihedral(dihedral(x, 5), 5), x)
    with pytest.raises(ConfigurationError):
        dihedral(x, 8)


def test_summary_and_provenance_say_novelty_is_up_to_d4(skies: torch.Tensor) -> None:
    inputs = skies[:N_INPUTS]
    result = NoveltyRule(factor=0.5).evaluate(torch.cat([dihedral(inputs[:2], 5), skies[N_INPUTS:]]), inputs)
    summary = result.to_dict()
    assert summary["n_near_copies"] == 2 and summary["n_samples"] == 2 + skies.shape[0] - N_INPUTS
    json.dumps(summary, allow_nan=False)
    words = NoveltyRule(factor=0.5).to_dict()
    assert words["invariance"] == "D4" and words["transforms"] == list(TRANSFORM_NAMES)
    assert "median" in words["rule"] and "rotations" in words["rule"] and words["factor"] == 0.5
    json.dumps(words, allow_nan=False)


def test_bad_calls_raise(skies: torch.Tensor) -> None:
    with pytest.raises(ConfigurationError):
        NoveltyRule(factor=-1.0)
    with pytest.raises(ConfigurationError):
        input_nearest_neighbour_distances(skies[:1])
    with pytest.raises(ConfigurationError, match="one shape"):
        nearest_input_distance(skies[:2, :, :16], skies[:3])
    with pytest.raises(ConfigurationError, match="one shape"):
        nearest_input_distance(skies[:2].reshape(2, -1), skies[:3].reshape(3, -1))
    with pytest.raises(ConfigurationError):
        nearest_input_distance(skies[:2], skies[:0])


@pytest.mark.parametrize("shape", [(12, 1, 64, 64), (5, 3, 16, 16), (4, 1, 8, 12)])
def test_prepared_inputs_find_the_nearest_input_bit_for_bit(shape: tuple[int, ...]) -> None:
    """InputTransforms.nearest (bounded products, direct distances for the few pairs that can be nearest) gives what
    nearest_input_distance gives: the same float64 bits, the same input and transform, ties included (a duplicated
    input, an input symmetric under a flip, exact copies, near-copies, blends, NaN)."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(shape, generator=generator) * 2 - 1
    inputs[1] = inputs[0]  # a tie across inputs
    half = torch.rand(shape[1:], generator=generator)
    inputs[2] = (half + half.flip(-1)) / 2  # a tie across transforms
    kinds = 8 if shape[-1] == shape[-2] else 4
    copies = torch.stack([dihedral(inputs[i % shape[0]], (i * 3 % kinds) * (8 // kinds)) for i in range(40)])
    noise = torch.rand((300, *shape[1:]), generator=generator) * 2 - 1
    near = copies + 1e-7 * torch.randn(copies.shape, generator=generator)
    with_nan = noise[:5].clone()
    with_nan[2, 0, 0, 0] = float("nan")
    prepared = InputTransforms(inputs)
    for samples in (noise, copies, near, 0.5 * noise[:40] + 0.5 * copies, torch.cat([noise, copies]), with_nan):
        got, expected = prepared.nearest(samples), nearest_input_distance(samples, inputs)
        for a, b in zip(got, expected, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b) or ((a.isnan() == b.isnan()).all() and torch.equal(a[~a.isnan()], b[~b.isnan()]))
    rule = NoveltyRule(factor=0.5)
    a, b = rule.evaluate(noise, inputs), rule.prepared(inputs).evaluate(noise)
    assert a.threshold == b.threshold and torch.equal(a.is_near_copy, b.is_near_copy)
    assert torch.equal(a.distance, b.distance) and torch.equal(a.index, b.index)
    assert torch.equal(a.transform, b.transform)
