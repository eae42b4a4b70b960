"""Is a sample new, or a near-copy of one of the few-shot inputs? (DESIGN section 2, "Novelty".)

Distances are RMS pixel distances, ||a - b|| / sqrt(D), in model space, so they read in the units of the
normalized images ([-1, 1]) whatever the image size. Novelty is measured up to the flips and right-angle
rotations of the inputs (``ood_core.method.dihedral``: the 8 of D4 for square tiles, the 4 that keep the
shape otherwise): the distance from a sample to an input is the smallest over that input's transforms, so a
rotated or mirrored input is a copy (distance 0), not a new image. The rule: a sample is a near-copy when its
distance to the nearest input is below ``factor`` times the median of the inputs' own nearest-neighbour
distances (measured the same way), i.e. when it sits much closer to one input than the inputs typically sit
to each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ood_core.errors import ConfigurationError
from ood_core.method.dihedral import TRANSFORM_NAMES, dihedral, shape_preserving
from ood_core.method.prior import flatten_latents

_CHUNK = 256
INVARIANCE = "D4"
"""Novelty is measured up to the flips/rotations of the dihedral group D4 (the 4 of them that keep the shape
of a non-square tile); recorded as ``novelty.invariance`` in provenance and in evaluations."""


def rms_distances(samples: Tensor, inputs: Tensor) -> Tensor:
    """(S, n) RMS distances in float64, computed directly (not via |a|^2 - 2ab + |b|^2) so copies give 0."""
    s = flatten_latents(samples)
    x = flatten_latents(inputs).to(s.device, torch.float64)
    if s.shape[1] != x.shape[1]:
        raise ConfigurationError(f"samples have D={s.shape[1]} values each, inputs D={x.shape[1]}")
    rows = [
        torch.cdist(s[i : i + _CHUNK].double(), x, compute_mode="donot_use_mm_for_euclid_dist")
        for i in range(0, s.shape[0], _CHUNK)
    ]
    distances = torch.cat(rows) if rows else torch.empty((0, x.shape[0]), dtype=torch.float64)
    return distances / math.sqrt(s.shape[1])


def dihedral_distances(samples: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """(S, n) RMS distance from each sample to each input's nearest flip/rotation, and that transform (S, n).

    Samples (S, ..., H, W) and inputs (n, ..., H, W) are images of one shape; the transforms are those that
    keep it (``dihedral.shape_preserving``). Vectorized over samples and inputs (``rms_distances``, chunked
    over samples); only the <= 8 transforms are looped over. Ties go to the lower transform index.
    """
    if samples.ndim < 3 or samples.shape[1:] != inputs.shape[1:]:
        raise ConfigurationError(
            f"novelty needs samples and inputs as images of one shape (N, [C,] H, W), got "
            f"{tuple(samples.shape)} and {tuple(inputs.shape)}"
        )
    height, width = int(inputs.shape[-2]), int(inputs.shape[-1])
    best = torch.full((samples.shape[0], inputs.shape[0]), math.inf, dtype=torch.float64, device=samples.device)
    which = torch.zeros(best.shape, dtype=torch.int64, device=samples.device)
    for k in shape_preserving(height, width):
        distance = rms_distances(samples, dihedral(inputs, k))
        closer = distance < best
        best = torch.where(closer, distance, best)
        which[closer] = k
    return best, which


def nearest_input_distance(samples: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per (S, ..., H, W) sample, up to flips/rotations of the inputs: RMS distance (S,) float64 to the
    nearest input, that input's index (S,) and the index of its transform (S,) (``dihedral.TRANSFORM_NAMES``)."""
    if inputs.ndim < 1 or inputs.shape[0] < 1:
        raise ConfigurationError("nearest_input_distance needs at least one input")
    distances, transforms = dihedral_distances(samples, inputs)
    distance, index = distances.min(dim=1)
    return distance, index, transforms.gather(1, index[:, None])[:, 0]


def input_nearest_neighbour_distances(inputs: Tensor) -> Tensor:
    """(n,) RMS distance from each input to its nearest other input, up to flips/rotations (leave-one-out)."""
    if inputs.ndim < 1 or inputs.shape[0] < 2:
        raise ConfigurationError("nearest-neighbour distances need at least 2 inputs")
    distances, _ = dihedral_distances(inputs, inputs)
    distances.fill_diagonal_(float("inf"))
    return distances.min(dim=1).values


_UNIT = 2.0**-53
"""The unit roundoff of float64."""
_PAIR_CHUNK = 64
"""Samples per bounded product in :class:`InputTransforms` (a float64 chunk stays in cache)."""


