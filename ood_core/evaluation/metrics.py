"""Evaluation statistics of generated images against real images of the target domain (DESIGN section 7).

Every statistic compares a *candidate* set (the method's samples, or a baseline's) with a *reference* set of
real images that were not among the few-shot inputs. Image statistics run in physical units (the samples'
``samples_physical`` and the reference mapped through the run's own normalization and back), geometry in
model space ([-1, 1], (N, C, H, W)). One line per metric, lower/higher is better:

- ``pixel_w1``: 1-Wasserstein distance between the pooled pixel-value distributions, physical units; lower.
- ``pixel_w1_rel``: ``pixel_w1`` divided by the reference pixels' standard deviation; lower.
- ``spectrum_dex``: mean |log10 P_cand(k) / P_ref(k)| over the isotropic power-spectrum bins (dex); lower.
- ``source_count_rel``: |mean sources per image (cand) - (ref)| / (ref), photutils detection; lower.
- ``source_count_w1``: 1-Wasserstein distance between per-image source-count distributions; lower.
- ``source_flux_w1``: 1-Wasserstein distance between log10 source-flux distributions (dex); lower.
- ``gini_w1``, ``m20_w1``, ``concentration_w1``, ``asymmetry_w1``: 1-Wasserstein distance between the per-image
  distributions of Gini (Lotz+2004), M20 (Lotz+2004), concentration and rotational asymmetry with its
  noise term removed (Conselice 2003); lower.
- ``minkowski_area``, ``minkowski_perimeter``, ``minkowski_euler``: relative L1 distance between the mean
  Minkowski-functional curves (area fraction, perimeter, Euler characteristic of the excursion sets
  ``image >= nu``) over thresholds nu shared by all sets; lower.
- ``nearest_input_ratio``: median nearest-input RMS distance of the candidates over the inputs' own median
  nearest-neighbour distance (novelty), both up to flips and right-angle rotations of the inputs (D4, see
  ``ood_core.method.novelty``), so a rotated or mirrored input scores 0; higher means newer, about 1 or more
  is as new as a fresh real image.
- ``near_copy_fraction``: fraction of candidates closer to an input (up to flips/rotations) than ``factor`` x
  the inputs' median nearest-neighbour distance; lower.
- ``domain_separation``: mean probability, under a logistic classifier fitted to tell the base model's own
  in-domain samples from the reference images (summary features), that a candidate is target-domain; higher
  is better (1: as target-like as real images; 0: fell back into the base domain, mode interference).
- ``c2st_accuracy``: balanced accuracy of a classifier two-sample test against the reference on texture and
  source features (``ood_core.evaluation.c2st``); 0.5 means indistinguishable, from 0.8 distinguishable; lower.
- ``fidelity_distance``: median RMS distance (model space) from each candidate to its nearest reference image;
  lower.
- ``coverage_distance``: median RMS distance from each reference image to its nearest candidate; lower.

The morphology statistics are the image-level (field) versions: computed on the whole background-subtracted
cutout rather than on one galaxy's segmentation map, because the cutouts are fields (star fields, clouds),
not single galaxies. statmorph 0.7.2 is installable and imports with the pinned versions, but it measures
single galaxies inside a segmentation map and is not a dependency of this project, so Gini, M20, C and A are
implemented here from their definitions (asymmetry with statmorph's continuous centre refinement).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from astropy.stats import sigma_clipped_stats
from photutils.segmentation import SourceCatalog, detect_sources, make_2dgaussian_kernel
from photutils.utils.exceptions import NoDetectionsWarning
from scipy.ndimage import convolve
from scipy.stats import wasserstein_distance
from skimage.measure import euler_number, perimeter

from ood_core.errors import ConfigurationError
from ood_core.evaluation.morphology import asymmetry, concentration, finite_values, gini, m20
from ood_core.method.novelty import (
    NoveltyRule,
    input_nearest_neighbour_distances,
    nearest_input_distance,
    rms_distances,
)

FloatArray = npt.NDArray[np.float64]

METRIC_DOCS: dict[str, str] = {
    "pixel_w1": "1-Wasserstein distance of pooled pixel values, physical units; lower is better",
    "pixel_w1_rel": "pixel_w1 / std of the reference pixels; lower is better",
    "spectrum_dex": "mean |log10 P_cand(k)/P_ref(k)| over isotropic power-spectrum bins (dex); lower is better",
    "source_count_mean": "mean number of photutils sources per image (compare with the reference row)",
    "source_count_rel": "|mean sources per image - reference| / reference; lower is better",
    "source_count_w1": "1-Wasserstein distance of per-image source counts; lower is better",
    "source_flux_w1": "1-Wasserstein distance of log10 source fluxes (dex); lower is better",
    "gini_w1": "1-Wasserstein distance of per-image Gini coefficients (Lotz+2004); lower is better",
    "m20_w1": "1-Wasserstein distance of per-image M20 (Lotz+2004); lower is better",
    "concentration_w1": "1-Wasserstein distance of per-image concentration 5 log10(r80/r20); lower is better",
    "asymmetry_w1": "1-Wasserstein distance of per-image rotational asymmetry (Conselice 2003); lower is better",
    "minkowski_area": "relative L1 distance of mean area-fraction curves V0(nu); lower is better",
    "minkowski_perimeter": "relative L1 distance of mean perimeter curves V1(nu); lower is better",
    "minkowski_euler": "relative L1 distance of mean Euler-characteristic curves V2(nu); lower is better",
    "nearest_input_ratio": ("median nearest-input distance / inputs' median NN distance, both up to flips/rotations"
                            " (novelty); higher is newer"),
    "near_copy_fraction": ("fraction of near-copies of an input, flips/rotations included (novelty rule); lower is "
                           "better"),
    "domain_separation": "P(target domain) from an in-domain vs reference classifier, mean; higher is better",
    "c2st_accuracy": ("classifier two-sample test vs the reference (texture and source features of 32 px tiles, "
                      "image-level balanced accuracy, grouped CV; ood_core.evaluation.c2st): 0.5 indistinguishable, "
                      ">= 0.8 distinguishable; lower is better"),
    "fidelity_distance": "median RMS distance from a candidate to its nearest reference image; lower is better",
    "coverage_distance": "median RMS distance from a reference image to its nearest candidate; lower is better",
}
"""One line per metric: what it measures and which direction is better."""


# ---------------------------------------------------------------------------------------------------------
# Pixel-intensity distribution


def wasserstein_1(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """1-Wasserstein (earth mover's) distance between two 1-D empirical distributions; NaN values ignored."""
    fa, fb = finite_values(a), finite_values(b)
    if fa.size == 0 or fb.size == 0:
        raise ConfigurationError("wasserstein_1 needs at least one finite value on each side")
    return float(wasserstein_distance(fa, fb))


# ---------------------------------------------------------------------------------------------------------
# Isotropic power spectrum


@dataclass(frozen=True)
class PowerSpectrum:
    """Azimuthally averaged power spectrum: ``k`` in cycles per pixel, ``power`` per bin (mean over images)."""

    k: FloatArray
    power: FloatArray

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k.tolist(), "power": self.power.tolist()}


