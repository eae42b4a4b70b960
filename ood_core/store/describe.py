"""What a run's arrays mean, written into the store so that plain xarray shows it (CF-style attributes).

At completion every array of a run gets a ``long_name`` (and ``units`` where a unit applies), and the run
group gets dimension coordinates ``sample``, ``input``, ``reference``, ``channel``, ``y``, ``x`` (indices) plus
the non-dimension coordinate ``input_file`` (each input's file name, in the order the user gave them), so that
``xarray.open_zarr(store, group="runs/<id>")`` labels every axis.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Coroutine, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from zarr.api.asynchronous import create_array
from zarr.core.sync import sync
from zarr.errors import UnstableSpecificationWarning

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "inputs": {"long_name": "normalized inputs in model space", "units": "1",
               "comment": "[-1, 1] after the run's stretch; see provenance normalization"},
    "input_mask": {"long_name": "invalid input pixel (NaN, inf or BLANK, after block averaging)"},
    "input_latents": {"long_name": "DDIM latents of the inputs at t0", "units": "1"},
    "reconstructions": {"long_name": "inputs regenerated from their latents, model space", "units": "1"},
    "reconstruction_psnr": {"long_name": "reconstruction PSNR of each input (peak-to-peak 2)", "units": "dB"},
    "samples": {"long_name": "generated samples in model space", "units": "1"},
    "samples_physical": {"long_name": "generated samples in the inputs' physical unit"},
    "sample_latents": {"long_name": "screened latents at t0 the samples were generated from", "units": "1"},
    "sample_seed": {"long_name": "seed of the sample's candidate (regenerates the sample)"},
    "sample_parent": {"long_name": "index of the input latent the candidate was drawn from (-1: none)"},
    "sample_criteria": {"long_name": "geometric screening criteria of the sample's latent",
                        "comment": "distance in latent RMS units; angles in degrees (see criterion)"},
    "sample_nearest_input_distance": {"long_name": "RMS distance to the nearest input, model space",
                                      "units": "1"},
    "criterion": {"long_name": "name of the geometric screening criterion"},
    "reference_latents": {"long_name": "in-domain reference latents at t0 (DDIM samples of the model)",
                          "units": "1"},
}
"""CF attributes of each contract array (``samples_physical`` takes its units from the inputs' BUNIT)."""

INDEX_COORDINATES: dict[str, str] = {
    "sample": "sample index in the run",
    "input": "input index (order given by the user)",
    "reference": "reference latent index",
    "channel": "model channel",
    "y": "pixel row of the model-resolution image",
    "x": "pixel column of the model-resolution image",
}
INPUT_FILE = "input_file"


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


async def _write_index(group: zarr.Group, dim: str, size: int, long_name: str) -> None:
    attrs: dict[str, Any] = {"long_name": long_name}
    if dim in ("y", "x"):
        attrs["units"] = "pixel"
    await create_array(group.store, name=f"{group.path}/{dim}", data=np.arange(size, dtype=np.int64),
                       chunks=(max(size, 1),), dimension_names=(dim,), attributes=attrs, overwrite=True)


def _input_file_names(record: dict[str, Any], n_inputs: int | None) -> npt.NDArray[np.str_] | None:
    """Each input's file name (and plane or tile), or None when the record does not list the run's inputs."""
    inputs = record.get("inputs")
    if n_inputs is None or not isinstance(inputs, list) or len(inputs) != n_inputs:
        return None
    names = []
    for item in inputs:
        path = str(item.get("path", "")) if isinstance(item, dict) else str(item)
        plane = item.get("plane") if isinstance(item, dict) else None
        names.append(PurePath(path).name + (f" [{plane}]" if plane else ""))
    # Fixed-width unicode, not variable-length strings: dask (xarray.open_zarr's default chunks="auto") cannot
    # size variable-length strings of a non-index coordinate. zarr-python reads and writes this type; it warns
    # that the type has no zarr v3 specification yet (other zarr libraries may not read this one coordinate).
    return np.array(names, dtype=f"<U{max(1, *map(len, names))}")


async def _write_input_files(group: zarr.Group, names: npt.NDArray[np.str_]) -> None:
    await create_array(group.store, name=f"{group.path}/{INPUT_FILE}", data=names, dimension_names=("input",),
                       overwrite=True, attributes={"long_name": "input file name (and plane or tile)"})


def _array_attributes(array: zarr.Array[Any], name: str, has_files: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(DESCRIPTIONS[name])
    if array.attrs.get("units"):  # samples_physical: the inputs' unit, set when the run was created
        attrs["units"] = array.attrs["units"]
    names = array.metadata.dimension_names if hasattr(array.metadata, "dimension_names") else None
    if has_files and "input" in (names or ()):
        attrs["coordinates"] = INPUT_FILE
    return attrs


async def _describe(group: zarr.Group, arrays: Mapping[str, zarr.Array[Any]], record: dict[str, Any],
                    n_samples: int) -> None:
    sizes = _dimension_sizes(arrays, n_samples)
    files = _input_file_names(record, sizes.get("input"))
    writes: list[Coroutine[Any, Any, Any]] = [] if files is None else [_write_input_files(group, files)]
    writes += [array.async_array.update_attributes(_array_attributes(array, name, files is not None))
               for name, array in arrays.items() if name in DESCRIPTIONS]
    writes += [_write_index(group, dim, size, INDEX_COORDINATES[dim])
               for dim, size in sizes.items() if dim in INDEX_COORDINATES]
    await asyncio.gather(*writes)


def describe_run(group: zarr.Group, record: dict[str, Any], n_samples: int) -> None:
    """Write ``long_name``/``units`` on every contract array and the coordinate arrays (at completion); the
    writes go out together (one round trip to zarr's event loop, not two per array)."""
    arrays = dict(group.arrays())
    with warnings.catch_warnings():  # input_file's fixed-width unicode type (see _input_file_names)
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        sync(_describe(group, arrays, record, n_samples))