class InputTransforms:
    """The inputs' flips/rotations, flattened in float64 with their squared norms, to find many samples' nearest.

    :meth:`nearest` gives exactly what :func:`nearest_input_distance` gives, bit for bit, at a fraction of the cost:
    a float64 matrix product bounds every (sample, transformed input) squared distance within a rigorous rounding
    margin, and the direct distance (``torch.cdist`` without matrix products, as there) is computed only for the
    pairs whose bound can reach the smallest, typically one per sample. Ties resolve as there: the lowest input,
    then the lowest transform.
    """

    def __init__(self, inputs: Tensor) -> None:
        if inputs.ndim < 3 or inputs.shape[0] < 1:
            raise ConfigurationError(f"novelty needs inputs as images (n, [C,] H, W), got {tuple(inputs.shape)}")
        self.inputs = inputs
        self.transforms = shape_preserving(int(inputs.shape[-2]), int(inputs.shape[-1]))
        # rows k-major: row t * n + j is input j under transform self.transforms[t]
        self.flat = torch.cat([flatten_latents(dihedral(inputs, k)).to(torch.float64) for k in self.transforms])
        self.norm = torch.linalg.vector_norm(self.flat, dim=1)
        self.squared = self.norm**2

    def nearest(self, samples: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per (S, ...) sample: RMS distance (S,) float64 to the nearest input up to flips/rotations, the input's
        index and the transform's (as :func:`nearest_input_distance`)."""
        if samples.ndim < 3 or samples.shape[1:] != self.inputs.shape[1:]:
            raise ConfigurationError(
                f"novelty needs samples and inputs as images of one shape (N, [C,] H, W), got "
                f"{tuple(samples.shape)} and {tuple(self.inputs.shape)}"
            )
        flat = flatten_latents(samples).to(self.flat.device)
        found = [self._nearest_in(flat[start : start + _PAIR_CHUNK]) for start in range(0, flat.shape[0], _PAIR_CHUNK)]
        parts = [f for f in found if f is not None]
        if not parts or len(parts) < len(found):
            return nearest_input_distance(samples, self.inputs)  # none, or NaN / inf: the reference path, as before
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])

    def _nearest_in(self, chunk32: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """:meth:`nearest` for a few samples (cache-sized); None when one is not finite."""
        chunk = chunk32.to(torch.float64)
        dim, n = int(chunk.shape[1]), int(self.inputs.shape[0])
        chunk_norm = torch.linalg.vector_norm(chunk, dim=1)
        if not bool(torch.isfinite(chunk_norm).all()):
            return None
        gamma = 4.0 * (dim + 8) * _UNIT  # generous: every rounding of the products and of cdist's direct sum
        approx = (chunk_norm[:, None] ** 2 + self.squared[None, :]) - 2.0 * (chunk @ self.flat.T)
        margin = gamma * (chunk_norm[:, None] + self.norm[None, :]) ** 2
        best = (approx + margin).min(dim=1, keepdim=True).values
        row, column = ((approx - margin) <= best * (1.0 + gamma) / (1.0 - gamma)).nonzero(as_tuple=True)
        exact = torch.cdist(chunk.index_select(0, row)[:, None], self.flat.index_select(0, column)[:, None],
                            compute_mode="donot_use_mm_for_euclid_dist")
        distance = exact[:, 0, 0] / math.sqrt(dim)
        which = torch.tensor(self.transforms, dtype=torch.int64, device=column.device)[column // n]
        index = column % n
        # per sample the smallest (distance, input, transform): stable sorts, the last key first
        order = torch.argsort(which, stable=True)
        for key in (index, distance, row):
            order = order[torch.argsort(key[order], stable=True)]
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = row[order][1:] != row[order][:-1]
        chosen = order[first]
        return distance[chosen], index[chosen], which[chosen]


@dataclass(frozen=True, eq=False)
class NoveltyCheck:
    """A :class:`NoveltyRule` with its inputs prepared once (threshold, transforms) for many batches of samples."""

    rule: NoveltyRule
    inputs: InputTransforms
    threshold: float

    def evaluate(self, samples: Tensor) -> NoveltyResult:
        """What ``rule.evaluate(samples, inputs)`` gives, bit for bit."""
        distance, index, transform = self.inputs.nearest(samples)
        return NoveltyResult(distance, index, is_near_copy=distance < self.threshold, threshold=self.threshold,
                             transform=transform)


@dataclass(frozen=True, eq=False)
class NoveltyResult:
    """Per sample (S,): nearest-input distance, nearest input index, near-copy flag, the index of the input's
    flip/rotation that came nearest (``dihedral.TRANSFORM_NAMES``); and the threshold."""

    distance: Tensor
    index: Tensor
    is_near_copy: Tensor
    threshold: float
    transform: Tensor

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (the per-sample arrays go to the store, not here)."""
        count = int(self.distance.shape[0])
        return {
            "threshold": self.threshold,
            "n_samples": count,
            "n_near_copies": int(self.is_near_copy.sum()),
            "near_copy_fraction": float(self.is_near_copy.double().mean()) if count else 0.0,
            "median_distance": float(self.distance.median()) if count else None,
        }


@dataclass(frozen=True)
class NoveltyRule:
    """Near-copy iff nearest-input RMS distance < factor * median nearest-neighbour distance of the inputs."""

    factor: float = 0.5

    def __post_init__(self) -> None:
        if not self.factor >= 0.0:
            raise ConfigurationError(f"factor must be >= 0, got {self.factor}")

    def threshold(self, inputs: Tensor) -> float:
        return self.factor * float(input_nearest_neighbour_distances(inputs).median())

    def prepared(self, inputs: Tensor) -> NoveltyCheck:
        """This rule for many batches of samples against the same inputs (:class:`NoveltyCheck`)."""
        return NoveltyCheck(self, InputTransforms(inputs), self.threshold(inputs))

    def evaluate(self, samples: Tensor, inputs: Tensor) -> NoveltyResult:
        threshold = self.threshold(inputs)
        distance, index, transform = nearest_input_distance(samples, inputs)
        return NoveltyResult(distance, index, is_near_copy=distance < threshold, threshold=threshold,
                             transform=transform)

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "distance": ("RMS pixel distance in model space, min over g of ||sample - g(input)|| / sqrt(D), g "
                         "running over the flips/rotations of the input (D4)"),
            "invariance": INVARIANCE,
            "transforms": list(TRANSFORM_NAMES),
            "rule": (
                f"a sample is a near-copy when its distance to the nearest input, up to flips and right-angle "
                f"rotations, is below {self.factor} x the median of the inputs' own nearest-neighbour distances"
            ),
        }