def _hann2d(height: int, width: int) -> FloatArray:
    window: FloatArray = np.outer(np.hanning(height), np.hanning(width))
    return window


def isotropic_power_spectrum(images: npt.ArrayLike, *, window: bool = True) -> PowerSpectrum:
    """Mean isotropic power spectrum of (N, H, W) images (or one (H, W) image).

    Each image has its mean subtracted and is multiplied by a 2-D Hann window (``window``) that suppresses
    the leakage of the non-periodic edges; the power |FFT|^2 is normalized by sum(w^2), so white noise of
    variance s^2 has a flat expected spectrum equal to s^2. Bins are rings of integer radius |k| * N
    (N = min(H, W)), from 1 up to N // 2; the k = 0 bin (the mean) is left out.
    """
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ConfigurationError(f"power spectrum expects (N, H, W) images, got shape {stack.shape}")
    _, height, width = stack.shape
    stack = np.where(np.isfinite(stack), stack, np.nanmean(stack, axis=(1, 2), keepdims=True))
    w = _hann2d(height, width) if window else np.ones((height, width))
    centred = (stack - stack.mean(axis=(1, 2), keepdims=True)) * w
    power2d = (np.abs(np.fft.fft2(centred)) ** 2).mean(axis=0) / float(np.sum(w**2))
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.fftfreq(width)[None, :]
    size = min(height, width)
    ring = np.rint(np.sqrt(ky**2 + kx**2) * size).astype(np.int64)
    n_bins = size // 2
    sums = np.bincount(ring.ravel(), weights=power2d.ravel(), minlength=n_bins + 1)
    counts = np.bincount(ring.ravel(), minlength=n_bins + 1)
    bins = np.arange(1, n_bins + 1)
    return PowerSpectrum(k=bins / size, power=sums[bins] / np.maximum(counts[bins], 1))


