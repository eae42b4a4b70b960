"""What a run's arrays mean, written into the store so that plain xarray shows it (CF attributes).

At completion every array of a run gets a ``long_name`` (and ``units`` where a unit applies, in UDUNITS
syntax so CF tools accept them), and the run group gets dimension coordinates ``sample``, ``input``,
``reference``, ``channel``, ``y``, ``x`` (indices, units "1"); the ``input`` coordinate names each input's
file in its attribute ``files`` (in the order the user gave them; see :mod:`.labels`), so that
``xarray.open_zarr(store, group="runs/<id>")`` labels every axis with arrays every zarr v3 reader opens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

import numpy as np
import zarr
from zarr.api.asynchronous import create_array
from zarr.core.sync import sync

from ood_core.store.labels import CRITERION_DESCRIPTION, INPUT, INPUT_FILES_ATTR, input_file_names

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "inputs": {"long_name": "normalized inputs in model space", "units": "1",
               "comment": "[-1, 1] after the run's stretch; see provenance normalization"},
    "input_mask": {"long_name": "invalid input pixel (NaN, inf or BLANK, after block averaging)"},
    "input_latents": {"long_name": "DDIM latents of the inputs at t0", "units": "1"},
    "reconstructions": {"long_name": "inputs regenerated from their latents, model space", "units": "1"},
    # decibels are no UDUNITS unit (CF tools reject "dB"): a dimensionless ratio, in dB as the name says
    "reconstruction_psnr": {"long_name": "reconstruction PSNR of each input in decibels (peak-to-peak 2)",
                            "units": "1", "comment": "10 log10(peak^2 / mean squared error), peak-to-peak 2"},
    "samples": {"long_name": "generated samples in model space", "units": "1"},
    "samples_physical": {"long_name": "generated samples in the inputs' physical unit"},
    "sample_latents": {"long_name": "screened latents at t0 the samples were generated from", "units": "1"},
    "sample_seed": {"long_name": "seed of the sample's candidate (regenerates the sample)"},
    "sample_parent": {"long_name": "index of the input latent the candidate was drawn from (-1: none)"},
    "sample_criteria": {"long_name": "geometric screening criteria of the sample's latent",
                        "comment": "distance in latent RMS units; angles in degrees (see criterion)"},
    "sample_nearest_input_distance": {"long_name": "RMS distance to the nearest input, model space",
                                      "units": "1"},
    "criterion": {"long_name": CRITERION_DESCRIPTION, "units": "1"},
    "reference_latents": {"long_name": "in-domain reference latents at t0 (DDIM samples of the model)",
                          "units": "1"},
}
"""CF attributes of each contract array (``samples_physical`` takes its units from the inputs' BUNIT)."""

INDEX_COORDINATES: dict[str, str] = {
    "sample": "sample index in the run",
    "input": "input index (order given by the user)",
    "reference": "reference latent index",
    "channel": "model channel",
    "y": "pixel row of the model-resolution image (index)",
    "x": "pixel column of the model-resolution image (index)",
}


NETCDF_NOTE_ATTR = "ood_netcdf"
"""First attribute of a run group: how to write the run as netCDF. Its value is a JSON object, like the provenance
after it, so that a plain ``to_netcdf()`` of the run stops on it first and its error message says what to do."""
NETCDF_NOTE: dict[str, str] = {
    "how": "write this run as netCDF with `ood export-netcdf STORE FILE.nc --run ID`, or in Python with "
           "ood_core.store.netcdf.netcdf_ready(ds).to_netcdf(FILE.nc)",
    "why": "the provenance attributes (ood_run, ...) are JSON objects, which netCDF attributes cannot hold",
}


def with_netcdf_note(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with the netCDF note first (runs of earlier versions have none)."""
    return {NETCDF_NOTE_ATTR: dict(NETCDF_NOTE), **{k: v for k, v in attrs.items() if k != NETCDF_NOTE_ATTR}}


def _dimension_sizes(arrays: Mapping[str, zarr.Array[Any]], n_samples: int) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for array in arrays.values():
        names = array.metadata.dimension_names if hasattr(array.metadata, "dimension_names") else None
        for dim, size in zip(names or (), array.shape, strict=False):
            if dim is not None:
                sizes.setdefault(str(dim), int(size))
    if "sample" in sizes:
        sizes["sample"] = n_samples
    return sizes


async def _write_index(group: zarr.Group, dim: str, size: int, attrs: dict[str, Any]) -> None:
    await create_array(group.store, name=f"{group.path}/{dim}", data=np.arange(size, dtype=np.int64),
                       chunks=(max(size, 1),), dimension_names=(dim,), attributes=attrs, overwrite=True)


def _index_attributes(dim: str, files: list[str] | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"long_name": INDEX_COORDINATES[dim], "units": "1"}
    if dim == INPUT and files is not None:
        attrs[INPUT_FILES_ATTR] = files
    return attrs


def _array_attributes(array: zarr.Array[Any], name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(DESCRIPTIONS[name])
    if array.attrs.get("units"):  # samples_physical: the inputs' unit, set when the run was created
        attrs["units"] = array.attrs["units"]
    return attrs


async def _describe(group: zarr.Group, arrays: Mapping[str, zarr.Array[Any]], record: dict[str, Any],
                    n_samples: int) -> None:
    sizes = _dimension_sizes(arrays, n_samples)
    files = input_file_names(record, sizes.get(INPUT))
    writes: list[Coroutine[Any, Any, Any]] = [
        array.async_array.update_attributes(_array_attributes(array, name))
        for name, array in arrays.items() if name in DESCRIPTIONS
    ]
    writes += [_write_index(group, dim, size, _index_attributes(dim, files))
               for dim, size in sizes.items() if dim in INDEX_COORDINATES]
    await asyncio.gather(*writes)


def describe_run(group: zarr.Group, record: dict[str, Any], n_samples: int) -> None:
    """Write ``long_name``/``units`` on every contract array and the coordinate arrays (at completion); the
    writes go out together (one round trip to zarr's event loop, not two per array)."""
    sync(_describe(group, dict(group.arrays()), record, n_samples))
