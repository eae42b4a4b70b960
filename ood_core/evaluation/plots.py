"""PNG figures of an evaluation's statistics: power spectra, pixel histograms, morphology, Minkowski curves,
novelty, C2ST accuracies. (Image contact sheets are ``ood_core.evaluation.sheets``.)

Uses matplotlib's object API (``Figure`` + Agg canvas) so nothing depends on an interactive backend or on
pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ood_core.errors import ConfigurationError
from ood_core.evaluation.metrics import MinkowskiCurves, PowerSpectrum

_COLORS = ("black", "tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink",
           "tab:gray", "tab:olive", "tab:cyan")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG at 110 dpi, creating the folder."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


_STYLES = ("-", "--", "-.", ":")


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _style(i: int) -> str:
    """Line style: sets that coincide (augmentation and inputs share a spectrum) stay visible."""
    return _STYLES[i % len(_STYLES)]


def power_spectra(spectra: Mapping[str, PowerSpectrum], path: str | Path, *, units: str = "") -> Path:
    """Isotropic power spectra of every set on log-log axes."""
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    for i, (name, spectrum) in enumerate(spectra.items()):
        ax.loglog(spectrum.k, np.maximum(spectrum.power, np.finfo(float).tiny), label=name, color=_color(i),
                  ls=_style(i), lw=2.2 if i == 0 else 1.4)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("spatial frequency k (cycles / pixel)")
    ax.set_ylabel(f"P(k) ({units}^2)" if units else "P(k)")
    ax.set_title("isotropic power spectrum (Hann window, mean over images)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def pixel_histograms(
    pixels: Mapping[str, npt.ArrayLike], path: str | Path, *, bins: int = 60, units: str = ""
) -> Path:
    """Pixel-value densities of every set on common bins (range of the first set, 0.1-99.9 %)."""
    values = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in pixels.items()}
    if not values:
        raise ConfigurationError("pixel_histograms needs at least one set")
    first = next(iter(values.values()))
    first = first[np.isfinite(first)]
    lo, hi = np.quantile(first, [0.001, 0.999]) if first.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    for i, (name, v) in enumerate(values.items()):
        finite = np.clip(v[np.isfinite(v)], lo, hi)
        ax.hist(finite, bins=edges.tolist(), density=True, histtype="step", label=name, color=_color(i),
                ls=_style(i), lw=2.2 if i == 0 else 1.4)
    ax.set_yscale("log")
    ax.set_xlabel(f"pixel value ({units})" if units else "pixel value")
    ax.set_ylabel("density")
    ax.set_title("pixel-intensity distribution (values outside the range piled at its ends)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def morphology_panels(morphology: Mapping[str, Mapping[str, npt.ArrayLike]], path: str | Path) -> Path:
    """Box plots of per-image Gini, M20, concentration and asymmetry for every set."""
    stats = ("gini", "m20", "concentration", "asymmetry")
    fig = Figure(figsize=(10.0, 3.6))
    axes = fig.subplots(1, len(stats))
    names = list(morphology)
    for ax, stat in zip(axes, stats, strict=True):
        data = []
        for name in names:
            v = np.asarray(morphology[name].get(stat, []), dtype=np.float64)
            data.append(v[np.isfinite(v)])
        ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=60, fontsize=7, ha="right")
        ax.set_title(stat, fontsize=9)
    fig.suptitle("image-level morphology per set", fontsize=9)
    return save_figure(fig, path)


def minkowski_panels(
    curves: Mapping[str, MinkowskiCurves],
    path: str | Path,
    *,
    units: str = "",
    quantiles: Sequence[float] | None = None,
) -> Path:
    """Area fraction, perimeter and Euler characteristic of the excursion sets against threshold.

    With ``quantiles`` (the reference-pixel quantile of each threshold) the x axis is that quantile on a
    -log10(1 - q) scale, so the thresholds in the bright tail are spread out; otherwise the physical threshold.
    """
    fig = Figure(figsize=(11.0, 3.6))
    axes = fig.subplots(1, 3)
    labels = (("area", "area fraction V0"), ("perimeter", "perimeter V1 (pixels)"), ("euler", "Euler char. V2"))
    levels = None if quantiles is None else np.asarray(quantiles, dtype=np.float64)
    for ax, (attr, label) in zip(axes, labels, strict=True):
        for i, (name, curve) in enumerate(curves.items()):
            x = curve.thresholds if levels is None or levels.size != curve.thresholds.size else -np.log10(1 - levels)
            ax.plot(x, getattr(curve, attr), label=name, color=_color(i), ls=_style(i),
                    lw=2.2 if i == 0 else 1.4, marker=".")
        if levels is not None:
            ticks = -np.log10(1 - levels)
            ax.set_xticks(ticks.tolist(), [f"{q:g}" for q in levels], rotation=60, fontsize=7)
            ax.set_xlabel("threshold = reference pixel quantile")
        else:
            ax.set_xlabel(f"threshold ({units})" if units else "threshold")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Minkowski functionals of excursion sets (mean per image)", fontsize=9)
    return save_figure(fig, path)


def novelty_histograms(
    distances: Mapping[str, npt.ArrayLike], path: str | Path, *, inputs_nn: npt.ArrayLike, threshold: float
) -> Path:
    """Nearest-input RMS distance (model space, up to flips/rotations of the inputs) of every set, beside the
    inputs' own nearest-neighbour distances and the near-copy threshold."""
    values = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in distances.items()}
    nn = np.asarray(inputs_nn, dtype=np.float64).ravel()
    pooled = np.concatenate([*values.values(), nn]) if values else nn
    pooled = pooled[np.isfinite(pooled)]
    hi = float(pooled.max()) if pooled.size else 1.0
    edges = np.linspace(0.0, max(hi, threshold) * 1.05 or 1.0, 40)
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    ax.hist(nn, bins=edges.tolist(), histtype="stepfilled", color="0.85", label="inputs' own NN distance")
    for i, (name, v) in enumerate(values.items()):
        ax.hist(v[np.isfinite(v)], bins=edges.tolist(), histtype="step", color=_color(i + 1), ls=_style(i),
                lw=1.4, label=name)
    ax.axvline(threshold, color="black", ls=":", label=f"near-copy threshold {threshold:.3g}")
    ax.set_xlabel("RMS distance to the nearest input, up to flips/rotations (model space)")
    ax.set_ylabel("images")
    ax.set_title("novelty: nearest-input distance", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def c2st_accuracies(results: Mapping[str, Mapping[str, float | None]], path: str | Path, *,
                    threshold: float = 0.8) -> Path:
    """Each set's C2ST accuracy against the reference with its interval; chance (0.5) and the distinguishable
    threshold marked."""
    names = [name for name, r in results.items() if r.get("c2st_accuracy") is not None]
    if not names:
        raise ConfigurationError("no set has a C2ST accuracy to plot")
    fig = Figure(figsize=(6.0, 0.45 * len(names) + 1.4))
    ax = fig.subplots()
    for i, name in enumerate(names):
        r = results[name]
        accuracy, low, high = (float(r.get(k) or 0.0) for k in ("c2st_accuracy", "c2st_ci_low", "c2st_ci_high"))
        ax.errorbar(accuracy, i, xerr=[[accuracy - low], [high - accuracy]], fmt="o", capsize=3,
                    color="tab:red" if accuracy >= threshold else "black")
    ax.axvline(0.5, color="tab:green", ls="--", lw=1, label="0.5: indistinguishable")
    ax.axvline(threshold, color="tab:red", ls=":", lw=1, label=f"{threshold}: distinguishable")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("C2ST balanced accuracy vs the reference (95 % interval)")
    ax.set_title("can a classifier tell each set from the real reference images?", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)
