"""Contact sheets: rows of images in physical units on one shared display scale, with a labelled colour bar.

The one implementation behind both the run report (inputs, reconstructions, samples of a run) and the
evaluation (reference, method, baselines, inputs). Every panel of a sheet shares one display normalization,
an asinh stretch over the 0.5-99.8 percentile interval of one chosen set, so brightness compares across
rows; the colour bar is labelled in the run's physical units. The images are single-band, so they are drawn
in grey. Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot's global state.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.visualization import AsinhStretch, AsymmetricPercentileInterval, ImageNormalize
from matplotlib.figure import Figure

from ood_core.errors import ConfigurationError
from ood_core.evaluation.loading import run_normalization
from ood_core.evaluation.plots import save_figure
from ood_core.method.normalization import model_to_physical

PANEL_INCHES = 1.45
"""Size of one image panel; at 110 dpi a 64 x 64 image is drawn about 2.5 screen pixels per pixel."""
PERCENTILES = (0.5, 99.8)
RUN_SHEET_COLUMNS = 8
"""Columns of a run's contact sheet: at most this many inputs, reconstructions and samples."""


def _display_norm(reference: npt.NDArray[np.float64]) -> ImageNormalize:
    finite = reference[np.isfinite(reference)]
    return ImageNormalize(finite if finite.size else np.zeros(1), interval=AsymmetricPercentileInterval(*PERCENTILES),
                          stretch=AsinhStretch(0.1))


def _bar_ticks(norm: ImageNormalize) -> list[float]:
    """The display range's ends and three ticks evenly spaced on the display scale between them (so the faint
    end gets ticks too), the inner ones rounded to 2 significant digits."""
    inner = np.asarray(norm.inverse(np.array([0.25, 0.5, 0.75])), dtype=np.float64)
    return sorted({float(norm.vmin), float(norm.vmax), *(float(f"{value:.2g}") for value in inner)})


def contact_sheet(
    sets: Mapping[str, npt.ArrayLike],
    path: str | Path,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    per_row: int = 8,
    display_reference: str | None = None,
    units: str = "",
    title: str | None = None,
    footnote: str | None = None,
) -> Path:
    """One row per set (its first ``per_row`` images, (N, H, W) physical), grey, on a shared asinh display scale
    fitted on ``display_reference`` (default: the first set); ``labels`` captions each panel of a row."""
    if not sets:
        raise ConfigurationError("contact_sheet needs at least one set of images")
    stacks = {name: np.asarray(images, dtype=np.float64) for name, images in sets.items()}
    for name, stack in stacks.items():
        if stack.ndim != 3:
            raise ConfigurationError(f"set {name!r} must be (N, H, W), got shape {stack.shape}")
    key = str(display_reference if display_reference in stacks else next(iter(stacks)))
    norm = _display_norm(stacks[key])
    cols = max(1, min(per_row, max(s.shape[0] for s in stacks.values())))
    fig = Figure(figsize=(PANEL_INCHES * cols + 1.8, (PANEL_INCHES + 0.2) * len(stacks) + 0.9), layout="constrained")
    axes = fig.subplots(len(stacks), cols, squeeze=False)
    image = None
    for r, (name, stack) in enumerate(stacks.items()):
        notes = list((labels or {}).get(name, ()))
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= stack.shape[0]:
                ax.set_axis_off()
                continue
            image = ax.imshow(stack[c], origin="lower", cmap="gray", norm=norm, interpolation="nearest")
            if c < len(notes):
                ax.set_xlabel(notes[c], fontsize=7, labelpad=2)
        axes[r][0].set_ylabel(f"{name}\n(n={stack.shape[0]})", fontsize=9)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=min(0.9, 0.35 + 0.15 * len(stacks)), ticks=_bar_ticks(norm),
                           format="%.3g")
        bar.set_label(f"{units or 'physical units'} (asinh display, {PERCENTILES[0]}-{PERCENTILES[1]} % of {key})",
                      fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or f"contact sheet (display: asinh, {PERCENTILES[0]}-{PERCENTILES[1]} % of {key})",
                 fontsize=10)
    if footnote:
        width = max(60, int(cols * PANEL_INCHES * 18))
        fig.supxlabel("\n".join(textwrap.wrap(footnote, width)), fontsize=7, ha="left", x=0.01)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------
# A run's own contact sheet


def distance_labels(distances: Sequence[float], threshold: float | None) -> list[str]:
    """Panel captions "d_in 0.123", marked "near-copy" below the run's threshold."""
    return [f"d_in {d:.3f}" + (" near-copy" if threshold is not None and d < threshold else "") for d in distances]


