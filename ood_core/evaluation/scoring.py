"""Scoring: every metric of ``ood_core.evaluation.metrics`` for each set of images against the reference.

Image statistics run on physical units, at Minkowski thresholds shared by all sets (quantiles of the
reference pixels); geometry (novelty, domain separation, fidelity, coverage) in model space. The result is
one dict of numbers per set, a summary of the reference itself, and the summary table's rows. When the reference
images are photon counts (non-negative whole numbers), every set also gets the counts metrics of
``ood_core.evaluation.counts`` and the table their columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ood_core.evaluation import counts, metrics
from ood_core.evaluation.c2st import c2st
from ood_core.evaluation.loading import ImageSet
from ood_core.evaluation.texture import Standardization
from ood_core.method.novelty import INVARIANCE, NoveltyRule, input_nearest_neighbour_distances

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pixel_w1", "W1 pix"),
    ("pixel_w1_rel", "W1/std"),
    ("spectrum_dex", "P(k) dex"),
    ("source_count_mean", "src/img"),
    ("source_count_rel", "src rel"),
    ("gini_w1", "Gini W1"),
    ("m20_w1", "M20 W1"),
    ("concentration_w1", "C W1"),
    ("asymmetry_w1", "A W1"),
    ("minkowski_area", "MF V0"),
    ("minkowski_perimeter", "MF V1"),
    ("minkowski_euler", "MF V2"),
    ("c2st_accuracy", "C2ST"),
    ("nearest_input_ratio", "NN-in ratio"),
    ("near_copy_fraction", "copies"),
    ("domain_separation", "dom sep"),
    ("fidelity_distance", "fid"),
    ("coverage_distance", "cov"),
)
"""Columns of the summary table: (metric key, short header)."""

COUNTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("counts_not_integer", "not counts"),
    ("counts_pmf_tv", "P(n) TV"),
    ("counts_total_dex", "total dex"),
    ("counts_profile_dex", "profile dex"),
    ("counts_sources_mean", "Li&Ma src"),
    ("counts_sources_w1", "Li&Ma W1"),
)
"""Further columns when the reference is counts maps (``counts.COUNTS_METRIC_DOCS``)."""


def table_columns(per_set: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    """TABLE_COLUMNS, and COUNTS_COLUMNS when the sets were scored as counts maps."""
    scored_as_counts = any("counts_pmf_tv" in values for values in per_set.values())
    return TABLE_COLUMNS + COUNTS_COLUMNS if scored_as_counts else TABLE_COLUMNS


@dataclass
class Scores:
    """The numbers of an evaluation: per set, of the reference, and the statistics the plots draw."""

    per_set: dict[str, dict[str, Any]]
    reference: dict[str, Any]
    statistics: dict[str, metrics.SetStatistics]
    """Per-set statistics, the reference's first under the key ``reference``."""
    thresholds: metrics.FloatArray
    novelty: dict[str, Any]


def _set_values(
    image_set: ImageSet,
    stats: metrics.SetStatistics,
    ref_stats: metrics.SetStatistics,
    reference: ImageSet,
    inputs: torch.Tensor,
    anchor: torch.Tensor,
    novelty_factor: float,
) -> dict[str, Any]:
    """Every number of one set against the reference (see ``metrics.METRIC_DOCS``)."""
    values: dict[str, Any] = {"n": stats.n, **metrics.compare_statistics(stats, ref_stats)}
    values.update(metrics.novelty_statistics(image_set.model, inputs, novelty_factor))
    values.update(metrics.domain_separation(image_set.model, anchor, reference.model))
    values["fidelity_distance"] = float(np.median(metrics.nearest_distances(image_set.model, reference.model)))
    values["coverage_distance"] = float(np.median(metrics.nearest_distances(reference.model, image_set.model)))
    values["nearest_input_distances"] = metrics.nearest_input_distances(image_set.model, inputs).tolist()
    values["spectrum"] = stats.spectrum.to_dict()
    values["minkowski_curves"] = stats.minkowski.to_dict()
    values["morphology_per_image"] = {k: v.tolist() for k, v in stats.morphology.items()}
    values["source_counts_per_image"] = stats.counts.tolist()
    values.update(realism(image_set, reference))
    return values


