"""Is a sample new, or a near-copy of one of the few-shot inputs? (DESIGN section 2, "Novelty".)

Distances are RMS pixel distances, ||a - b|| / sqrt(D), in model space, so they read in the units of the
normalized images ([-1, 1]) whatever the image size. The rule: a sample is a near-copy when its distance to
the nearest input is below ``factor`` times the median of the inputs' own nearest-neighbour distances, i.e.
when it sits much closer to one input than the inputs typically sit to each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ood_core.errors import ConfigurationError
from ood_core.method.prior import flatten_latents

_CHUNK = 256


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


def nearest_input_distance(samples: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per (S, ...) sample: RMS distance (S,) float64 to the nearest input, and that input's index (S,)."""
    if flatten_latents(inputs).shape[0] < 1:
        raise ConfigurationError("nearest_input_distance needs at least one input")
    distance, index = rms_distances(samples, inputs).min(dim=1)
    return distance, index


def input_nearest_neighbour_distances(inputs: Tensor) -> Tensor:
    """(n,) RMS distance from each input to its nearest other input (leave-one-out)."""
    x = flatten_latents(inputs)
    if x.shape[0] < 2:
        raise ConfigurationError("nearest-neighbour distances need at least 2 inputs")
    distances = rms_distances(x, x)
    distances.fill_diagonal_(float("inf"))
    return distances.min(dim=1).values


@dataclass(frozen=True, eq=False)
class NoveltyResult:
    """Per-sample nearest-input distance (S,), nearest input index (S,), near-copy flags (S,), threshold."""

    distance: Tensor
    index: Tensor
    is_near_copy: Tensor
    threshold: float

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

    def evaluate(self, samples: Tensor, inputs: Tensor) -> NoveltyResult:
        threshold = self.threshold(inputs)
        distance, index = nearest_input_distance(samples, inputs)
        return NoveltyResult(distance, index, is_near_copy=distance < threshold, threshold=threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "distance": "RMS pixel distance in model space, ||sample - input|| / sqrt(D)",
            "rule": (
                f"a sample is a near-copy when its distance to the nearest input is below {self.factor} x "
                "the median of the inputs' own nearest-neighbour distances"
            ),
        }
