"""Scores of a set of generated images against held-out shots, physical units (the project's fast metrics).

Lower is better on every score: ``pixel_w1_rel`` (pixel W1 over the held-out pixels' standard deviation),
``spectrum_dex`` (power-spectrum distance), ``source_count_rel`` (|mean sources per image - held-out's| / held-out's,
+1 in the denominator so that empty held-out shots do not divide by zero), ``c2st_accuracy`` (can a classifier on
texture and source features tell the images from the held-out shots? :mod:`ood_core.evaluation.c2st`; 0.5 is
indistinguishable, ranked as 0.5 below it: a lower accuracy is chance, not better). Novelty is measured in model space
against the kept shots: ``near_copy_fraction`` (the run's own near-copy rule) and ``nearest_ratio`` (median
nearest-kept-shot distance over the kept shots' own nearest-neighbour median; about 1 is as new as a real shot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ood_core.evaluation.c2st import C2STResult, c2st
from ood_core.evaluation.counts import CountsStatistics, compare_counts, counts_statistics
from ood_core.evaluation.metrics import (
    PowerSpectrum,
    detect_image_sources,
    isotropic_power_spectrum,
    spectrum_distance,
    wasserstein_1,
)
from ood_core.method.novelty import NoveltyRule, input_nearest_neighbour_distances

FIDELITY = ("pixel_w1_rel", "spectrum_dex", "source_count_rel", "c2st_accuracy")
"""The scores a setting is ranked on (lower is better)."""
COUNTS_FIDELITY = ("counts_pmf_tv", "counts_total_dex", "counts_profile_dex", "counts_source_rel", "c2st_accuracy")
"""The scores of a photon-counts domain (:mod:`ood_core.evaluation.counts`: what a pixel W1 or peaks on raw pixels
cannot say at under one count a pixel)."""
RANK_FLOOR = {"c2st_accuracy": 0.5}
"""Scores ranked as this value when below it (a C2ST accuracy under 0.5 is chance)."""
LABELS = {"pixel_w1_rel": "pixel distribution", "spectrum_dex": "power spectrum",
          "source_count_rel": "source counts", "c2st_accuracy": "C2ST accuracy",
          "counts_pmf_tv": "counts per pixel", "counts_total_dex": "total counts",
          "counts_profile_dex": "radial profile", "counts_source_rel": "Li & Ma sources"}

COMPARABLE = 0.10
"""A verdict's tolerance: within 10 % of augmentation's score counts as comparable."""


@dataclass(frozen=True)
class HeldOut:
    """The held-out shots' statistics, computed once."""

    pixels: npt.NDArray[np.float64]
    spectrum: PowerSpectrum
    count: float
    images: npt.NDArray[np.float64]
    counts: CountsStatistics | None = None
    """A photon-counts domain's statistics (None otherwise): the setting is then ranked on COUNTS_FIDELITY."""

    @classmethod
    def of(cls, physical: npt.NDArray[Any], *, counts: bool = False) -> HeldOut:
        """``counts``: the shots are photon counts (their normalized round trip is rounded back to whole counts)."""
        stack = images_2d(physical)
        stats = counts_statistics(np.clip(np.round(stack), 0.0, None)) if counts else None
        return cls(stack.ravel(), isotropic_power_spectrum(stack), mean_count(stack), stack, stats)

    @property
    def names(self) -> tuple[str, ...]:
        """The scores a setting is ranked on against these shots."""
        return FIDELITY if self.counts is None else COUNTS_FIDELITY