def distance_note(threshold: float | None, factor: float | None) -> str:
    """What the ``d_in`` panel labels mean, with the run's near-copy threshold when it is known."""
    text = ("d_in = RMS distance from an image to the nearest run input or a flip/rotation of one, in model "
            "space (images scaled to [-1, 1]; 0 = a copy)")
    if threshold is None:
        return text + "."
    rule = f"{factor:g} x the inputs' median nearest-neighbour distance" if factor else "the novelty rule"
    return text + f"; below {threshold:.3f} ({rule}) an image is a near-copy, which the run's sampler rejects."


@dataclass(frozen=True)
class RunSheet:
    """A run's contact sheet: the PNG and the caption that explains it."""

    path: Path
    caption: str
    units: str


def _run_physical(ds: Any, columns: int) -> tuple[dict[str, npt.NDArray[np.float32]], str]:
    """Inputs, reconstructions (each in its input's normalization) and samples in physical units, or in model
    units when the run records no normalization."""
    inputs = np.asarray(ds["inputs"].values[:columns], dtype=np.float32)
    recons = np.asarray(ds["reconstructions"].values[:columns], dtype=np.float32)
    samples = np.asarray(ds["samples"].values[:columns], dtype=np.float32)
    try:
        params = run_normalization(dict(ds.attrs["ood_run"]))
    except ConfigurationError:
        return {"inputs": inputs.mean(axis=1), "reconstructions": recons.mean(axis=1),
                "samples": samples.mean(axis=1)}, "model units [-1, 1]"
    own = np.arange(inputs.shape[0])
    physical = ds["samples_physical"]
    record = dict(ds.attrs["ood_run"])
    if record.get("normalization", {}).get("per_band"):  # band groups: the bands' mean, drawn grey like the rest
        names = ", ".join(str(n) for n in (record.get("bands") or {}).get("names", []))
        return {
            "inputs": model_to_physical(inputs, params, per_band=True).mean(axis=1),
            "reconstructions": model_to_physical(recons, params, per_band=True).mean(axis=1),
            "samples": np.asarray(physical.values[:columns], dtype=np.float32).mean(axis=1),
        }, f"{physical.attrs.get('units') or params[0].units}, mean of bands {names}"
    return {
        "inputs": model_to_physical(inputs, params, own),
        "reconstructions": model_to_physical(recons, params, own),
        "samples": np.asarray(physical.values[:columns], dtype=np.float32),
    }, str(physical.attrs.get("units") or params[0].units)


def run_contact_sheet(ds: Any, path: str | Path, *, columns: int = RUN_SHEET_COLUMNS) -> RunSheet:
    """Rows: the run's inputs, their reconstructions (with PSNR), samples (with nearest-input distance d_in)."""
    record = dict(ds.attrs["ood_run"])
    novelty = record.get("novelty") or {}
    rows, units = _run_physical(ds, columns)
    sources = record.get("inputs") or []
    names = [Path(str(s.get("path", ""))).stem[:24] for s in sources[:columns]]
    psnr = ds["reconstruction_psnr"].values[:columns]
    distance = ds["sample_nearest_input_distance"].values[:columns]
    labels = {
        "inputs": [f"#{i} {name}" for i, name in enumerate(names)],
        "reconstructions": [f"PSNR {float(p):.1f} dB" for p in psnr],
        "samples": distance_labels([float(d) for d in distance], novelty.get("threshold")),
    }
    note = distance_note(novelty.get("threshold"), novelty.get("factor"))
    inversion = record.get("inversion") or {}
    counts = {"inputs": int(ds.sizes.get("input", 0)), "samples": int(ds.sizes.get("sample", 0))}
    caption = (
        f"Rows: the run's inputs (first {min(columns, counts['inputs'])} of {counts['inputs']}), their "
        f"reconstructions (DDIM inversion to t0 = {inversion.get('t0')} in {inversion.get('steps')} steps and back; "
        f"PSNR in model space) and samples (first {min(columns, counts['samples'])} of {counts['samples']}). "
        f"Pixel values in {units}, grey, on one asinh display scale fitted on the inputs "
        f"({PERCENTILES[0]}-{PERCENTILES[1]} %): see the colour bar. {note}"
    )
    png = contact_sheet(rows, path, labels=labels, per_row=columns, display_reference="inputs", units=units,
                        title=f"run {record.get('run_id')}", footnote=note)
    return RunSheet(png, caption, units)
