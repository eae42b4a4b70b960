"""What an evaluation compares, loaded: a run's arrays from its store, and real reference images.

The reference FITS files go through the same ``ood_core.io`` reading and the run's own normalization as the
inputs did (parameters from the run's provenance), so the reference is clipped and mapped exactly as the
samples were. Every set is then held twice: in model space ([-1, 1], (N, C, H, W)) for geometry, and in
physical units ((N, H, W)) for the image statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ood_core.errors import ConfigurationError
from ood_core.evaluation.counts import is_counts_data
from ood_core.evaluation.metrics import nearest_indices
from ood_core.io.fits import FitsImage, expand_inputs, read_fits_batch, tile_cutouts, unmatched_inputs, usable_size
from ood_core.method.normalization import (
    NormalizationParams,
    bands_to_channels,
    denormalize,
    fit_normalization,
    model_to_physical,
    normalize,
    resize_to_resolution,
)
from ood_core.store import open_run


@dataclass
class ImageSet:
    """A set of images in model space (N, C, H, W) and physical units (N, H, W), with how it was made."""

    name: str
    model: torch.Tensor
    physical: npt.NDArray[np.float32]
    info: dict[str, Any] = field(default_factory=dict)
    counts: npt.NDArray[np.float64] | None = None
    """(N, H, W) photon counts as read (resized by the run's rule, not clipped) when the images are counts."""


@dataclass
class ReferenceSet:
    """Real images of the target domain that were not inputs, with where they came from."""

    images: ImageSet
    sources: list[dict[str, Any]]
    excluded: list[dict[str, str]]
    quarantined: list[dict[str, str]]


def run_normalization(provenance: dict[str, Any]) -> list[NormalizationParams]:
    """The run's normalization parameters (one per run, or one per input) from its provenance."""
    entries = provenance.get("normalization", {}).get("params") or []
    if not entries:
        raise ConfigurationError("the run's provenance has no normalization parameters; cannot map to physical units")
    return [NormalizationParams.from_dict(entry) for entry in entries]


def to_physical(
    model_images: torch.Tensor, params: Sequence[NormalizationParams], parents: npt.ArrayLike | None = None
) -> npt.NDArray[np.float32]:
    """Model-space (N, C, H, W) -> physical (N, H, W) with the run's normalization (per image: the parent's)."""
    return model_to_physical(model_images.detach().cpu().numpy(), params, parents)


@dataclass
class RunData:
    """A complete run as the evaluation needs it: its images, its DDIM grid and how to map to physical units."""

    run_id: str
    provenance: dict[str, Any]
    samples: torch.Tensor
    samples_physical: npt.NDArray[np.float32]
    inputs: torch.Tensor
    input_latents: torch.Tensor
    normalization: list[NormalizationParams]
    units: str

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.provenance.get("parameters", {}))

    @property
    def grid(self) -> list[int]:
        """The run's DDIM timestep grid, 0 .. t0."""
        return [int(t) for t in self.provenance["inversion"]["grid"]]

    @property
    def steps(self) -> int:
        """The run's number of DDIM steps K."""
        return int(self.provenance.get("inversion", {}).get("steps") or self.parameters.get("steps", 40))

    @property
    def eta(self) -> float:
        return float(self.provenance.get("generation", {}).get("eta", self.parameters.get("eta", 0.0)))

    @property
    def novelty_factor(self) -> float:
        return float(self.parameters.get("novelty_factor", 0.5))

    def physical_of(self, images: torch.Tensor, parents: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """Physical units of model-space images; with per-input normalization an image without a known parent
        is mapped with the parameters of its nearest input."""
        if len(self.normalization) > 1 and parents is None:
            parents = nearest_indices(images, self.inputs)
        return to_physical(images, self.normalization, parents)


def _float_tensor(values: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def load_run(store_url: str, run_id: str | None = None) -> RunData:
    """Read a run's samples, inputs and latents and its normalization from the store (default: latest run)."""
    ds = open_run(store_url, run_id, chunks=None)
    provenance: dict[str, Any] = dict(ds.attrs["ood_run"])
    actual_run_id = str(provenance.get("run_id", run_id or ""))
    if provenance.get("normalization", {}).get("per_band"):
        raise ConfigurationError(f"run {actual_run_id} is a band-group run (bands "
                                 f"{(provenance.get('bands') or {}).get('names')}): its evaluation against "
                                 "single-band references is not implemented yet; evaluate single-band runs")
    normalization = run_normalization(provenance)
    samples = _float_tensor(ds["samples"].values)
    if samples.shape[0] == 0:
        raise ConfigurationError(f"run {actual_run_id} has no samples to evaluate")
    return RunData(
        run_id=actual_run_id,
        provenance=provenance,
        samples=samples,
        samples_physical=np.asarray(ds["samples_physical"].values, dtype=np.float32),
        inputs=_float_tensor(ds["inputs"].values),
        input_latents=_float_tensor(ds["input_latents"].values),
        normalization=normalization,
        units=str(ds["samples_physical"].attrs.get("units", normalization[0].units)),
    )


def _read_unseen(
    reference_inputs: Sequence[str], provenance: dict[str, Any], resolution: int
) -> tuple[list[FitsImage], list[dict[str, str]], list[dict[str, str]], int]:
    """Read the reference files (tiled like the run's inputs); leave out any file that was an input."""
    parameters = provenance.get("parameters", {})
    paths = expand_inputs(list(reference_inputs))
    quarantined = [q.to_dict() for q in unmatched_inputs(list(reference_inputs))]
    tile = parameters.get("tile")
    images, bad = read_fits_batch(paths, hdu=parameters.get("hdu"), min_size=usable_size(resolution, tile))
    quarantined += [q.to_dict() for q in bad]
    input_hashes = {str(entry.get("sha256")) for entry in provenance.get("inputs", [])}
    kept = [image for image in images if image.sha256 not in input_hashes]
    excluded = [{"path": image.path, "reason": "was an input of the run"}
                for image in images if image.sha256 in input_hashes]
    if tile:
        kept = [t for image in kept for t in tile_cutouts(image, int(tile))]
    return kept, excluded, quarantined, len(paths)


def _reference_params(plane: npt.NDArray[np.float32], run_params: list[NormalizationParams]) -> NormalizationParams:
    """The run's parameters (per run), or a fit of the same kind on this image (per image)."""
    if len(run_params) == 1:
        return run_params[0]
    first = run_params[0]
    return fit_normalization([plane], stretch=first.stretch, stretch_param=first.stretch_param,
                             lower_percentile=first.lower_percentile, upper_percentile=first.upper_percentile,
                             sigma=first.sigma, units=first.units, mode="per_image", resampling=first.resampling)


def load_reference(
    reference_inputs: Sequence[str],
    provenance: dict[str, Any],
    resolution: int,
    channels: int,
) -> ReferenceSet:
    """Read the reference FITS through ``ood_core.io``, resize, and map with the run's normalization (and back).

    Files that were inputs of the run (same sha256) are left out: a reference must be unseen. With the
    run's per-image normalization each reference image gets its own fit of the same kind.
    """
    kept, excluded, quarantined, n_files = _read_unseen(reference_inputs, provenance, resolution)
    if not kept:
        raise ConfigurationError(
            f"no usable reference image among {n_files} file(s) (excluded as inputs: {len(excluded)}, "
            f"quarantined: {len(quarantined)}); pass real images of the domain that were not inputs"
        )
    run_params = run_normalization(provenance)
    model_planes, physical, planes = [], [], []
    for image in kept:
        plane = resize_to_resolution(image.data, image.mask, resolution, path=image.path,
                                     rule=run_params[0].resampling)[0]  # summed or averaged as the run's inputs
        planes.append(plane)
        params = _reference_params(plane, run_params)
        normalized = normalize(plane, params)
        model_planes.append(normalized)
        physical.append(denormalize(normalized, params))
    model = torch.from_numpy(bands_to_channels(np.stack(model_planes), channels))
    raw = np.stack(planes).astype(np.float64)
    image_set = ImageSet("reference", model, np.stack(physical).astype(np.float32), {"source": "real FITS"},
                         counts=raw if is_counts_data(raw) else None)
    return ReferenceSet(image_set, [im.metadata() for im in kept], excluded, quarantined)
