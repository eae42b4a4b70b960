"""Evaluation of a run against real reference images and baselines (DESIGN section 7); ``ood evaluate``.

``evaluate_run`` reads a complete run from its store, reads the reference FITS files through the same
``fits_io`` + normalization path as the inputs (the run's own normalization parameters from provenance, so
the reference is clipped and mapped exactly as the samples were), runs the baselines through the same frozen
model (checked by its weights' sha256), computes every metric of ``ood_core.evaluation.metrics`` for the method and for
each baseline against the reference, and writes ``evaluation.json`` (strict JSON) and PNG plots.

Rows of the table: ``method`` (the run's samples), each baseline, and ``inputs`` (the real few-shot inputs
themselves: the floor a metric reaches with real images of the domain, given the small sets).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ood_core.errors import ConfigurationError
from ood_core.evaluation import baselines as bl
from ood_core.evaluation import metrics, plots
from ood_core.io.fits import expand_inputs, read_fits_batch, tile_cutouts, unmatched_inputs, usable_size
from ood_core.method.model import FrozenDiffusionModel, load_model
from ood_core.method.normalization import (
    NormalizationParams,
    bands_to_channels,
    denormalize,
    fit_normalization,
    model_to_physical,
    normalize,
    resize_to_resolution,
)
from ood_core.method.novelty import NoveltyRule
from ood_core.store import open_run
from ood_core.store.provenance import json_safe, strict_json_dumps, utc_now_iso

log = logging.getLogger(__name__)

DEFAULT_BASELINES: tuple[str, ...] = ("in_domain", "prior_unscreened", "augmentation", "finetune")
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
    ("nearest_input_ratio", "NN-in ratio"),
    ("near_copy_fraction", "copies"),
    ("domain_separation", "dom sep"),
    ("fidelity_distance", "fid"),
    ("coverage_distance", "cov"),
)
"""Columns of the summary table: (metric key, short header)."""

Progress = Callable[[str], None]


@dataclass
class ImageSet:
    """A set of images in model space (N, C, H, W) and physical units (N, H, W), with how it was made."""

    name: str
    model: torch.Tensor
    physical: npt.NDArray[np.float32]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReferenceSet:
    images: ImageSet
    sources: list[dict[str, Any]]
    excluded: list[dict[str, str]]
    quarantined: list[dict[str, str]]


def _run_normalization(provenance: dict[str, Any]) -> list[NormalizationParams]:
    entries = provenance.get("normalization", {}).get("params") or []
    if not entries:
        raise ConfigurationError("the run's provenance has no normalization parameters; cannot map to physical units")
    return [NormalizationParams.from_dict(entry) for entry in entries]


def to_physical(
    model_images: torch.Tensor, params: Sequence[NormalizationParams], parents: npt.ArrayLike | None = None
) -> npt.NDArray[np.float32]:
    """Model-space (N, C, H, W) -> physical (N, H, W) with the run's normalization (per image: the parent's)."""
    return model_to_physical(model_images.detach().cpu().numpy(), params, parents)


def load_reference(
    reference_inputs: Sequence[str],
    provenance: dict[str, Any],
    resolution: int,
    channels: int,
) -> ReferenceSet:
    """Read the reference FITS through fits_io, resize, and map with the run's normalization (and back).

    Files that were inputs of the run (same sha256) are left out: a reference must be unseen. With the
    run's per-image normalization each reference image gets its own fit of the same kind.
    """
    parameters = provenance.get("parameters", {})
    paths = expand_inputs(list(reference_inputs))
    quarantined = [q.to_dict() for q in unmatched_inputs(list(reference_inputs))]
    tile = parameters.get("tile")
    images, bad = read_fits_batch(paths, hdu=parameters.get("hdu"), min_size=usable_size(resolution, tile))
    quarantined += [q.to_dict() for q in bad]
    input_hashes = {str(entry.get("sha256")) for entry in provenance.get("inputs", [])}
    kept, excluded = [], []
    for image in images:
        if image.sha256 in input_hashes:
            excluded.append({"path": image.path, "reason": "was an input of the run"})
        else:
            kept.append(image)
    if tile:
        kept = [t for image in kept for t in tile_cutouts(image, int(tile))]
    if not kept:
        raise ConfigurationError(
            f"no usable reference image among {len(paths)} file(s) (excluded as inputs: {len(excluded)}, "
            f"quarantined: {len(quarantined)}); pass real images of the domain that were not inputs"
        )
    run_params = _run_normalization(provenance)
    planes = [resize_to_resolution(im.data, im.mask, resolution, path=im.path)[0] for im in kept]
    model_planes, physical = [], []
    for plane in planes:
        if len(run_params) == 1:
            params = run_params[0]
        else:
            first = run_params[0]
            params = fit_normalization([plane], stretch=first.stretch, stretch_param=first.stretch_param,
                                       lower_percentile=first.lower_percentile,
                                       upper_percentile=first.upper_percentile, sigma=first.sigma,
                                       units=first.units, mode="per_image")
        normalized = normalize(plane, params)
        model_planes.append(normalized)
        physical.append(denormalize(normalized, params))
    model = torch.from_numpy(bands_to_channels(np.stack(model_planes), channels))
    image_set = ImageSet("reference", model, np.stack(physical).astype(np.float32), {"source": "real FITS"})
    return ReferenceSet(image_set, [im.metadata() for im in kept], excluded, quarantined)


def _check_model(model: FrozenDiffusionModel, provenance: dict[str, Any]) -> None:
    expected = provenance.get("model", {}).get("weights_sha256")
    if expected and model.weights_sha256 != expected:
        raise ConfigurationError(
            f"the model given ({model.weights_sha256[:12]}...) is not the run's frozen model ({str(expected)[:12]}...);"
            " baselines must use the same model: pass model=None to load the run's own"
        )


def _table_row(name: str, values: dict[str, Any]) -> dict[str, Any]:
    return {"set": name, "n": values.get("n")} | {key: values.get(key) for key, _ in TABLE_COLUMNS}


def format_table(result: dict[str, Any], *, markdown: bool = True) -> str:
    """The summary table of an ``evaluate_run`` result (markdown, or fixed-width text)."""
    headers = ["set", "n", *[short for _, short in TABLE_COLUMNS]]
    lines = []
    for row in result["table"]:
        cells = [str(row["set"]), str(row["n"])]
        for key, _ in TABLE_COLUMNS:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:.3g}")
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*cells) for cells in lines)])


def evaluate_run(
    store_url: str,
    reference_inputs: Sequence[str],
    run_id: str | None = None,
    *,
    out_dir: str | Path = "out/evaluate",
    baselines: Sequence[str] = DEFAULT_BASELINES,
    n_baseline_samples: int | None = None,
    finetune_steps: int = 200,
    finetune_batch_size: int = 8,
    finetune_learning_rate: float = 1e-4,
    sample_steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 16,
    in_domain_anchor_count: int | None = None,
    model: FrozenDiffusionModel | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of a run's samples and of each baseline against real reference images; JSON and PNGs.

    Returns a JSON-safe dict: ``table`` (one row per set, the headline metrics), ``sets`` (every number per
    set), ``metric_docs``, ``reference``, ``baselines`` (how each was made), ``plots`` and ``json`` (paths).
    ``sample_steps`` (K of the baselines that sample from N(0, I)) defaults to the run's own K. The domain
    separation classifier is trained on ``in_domain_anchor_count`` (default max(n, 16)) in-domain samples of
    their own seed, disjoint from the ``in_domain`` baseline's, against the reference images.
    """
    say = progress or (lambda message: log.info("%s", message))
    names = bl.check_baselines(list(baselines))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    ds = open_run(store_url, run_id, chunks=None)
    provenance: dict[str, Any] = dict(ds.attrs["ood_run"])
    actual_run_id = str(provenance.get("run_id", run_id or ""))
    parameters = provenance.get("parameters", {})
    inversion = provenance.get("inversion", {})
    run_params = _run_normalization(provenance)
    samples = torch.from_numpy(np.asarray(ds["samples"].values, dtype=np.float32))
    if samples.shape[0] == 0:
        raise ConfigurationError(f"run {actual_run_id} has no samples to evaluate")
    inputs = torch.from_numpy(np.asarray(ds["inputs"].values, dtype=np.float32))
    input_latents = torch.from_numpy(np.asarray(ds["input_latents"].values, dtype=np.float32))
    samples_physical = np.asarray(ds["samples_physical"].values, dtype=np.float32)
    units = str(ds["samples_physical"].attrs.get("units", run_params[0].units))
    n = int(n_baseline_samples or samples.shape[0])
    steps = int(sample_steps or inversion.get("steps") or parameters.get("steps", 40))
    grid = [int(t) for t in inversion["grid"]]
    eta = float(provenance.get("generation", {}).get("eta", parameters.get("eta", 0.0)))
    novelty_factor = float(parameters.get("novelty_factor", 0.5))

    if model is None:
        model = load_model(provenance["model"]["source"], device=device)
    _check_model(model, provenance)
    torch_inputs = inputs

    def nearest_parent(images: torch.Tensor) -> npt.NDArray[np.int64]:
        return metrics.nearest_indices(images, torch_inputs)

    def physical_of(images: torch.Tensor, parent: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.float32]:
        if len(run_params) > 1 and parent is None:
            parent = nearest_parent(images)
        return to_physical(images, run_params, parent)

    t = time.perf_counter()
    reference = load_reference(reference_inputs, provenance, model.resolution, model.channels)
    timings["reference"] = round(time.perf_counter() - t, 3)
    say(f"reference: {reference.images.model.shape[0]} images ({len(reference.excluded)} excluded as inputs)")

    sets: dict[str, ImageSet] = {
        "method": ImageSet("method", samples, samples_physical, {"source": f"run {actual_run_id} samples"}),
    }
    baseline_info: dict[str, Any] = {}
    t = time.perf_counter()
    anchor_count = int(in_domain_anchor_count or max(n, 16))
    anchor = bl.in_domain_samples(model, anchor_count, steps, seed=seed + 7919, batch_size=batch_size)
    timings["in_domain_anchor"] = round(time.perf_counter() - t, 3)
    for name in names:
        t = time.perf_counter()
        say(f"baseline {name}: {n} images")
        if name == "in_domain":
            images = bl.in_domain_samples(model, n, steps, seed=seed, batch_size=batch_size)
            info: dict[str, Any] = {"noise": "N(0, I) at the last timestep", "steps": steps, "seed": seed}
            physical = physical_of(images)
        elif name == "prior_unscreened":
            images = bl.unscreened_prior_samples(
                model, input_latents, grid, n, prior_kind=parameters.get("prior", "scalar"), seed=seed, eta=eta,
                batch_size=batch_size)
            info = {"prior": parameters.get("prior", "scalar"), "t0": grid[-1], "steps": len(grid) - 1,
                    "eta": eta, "seed": seed}
            physical = physical_of(images)
        elif name == "augmentation":
            images, aug_parents, transforms = bl.augmentation_samples(inputs, n, seed=seed)
            info = {"transforms": "7 non-identity flips/rotations", "parents": aug_parents.tolist(),
                    "transform_index": transforms.tolist()}
            physical = physical_of(images, aug_parents.numpy().astype(np.int64))
        else:  # finetune
            config = bl.FinetuneConfig(steps=finetune_steps, batch_size=finetune_batch_size,
                                       learning_rate=finetune_learning_rate, seed=seed)
            images, report = bl.finetune_samples(model, inputs, n, steps, config, seed=seed, batch_size=batch_size)
            info = {**report.to_dict(), "sample_steps": steps}
            physical = physical_of(images)
        timings[name] = round(time.perf_counter() - t, 3)
        info["seconds"] = timings[name]
        baseline_info[name] = info
        sets[name] = ImageSet(name, images, physical, info)
    sets["inputs"] = ImageSet("inputs", inputs, physical_of(inputs, np.arange(inputs.shape[0])),
                              {"source": "the run's few-shot inputs (real images; floor of each metric)"})

    t = time.perf_counter()
    say("metrics")
    thresholds = metrics.minkowski_thresholds(reference.images.physical)
    ref_stats = metrics.set_statistics(reference.images.physical, thresholds)
    per_set: dict[str, dict[str, Any]] = {}
    all_stats: dict[str, metrics.SetStatistics] = {"reference": ref_stats}
    for name, image_set in sets.items():
        stats = metrics.set_statistics(image_set.physical, thresholds)
        all_stats[name] = stats
        values: dict[str, Any] = {"n": stats.n, **metrics.compare_statistics(stats, ref_stats)}
        values.update(metrics.novelty_statistics(image_set.model, inputs, novelty_factor))
        values.update(metrics.domain_separation(image_set.model, anchor, reference.images.model))
        values["fidelity_distance"] = float(np.median(metrics.nearest_distances(image_set.model,
                                                                                reference.images.model)))
        values["coverage_distance"] = float(np.median(metrics.nearest_distances(reference.images.model,
                                                                                image_set.model)))
        values["nearest_input_distances"] = metrics.nearest_distances(image_set.model, inputs).tolist()
        values["spectrum"] = stats.spectrum.to_dict()
        values["minkowski_curves"] = stats.minkowski.to_dict()
        values["morphology_per_image"] = {k: v.tolist() for k, v in stats.morphology.items()}
        values["source_counts_per_image"] = stats.counts.tolist()
        per_set[name] = values
    reference_values: dict[str, Any] = {
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
    timings["metrics"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    display = {"reference": reference.images.physical, **{k: v.physical for k, v in sets.items()}}
    plot_paths = {
        "contact_sheet": plots.contact_sheet(display, out / "contact_sheet.png", display_reference="reference",
                                             units=units),
        "power_spectra": plots.power_spectra({k: s.spectrum for k, s in all_stats.items()},
                                             out / "power_spectra.png", units=units),
        "pixel_histograms": plots.pixel_histograms(display, out / "pixel_histograms.png", units=units),
        "morphology": plots.morphology_panels({k: s.morphology for k, s in all_stats.items()},
                                              out / "morphology.png"),
        "minkowski": plots.minkowski_panels({k: s.minkowski for k, s in all_stats.items()}, out / "minkowski.png",
                                            units=units, quantiles=metrics.MINKOWSKI_QUANTILES),
    }
    inputs_nn = metrics.leave_one_out_nearest(inputs)
    novelty_threshold = NoveltyRule(factor=novelty_factor).threshold(inputs)
    plot_paths["novelty"] = plots.novelty_histograms(
        {k: v["nearest_input_distances"] for k, v in per_set.items() if k != "inputs"}, out / "novelty.png",
        inputs_nn=inputs_nn, threshold=novelty_threshold)
    timings["plots"] = round(time.perf_counter() - t, 3)
    timings["total"] = round(time.perf_counter() - started, 3)

    result: dict[str, Any] = {
        "store": store_url,
        "run_id": actual_run_id,
        "evaluated": utc_now_iso(),
        "units": units,
        "model": {"source": model.source, "weights_sha256": model.weights_sha256},
        "reference": {"n": reference.images.model.shape[0], "sources": reference.sources,
                      "excluded": reference.excluded, "quarantined": reference.quarantined,
                      "statistics": reference_values},
        "settings": {"baselines": names, "n_baseline_samples": n, "sample_steps": steps, "seed": seed,
                     "finetune_steps": finetune_steps, "finetune_batch_size": finetune_batch_size,
                     "finetune_learning_rate": finetune_learning_rate, "novelty_factor": novelty_factor,
                     "minkowski_thresholds": thresholds.tolist(),
                     "minkowski_quantiles": list(metrics.MINKOWSKI_QUANTILES),
                     "in_domain_anchor_count": int(anchor.shape[0])},
        "metric_docs": dict(metrics.METRIC_DOCS),
        "novelty": {"inputs_nn_distances": inputs_nn.tolist(), "near_copy_threshold": novelty_threshold,
                    "factor": novelty_factor, "rule": NoveltyRule(factor=novelty_factor).to_dict()["rule"]},
        "table": [_table_row(name, values) for name, values in per_set.items()],
        "sets": per_set,
        "baselines": baseline_info,
        "plots": {k: str(v) for k, v in plot_paths.items()},
        "timings": timings,
    }
    json_path = out / "evaluation.json"
    result["json"] = str(json_path)
    safe = json_safe(result)
    json_path.write_text(strict_json_dumps(safe, indent=2))
    say(f"wrote {json_path}")
    loaded: dict[str, Any] = json.loads(json_path.read_text())
    return loaded