def images_2d(physical: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """(N, H, W) float64 from (N, H, W) or (N, B, H, W) physical images (bands as images)."""
    stack = np.asarray(physical, dtype=np.float64)
    return stack.reshape(-1, stack.shape[-2], stack.shape[-1])


def mean_count(stack: npt.NDArray[np.float64]) -> float:
    return float(np.mean([detect_image_sources(image).count for image in stack]))


def fidelity(physical: npt.NDArray[Any], held: HeldOut) -> dict[str, float]:
    """The FIDELITY scores of physical images against the held-out shots."""
    stack = images_2d(physical)
    finite = stack[np.isfinite(stack)]
    spread = float(np.std(held.pixels))
    count = mean_count(stack)
    test = c2st(held.images, stack, seed=0)
    return {
        **({} if held.counts is None else counts_scores(stack, held.counts)),
        "pixel_w1_rel": wasserstein_1(finite, held.pixels) / spread if spread > 0 else float("nan"),
        "spectrum_dex": spectrum_distance(isotropic_power_spectrum(stack), held.spectrum),
        "source_count_rel": abs(count - held.count) / (held.count + 1.0),
        "source_count_mean": count,
        "c2st_accuracy": test.accuracy,
        "c2st_ci_low": test.ci_low,
        "c2st_ci_high": test.ci_high,
    }


def counts_scores(stack: npt.NDArray[np.float64], held: CountsStatistics) -> dict[str, float]:
    """The counts metrics of physical images against the held-out shots' (``counts_source_rel``: as
    ``source_count_rel``, on Li & Ma sources)."""
    ours = counts_statistics(stack)
    scores = compare_counts(ours, held)
    reference = float(np.mean(held.sources))
    return {**scores, "counts_source_rel": abs(float(np.mean(ours.sources)) - reference) / (reference + 1.0)}


def novelty(samples: torch.Tensor, kept: torch.Tensor, factor: float) -> dict[str, float]:
    """Near-copy fraction (the run's rule) and nearest-kept-shot ratio of model-space samples."""
    result = NoveltyRule(factor=factor).evaluate(samples, kept)
    own = float(input_nearest_neighbour_distances(kept).median())
    return {"near_copy_fraction": float(result.is_near_copy.double().mean()),
            "nearest_ratio": float(result.distance.median()) / own if own > 0 else float("nan")}


def augmentation(kept_physical: npt.NDArray[Any], count: int) -> npt.NDArray[np.float64]:
    """The cheapest alternative: ``count`` flips/rotations of the kept shots (the dihedral group, in turn)."""
    stack = images_2d(kept_physical)
    out = []
    for k in range(count):
        image = stack[k % stack.shape[0]]
        turn = (k // stack.shape[0]) % 8
        image = np.rot90(image, turn % 4)
        out.append(np.fliplr(image) if turn >= 4 else image)
    return np.stack(out)


def rank_sum(rows: list[dict[str, Any]], names: tuple[str, ...] = FIDELITY) -> list[float]:
    """Sum over the ``names`` scores (default FIDELITY) of each row's rank (1 = best; ties share the mean rank; NaN
    ranks last)."""
    totals = np.zeros(len(rows))
    for name in names:
        values = np.array([row["scores"][name] for row in rows], dtype=np.float64)
        values = np.where(np.isfinite(values), np.maximum(values, RANK_FLOOR.get(name, -np.inf)), np.inf)
        order = values.argsort(kind="stable")
        ranks = np.empty(len(rows))
        ranks[order] = np.arange(1, len(rows) + 1)
        for value in np.unique(values):  # ties: mean rank
            ranks[values == value] = ranks[values == value].mean()
        totals += ranks
    return [float(t) for t in totals]


def realism_test(shots: npt.NDArray[Any], samples: npt.NDArray[Any] | None) -> C2STResult | None:
    """The verdict's C2ST: the chosen setting's samples against every shot (kept and held out: more real images
    than the held-out shots alone, so a clearer answer; near-copies of a kept shot are the novelty rule's to
    catch). None without samples or with fewer than 2 a side."""
    if samples is None:
        return None
    stack, real = images_2d(samples), images_2d(shots)
    if min(len(stack), len(real)) < 2:
        return None
    return c2st(real, stack, seed=0)


def realism(test: C2STResult | None, augmented: dict[str, float]) -> dict[str, Any]:
    """Can a classifier tell the samples from real images? In words, beside augmentation's accuracy against the
    held-out shots."""
    reference = augmented.get("c2st_accuracy", float("nan"))
    if test is None:
        return {"distinguishable": None, "line": "distinguishability from real images not measured"}
    distinguishable = test.distinguishable
    numbers = (f"C2ST accuracy {test.accuracy:.2f} [{test.ci_low:.2f}, {test.ci_high:.2f}], "
               f"{test.n_candidate} samples vs {test.n_real} shots (0.5: indistinguishable; augmentation of the kept "
               f"shots against the held-out ones: {reference:.2f})")
    if distinguishable:
        line = (f"DISTINGUISHABLE from real images: a classifier on texture and source features tells the "
                f"samples from the shots, {numbers}" + ("" if test.significant else
                                                       "; the interval includes 0.5 at this size"))
    else:
        line = f"not distinguishable from real images at this size: {numbers}"
    return {"distinguishable": distinguishable, "accuracy": test.accuracy, "ci_low": test.ci_low,
            "ci_high": test.ci_high, "n_samples": test.n_candidate, "n_shots": test.n_real,
            "augmentation_accuracy": reference, "line": line}


def verdict(scores: dict[str, float], augmented: dict[str, float], test: C2STResult | None,
            names: tuple[str, ...] = FIDELITY) -> dict[str, Any]:
    """Distinguishable from real images or not (``test``, :func:`realism_test`: first, whatever the rest says), then
    per fidelity score (``names``: :attr:`HeldOut.names`): better / comparable / worse than augmentation of the same
    shots; one line."""
    words: dict[str, str] = {}
    for name in names:
        ours, theirs = scores[name], augmented[name]
        if not (np.isfinite(ours) and np.isfinite(theirs)):
            words[name] = "not measured"
        elif ours < theirs * (1 - COMPARABLE) - 1e-12:
            words[name] = "better"
        elif ours > theirs * (1 + COMPARABLE) + 1e-12:
            words[name] = "worse"
        else:
            words[name] = "comparable"
    real = realism(test, augmented)
    line = "; ".join(f"{words[n]} on {LABELS[n]} ({scores[n]:.3g} vs {augmented[n]:.3g})" for n in names)
    return {"per_metric": words, "distinguishable": real["distinguishable"], "realism": real,
            "line": f"{real['line']}. vs held-out shots, against augmentation of the kept shots: {line}"}
