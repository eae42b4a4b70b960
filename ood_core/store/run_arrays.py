"""The arrays of a run as its writers make and fill them: a new run's arrays (per :mod:`.contract`), the sample
arrays re-made in units of regions, a checked sample batch, rows moved together when regions are merged."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from ood_core.store.contract import (
    INPUT_ARRAYS,
    REFERENCE_ARRAYS,
    SAMPLE_ARRAYS,
    SampleLayout,
    array_spec,
    as_dtype,
    default_sample_chunk,
    fill_value,
    sample_chunking,
)
from ood_core.store.errors import StoreError
from ood_core.store.labels import create_criterion_coordinate
from ood_core.store.provenance import json_safe


def create_arrays(
    group: zarr.Group,
    n_inputs: int,
    image: tuple[int, int, int],
    criterion_names: list[str],
    units: str,
    layout: SampleLayout,
    physical_bands: bool = False,
) -> None:
    """The arrays of a new run group: per-input arrays at full size, per-sample arrays ``layout.expected`` long
    (they grow; readers go by the committed count)."""
    names = criterion_names
    _, height, width = image
    fixed_shapes = {
        "inputs": (n_inputs, *image), "input_mask": (n_inputs, height, width),
        "input_latents": (n_inputs, *image), "reconstructions": (n_inputs, *image),
        "reconstruction_psnr": (n_inputs,),
    }
    for name, shape in fixed_shapes.items():
        spec = INPUT_ARRAYS[name]
        group.create_array(name, shape=shape, dtype=spec.dtype, chunks=(1, *shape[1:]),
                           dimension_names=spec.dims, fill_value=fill_value(spec.dtype))
    trailing = {
        "samples": image, "samples_physical": image if physical_bands else (height, width), "sample_latents": image,
        "sample_seed": (), "sample_parent": (), "sample_criteria": (len(names),),
        "sample_nearest_input_distance": (),
    }
    for name, rest in trailing.items():
        _create_sample_array(group, name, rest, units, layout)
    spec = REFERENCE_ARRAYS["reference_latents"]
    group.create_array("reference_latents", shape=(0, *image), dtype=spec.dtype, chunks=(64, *image),
                       dimension_names=spec.dims, fill_value=fill_value(spec.dtype))
    create_criterion_coordinate(group, names)


def _create_sample_array(group: zarr.Group, name: str, rest: tuple[int, ...], units: str, layout: SampleLayout,
                         overwrite: bool = False) -> zarr.Array[Any]:
    """One per-sample array, ``layout.expected`` rows of shape ``rest``, chunked and sharded by ``layout``."""
    spec = array_spec(name, 1 + len(rest))
    return group.create_array(
        name, shape=(layout.expected, *rest), dtype=spec.dtype, dimension_names=spec.dims,
        fill_value=fill_value(spec.dtype), attributes={"units": units} if name == "samples_physical" else None,
        overwrite=overwrite, **sample_chunking(rest, layout),
    )


def remake_sample_arrays(
    group: zarr.Group, samples: Mapping[str, zarr.Array[Any]], rows: int, unit: int
) -> dict[str, zarr.Array[Any]]:
    """The (empty) sample arrays made again ``rows`` long and stored in units of ``unit`` rows, so that regions
    starting on multiples of ``unit`` never share a stored object."""
    units = str(samples["samples_physical"].attrs.get("units", ""))
    image_bytes = 4 * int(np.prod(samples["samples"].shape[1:]))
    layout = SampleLayout(math.gcd(unit, default_sample_chunk(image_bytes)), unit, unit, rows)
    return {name: _create_sample_array(group, name, tuple(samples[name].shape[1:]), units, layout, overwrite=True)
            for name in SAMPLE_ARRAYS}


def json_object(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint as a JSON object (None stays None)."""
    if value is None:
        return None
    safe = json_safe(dict(value))
    assert isinstance(safe, dict)
    return safe


def checked_sample_batch(
    batch: Mapping[str, npt.ArrayLike], shapes: Mapping[str, tuple[int, ...]], copy: bool
) -> dict[str, npt.NDArray[Any]]:
    """A batch of every sample array in the contract's dtypes, one length, the run's per-sample shapes; arrays
    the caller passed are copied when ``copy`` (a background thread writes them later)."""
    checked = {name: as_dtype(name, values, SAMPLE_ARRAYS[name].dtype) for name, values in batch.items()}
    lengths = {name: values.shape[0] if values.ndim else -1 for name, values in checked.items()}
    if set(checked) != set(SAMPLE_ARRAYS):
        raise StoreError(f"a sample batch needs {sorted(SAMPLE_ARRAYS)}, got {sorted(checked)}")
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise StoreError(f"append_samples: batch arrays differ in length: {lengths}")
    for name, values in checked.items():
        if values.shape[1:] != tuple(shapes[name]):
            raise StoreError(f"{name}: per-sample shape {values.shape[1:]}, the run expects {tuple(shapes[name])}")
    # a converted array is already a copy nobody else holds
    return {name: v.copy() if copy and v is batch[name] else v for name, v in checked.items()}


def pack_regions(arrays: Mapping[str, zarr.Array[Any]], regions: Sequence[tuple[int, int]],
                 rows: Sequence[int]) -> int:
    """Move the ``rows[k]`` rows at the start of each region k together (region order) and cut every array to
    their total, which is returned."""
    total = 0
    for n, (a, _) in zip(rows, regions, strict=True):
        if n and a != total:
            _move_rows(arrays, a, total, n)
        total += n
    for arr in arrays.values():
        arr.resize((total, *arr.shape[1:]))
    return total


def _move_rows(arrays: Mapping[str, zarr.Array[Any]], source: int, target: int, count: int,
               step: int = 4096) -> None:
    """Copy rows [source, source + count) of every array to [target, ...), target < source, in pieces."""
    for arr in arrays.values():
        for offset in range(0, count, step):
            n = min(step, count - offset)
            arr[target + offset:target + offset + n] = arr[source + offset:source + offset + n]