def spectrum_distance(candidate: PowerSpectrum, reference: PowerSpectrum) -> float:
    """Mean absolute log10 ratio of two spectra over their common bins (dex); 0 for identical spectra."""
    if candidate.k.shape != reference.k.shape or not np.allclose(candidate.k, reference.k):
        raise ConfigurationError("spectra have different k bins: compare images of the same size")
    tiny = np.finfo(np.float64).tiny
    ratio = np.log10(np.maximum(candidate.power, tiny)) - np.log10(np.maximum(reference.power, tiny))
    return float(np.mean(np.abs(ratio)))


# ---------------------------------------------------------------------------------------------------------
# Background and source detection (photutils)


def background_level(image: npt.ArrayLike, sigma: float = 3.0) -> tuple[float, float]:
    """Sigma-clipped (median, standard deviation) of the finite pixels: the background and its noise."""
    values = finite_values(image)
    if values.size == 0:
        raise ConfigurationError("background_level needs finite pixels")
    _, median, std = sigma_clipped_stats(values, sigma=sigma, maxiters=10)
    return float(median), float(std)


@dataclass(frozen=True)
class SourceDetection:
    """Sources found in one image: their number and segment fluxes (background subtracted, physical units)."""

    count: int
    fluxes: FloatArray


def detect_image_sources(
    image: npt.ArrayLike, *, nsigma: float = 3.0, npixels: int = 5, fwhm: float = 2.0
) -> SourceDetection:
    """photutils image segmentation: smooth with a Gaussian of ``fwhm`` pixels, keep connected regions of at
    least ``npixels`` pixels above ``nsigma`` x the smoothed image's sigma-clipped noise over the background."""
    data = np.asarray(image, dtype=np.float64)
    if data.ndim != 2:
        raise ConfigurationError(f"detection expects a 2-D image, got shape {data.shape}")
    median, _ = background_level(data)
    sub = np.where(np.isfinite(data), data - median, 0.0)
    kernel = make_2dgaussian_kernel(fwhm, size=int(2 * math.ceil(2 * fwhm) + 1))
    smooth = convolve(sub, np.asarray(kernel.array, dtype=np.float64), mode="reflect")
    _, noise = background_level(smooth)
    if not noise > 0:
        return SourceDetection(0, np.zeros(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = detect_sources(smooth, nsigma * noise, npixels)
    if segm is None:
        return SourceDetection(0, np.zeros(0))
    catalog = SourceCatalog(sub, segm, convolved_data=smooth)
    fluxes = np.asarray(catalog.segment_flux, dtype=np.float64)
    return SourceDetection(int(segm.n_labels), fluxes)


# ---------------------------------------------------------------------------------------------------------
# Morphology: Gini, M20 (Lotz, Primack & Madau 2004), concentration and asymmetry (Conselice 2003)


@dataclass(frozen=True)
class Morphology:
    """Image-level morphology of one background-subtracted image."""

    gini: float
    m20: float
    concentration: float
    asymmetry: float


def image_morphology(image: npt.ArrayLike) -> Morphology:
    """Gini, M20, C and A (noise-corrected) of one image after subtracting its sigma-clipped background."""
    data = np.asarray(image, dtype=np.float64)
    median, noise = background_level(data)
    sub = np.where(np.isfinite(data), data - median, 0.0)
    return Morphology(gini(sub), m20(sub), concentration(sub), asymmetry(sub, noise_sigma=noise))


# ---------------------------------------------------------------------------------------------------------
# Minkowski functionals of excursion sets


@dataclass(frozen=True)
class MinkowskiCurves:
    """Mean over images of V0 (area fraction), V1 (perimeter, pixels) and V2 (Euler characteristic) of the
    excursion sets ``image >= threshold``."""

    thresholds: FloatArray
    area: FloatArray
    perimeter: FloatArray
    euler: FloatArray

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds.tolist(), "area": self.area.tolist(),
                "perimeter": self.perimeter.tolist(), "euler": self.euler.tolist()}


def excursion_functionals(mask: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    """(area fraction, perimeter in pixels, Euler characteristic) of one binary image.

    Perimeter: skimage's 4-neighbourhood estimate; Euler characteristic: components minus holes with
    8-connected foreground (4-connected background), skimage.measure.euler_number.
    """
    binary = np.asarray(mask, dtype=bool)
    return (float(binary.mean()), float(perimeter(binary, neighborhood=4)),  # type: ignore[no-untyped-call]  # skimage is untyped
            float(euler_number(binary, connectivity=2)))  # type: ignore[no-untyped-call]  # skimage is untyped


def minkowski_curves(images: npt.ArrayLike, thresholds: Sequence[float] | npt.ArrayLike) -> MinkowskiCurves:
    """Mean Minkowski functionals of (N, H, W) images at each threshold (NaN pixels count as below)."""
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    levels = np.asarray(thresholds, dtype=np.float64).ravel()
    values = np.zeros((levels.size, 3))
    for image in stack:
        finite = np.isfinite(image)
        for j, level in enumerate(levels):
            values[j] += excursion_functionals(finite & (image >= level))
    values /= max(stack.shape[0], 1)
    return MinkowskiCurves(levels, values[:, 0], values[:, 1], values[:, 2])


def curve_distance(candidate: FloatArray, reference: FloatArray) -> float:
    """Relative L1 distance sum|a - b| / sum|b| of two curves on the same grid (sum|a - b| if b is all 0)."""
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    scale = float(np.abs(b).sum())
    diff = float(np.abs(a - b).sum())
    return diff / scale if scale > 0 else diff


# ---------------------------------------------------------------------------------------------------------
# Geometry in model space: novelty and domain separation


def _as_tensor(x: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))


def nearest_distances(candidates: torch.Tensor | npt.ArrayLike, others: torch.Tensor | npt.ArrayLike) -> FloatArray:
    """(N,) RMS distance (model space) from each candidate to its nearest image in ``others``."""
    distances = rms_distances(_as_tensor(candidates), _as_tensor(others))
    out: FloatArray = distances.min(dim=1).values.numpy().astype(np.float64)
    return out


def nearest_indices(candidates: torch.Tensor | npt.ArrayLike, others: torch.Tensor | npt.ArrayLike
                    ) -> npt.NDArray[np.int64]:
    """(N,) index of each candidate's nearest image in ``others`` (RMS distance, model space)."""
    out: npt.NDArray[np.int64] = rms_distances(_as_tensor(candidates), _as_tensor(others)).argmin(dim=1).numpy()
    return out.astype(np.int64)


def nearest_input_distances(candidates: torch.Tensor | npt.ArrayLike, inputs: torch.Tensor | npt.ArrayLike
                            ) -> FloatArray:
    """(N,) RMS distance (model space) from each candidate to its nearest input up to flips/rotations (D4): the
    novelty distance of ``ood_core.method.novelty``, as the run measures it."""
    distance, _, _ = nearest_input_distance(_as_tensor(candidates), _as_tensor(inputs))
    out: FloatArray = distance.numpy().astype(np.float64)
    return out


def novelty_statistics(
    candidates: torch.Tensor | npt.ArrayLike, inputs: torch.Tensor | npt.ArrayLike, factor: float = 0.5
) -> dict[str, float]:
    """Nearest-input distances of the candidates against the inputs' own nearest-neighbour distances, both up
    to flips/rotations of the inputs (D4), with the pipeline's own near-copy rule
    (``ood_core.method.novelty.NoveltyRule``) so the numbers agree with the run's."""
    inputs_t = _as_tensor(inputs)
    result = NoveltyRule(factor=factor).evaluate(_as_tensor(candidates), inputs_t)
    distance = result.distance.numpy().astype(np.float64)
    scale = float(input_nearest_neighbour_distances(inputs_t).median())
    return {
        "nearest_input_median": float(np.median(distance)),
        "inputs_nn_median": scale,
        "nearest_input_ratio": float(np.median(distance) / scale) if scale > 0 else float("nan"),
        "near_copy_fraction": float(result.is_near_copy.double().mean()),
    }


DOMAIN_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def domain_features(images: torch.Tensor | npt.ArrayLike) -> FloatArray:
    """Per image (model space, (N, C, H, W)): log10 isotropic power spectrum of the channel mean, its pixel
    quantiles and mean absolute gradient: summary statistics that tell a natural-image patch from a sky."""
    tensor = _as_tensor(images).double()
    band = tensor.mean(dim=1).numpy() if tensor.ndim == 4 else tensor.numpy()
    rows = []
    for image in band:
        spectrum = isotropic_power_spectrum(image)
        gy, gx = np.gradient(image)
        rows.append(np.concatenate([
            np.log10(np.maximum(spectrum.power, 1e-12)),
            np.quantile(image, DOMAIN_QUANTILES),
            [float(np.mean(np.hypot(gy, gx)))],
        ]))
    out: FloatArray = np.asarray(rows, dtype=np.float64)
    return out


def domain_separation(
    candidates: torch.Tensor | npt.ArrayLike,
    in_domain: torch.Tensor | npt.ArrayLike,
    reference: torch.Tensor | npt.ArrayLike,
) -> dict[str, float]:
    """How far candidates sit from the base model's own in-domain samples, judged against real target images.

    A logistic classifier (scikit-learn, on standardized :func:`domain_features`) is fitted to tell the
    in-domain samples (label 0) from the reference images (label 1); ``domain_separation`` is its mean
    probability that a candidate is target-domain: 1 = as target-like as the reference, 0 = base domain
    (mode interference). ``domain_classifier_loo_accuracy`` is its leave-one-out accuracy on the training
    images (about 0.5: the two domains are not separable with these features and the score means nothing).
    The median RMS distance of candidates to their nearest in-domain sample is reported beside it, also
    relative to the reference's.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_in, x_ref = domain_features(in_domain), domain_features(reference)
    x = np.concatenate([x_in, x_ref])
    y = np.concatenate([np.zeros(len(x_in)), np.ones(len(x_ref))])
    if len(x_in) < 2 or len(x_ref) < 2:
        raise ConfigurationError("domain separation needs at least 2 in-domain and 2 reference images")

    def classifier() -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))

    correct = sum(
        int(classifier().fit(np.delete(x, i, axis=0), np.delete(y, i)).predict(x[i : i + 1])[0] == y[i])
        for i in range(len(x))
    )
    probability = classifier().fit(x, y).predict_proba(domain_features(candidates))[:, 1]
    near_cand = float(np.median(nearest_distances(candidates, in_domain)))
    near_ref = float(np.median(nearest_distances(reference, in_domain)))
    return {
        "domain_separation": float(np.mean(probability)),
        "domain_classifier_loo_accuracy": correct / len(x),
        "in_domain_distance": near_cand,
        "in_domain_distance_ratio": near_cand / near_ref if near_ref > 0 else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------------
# A whole set


@dataclass(frozen=True)
class SetStatistics:
    """Per-set statistics that comparisons need; computed once per set."""

    n: int
    pixels: FloatArray
    spectrum: PowerSpectrum
    counts: FloatArray
    fluxes: FloatArray
    morphology: dict[str, FloatArray]
    minkowski: MinkowskiCurves


def set_statistics(physical: npt.ArrayLike, thresholds: Sequence[float] | npt.ArrayLike) -> SetStatistics:
    """Statistics of (N, H, W) physical images at the given Minkowski thresholds."""
    stack = np.asarray(physical, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ConfigurationError(f"set statistics expect (N, H, W) images, got shape {stack.shape}")
    detections = [detect_image_sources(image) for image in stack]
    morph = [image_morphology(image) for image in stack]
    fluxes = np.concatenate([d.fluxes for d in detections]) if detections else np.zeros(0)
    return SetStatistics(
        n=int(stack.shape[0]),
        pixels=finite_values(stack),
        spectrum=isotropic_power_spectrum(stack),
        counts=np.array([d.count for d in detections], dtype=np.float64),
        fluxes=np.log10(fluxes[fluxes > 0]),
        morphology={name: np.array([getattr(m, name) for m in morph]) for name in
                    ("gini", "m20", "concentration", "asymmetry")},
        minkowski=minkowski_curves(stack, thresholds),
    )


MINKOWSKI_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
"""Reference-pixel quantiles of the shared Minkowski thresholds: dense in the bright tail, where sparse
astronomical images keep their structure (sources), not only in the background."""


def minkowski_thresholds(
    reference_physical: npt.ArrayLike, quantiles: Sequence[float] = MINKOWSKI_QUANTILES
) -> FloatArray:
    """Thresholds shared by every set: the given quantiles of the reference pixels."""
    out: FloatArray = np.quantile(finite_values(reference_physical), np.asarray(quantiles, dtype=np.float64))
    return out


def _w1_or_nan(a: FloatArray, b: FloatArray) -> float:
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(wasserstein_distance(fa, fb)) if fa.size and fb.size else float("nan")


def compare_statistics(candidate: SetStatistics, reference: SetStatistics) -> dict[str, float]:
    """The image metrics of one candidate set against the reference set (see METRIC_DOCS)."""
    ref_std = float(np.std(reference.pixels))
    ref_count = float(np.mean(reference.counts))
    cand_count = float(np.mean(candidate.counts))
    out: dict[str, float] = {
        "pixel_w1": wasserstein_1(candidate.pixels, reference.pixels),
        "spectrum_dex": spectrum_distance(candidate.spectrum, reference.spectrum),
        "source_count_mean": cand_count,
        "source_count_rel": abs(cand_count - ref_count) / ref_count if ref_count > 0 else float("nan"),
        "source_count_w1": _w1_or_nan(candidate.counts, reference.counts),
        "source_flux_w1": _w1_or_nan(candidate.fluxes, reference.fluxes),
    }
    out["pixel_w1_rel"] = out["pixel_w1"] / ref_std if ref_std > 0 else float("nan")
    for name in ("gini", "m20", "concentration", "asymmetry"):
        out[f"{name}_mean"] = float(np.nanmean(candidate.morphology[name])) if np.isfinite(
            candidate.morphology[name]).any() else float("nan")
        out[f"{name}_w1"] = _w1_or_nan(candidate.morphology[name], reference.morphology[name])
    for name in ("area", "perimeter", "euler"):
        out[f"minkowski_{name}"] = curve_distance(getattr(candidate.minkowski, name),
                                                  getattr(reference.minkowski, name))
    return out