def realism(image_set: ImageSet, reference: ImageSet) -> dict[str, Any]:
    """The C2ST of a set against the reference (``c2st_*``; None below 2 images a side)."""
    if min(image_set.physical.shape[0], reference.physical.shape[0]) < 2:
        return {"c2st_accuracy": None, "c2st_ci_low": None, "c2st_ci_high": None, "c2st_distinguishable": None}
    result = c2st(reference.physical, image_set.physical, standardization=Standardization.of(reference.physical))
    return {"c2st_accuracy": result.accuracy, "c2st_ci_low": result.ci_low, "c2st_ci_high": result.ci_high,
            "c2st_distinguishable": result.distinguishable, "c2st": result.to_dict()}


def reference_summary(ref_stats: metrics.SetStatistics) -> dict[str, Any]:
    """The reference's own statistics (what each candidate's are compared with)."""
    return {
        "n": ref_stats.n,
        "source_count_mean": float(np.mean(ref_stats.counts)),
        **{f"{k}_mean": float(np.nanmean(v)) if np.isfinite(v).any() else None
           for k, v in ref_stats.morphology.items()},
        "pixel_std": float(np.std(ref_stats.pixels)),
        "spectrum": ref_stats.spectrum.to_dict(),
        "minkowski_curves": ref_stats.minkowski.to_dict(),
        "morphology_per_image": {k: v.tolist() for k, v in ref_stats.morphology.items()},
        "source_counts_per_image": ref_stats.counts.tolist(),
    }


def novelty_summary(inputs: torch.Tensor, factor: float) -> dict[str, Any]:
    """The inputs' own nearest-neighbour distances and the run's near-copy threshold (``NoveltyRule``), both
    up to flips/rotations (``invariance``: "D4")."""
    rule = NoveltyRule(factor=factor)
    return {"inputs_nn_distances": input_nearest_neighbour_distances(inputs).numpy().astype(np.float64).tolist(),
            "near_copy_threshold": rule.threshold(inputs), "factor": factor, "rule": rule.to_dict()["rule"],
            "invariance": INVARIANCE}


def score_sets(
    sets: Mapping[str, ImageSet],
    reference: ImageSet,
    inputs: torch.Tensor,
    anchor: torch.Tensor,
    novelty_factor: float,
) -> Scores:
    """Score each set against the reference; ``anchor`` are the in-domain samples of the domain classifier."""
    thresholds = metrics.minkowski_thresholds(reference.physical)
    ref_stats = metrics.set_statistics(reference.physical, thresholds)
    statistics: dict[str, metrics.SetStatistics] = {"reference": ref_stats}
    per_set: dict[str, dict[str, Any]] = {}
    counts_ref = counts_reference(reference)
    for name, image_set in sets.items():
        statistics[name] = metrics.set_statistics(image_set.physical, thresholds)
        per_set[name] = _set_values(image_set, statistics[name], ref_stats, reference, inputs, anchor,
                                    novelty_factor)
        if counts_ref is not None:
            per_set[name].update(counts.compare_counts(counts.counts_statistics(_maps(image_set)), counts_ref))
    summary = reference_summary(ref_stats)
    summary["counts"] = counts_ref is not None
    return Scores(per_set, summary, statistics, thresholds, novelty_summary(inputs, novelty_factor))


def _maps(image_set: ImageSet) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The set's counts as read when it has them, else its physical images, as (N, H, W)."""
    stack = np.asarray(image_set.physical if image_set.counts is None else image_set.counts, dtype=np.float64)
    return stack.reshape(-1, stack.shape[-2], stack.shape[-1])


def counts_reference(reference: ImageSet) -> counts.CountsStatistics | None:
    """The reference's counts statistics when its images are photon counts (as read, or as physical images), else
    None."""
    maps = _maps(reference)
    return counts.counts_statistics(maps) if counts.is_counts_data(maps) else None


def table_rows(per_set: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per set: its name, size and the headline metrics of ``TABLE_COLUMNS``."""
    columns = table_columns(per_set)
    return [{"set": name, "n": values.get("n")} | {key: values.get(key) for key, _ in columns}
            for name, values in per_set.items()]
