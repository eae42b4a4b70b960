"""Names of a run's criteria and inputs: kept in attributes, so that every zarr v3 reader opens every array.

No string data type of zarr v3 is read by the other zarr libraries (measured, see README "Readers"):
tensorstore reads numeric and raw types only (it refuses zarr-python's ``string`` and ``fixed_length_utf32``),
zarrita refuses ``fixed_length_utf32`` and zarr-python 3.0 does not know it. So a run stores no string array:

* ``criterion`` is an integer index coordinate (0, 1, ...) whose attribute ``names`` lists each criterion's
  name, in order;
* the ``input`` index coordinate's attribute ``files`` lists each input's file name (and plane or tile), in
  the order the user gave them.

:func:`decode_labels` (what :func:`ood_core.store.open_run` applies) turns them back into the string coordinates
``criterion`` and ``input_file`` that earlier versions stored as arrays, and leaves runs written by those
versions (a vlen-string ``criterion``, a fixed-width unicode ``input_file``) as they are, so both read alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr
import zarr

CRITERION = "criterion"
INPUT = "input"
INPUT_FILE = "input_file"
CRITERION_NAMES_ATTR = "names"
"""Attribute of the ``criterion`` coordinate: the criteria's names, in index order."""
INPUT_FILES_ATTR = "files"
"""Attribute of the ``input`` coordinate: the inputs' file names (and plane or tile), in index order."""
CRITERION_DESCRIPTION = "geometric screening criterion (index; its name is in the attribute 'names')"


def create_criterion_coordinate(group: zarr.Group, names: Sequence[str]) -> None:
    """The ``criterion`` coordinate of a new run: indices 0..n-1 (int64), the names in its attributes."""
    criterion = group.create_array(
        CRITERION, shape=(len(names),), dtype="int64", chunks=(max(len(names), 1),), dimension_names=(CRITERION,),
        fill_value=0,
        attributes={"long_name": CRITERION_DESCRIPTION, "units": "1", CRITERION_NAMES_ATTR: [str(n) for n in names]},
    )
    criterion[:] = np.arange(len(names), dtype=np.int64)


def input_file_names(record: Mapping[str, Any], n_inputs: int | None) -> list[str] | None:
    """Each input's file name (and plane or tile), or None when the record does not list the run's inputs."""
    inputs = record.get("inputs")
    if n_inputs is None or not isinstance(inputs, list) or len(inputs) != n_inputs:
        return None
    names = []
    for item in inputs:
        path = str(item.get("path", "")) if isinstance(item, Mapping) else str(item)
        plane = item.get("plane") if isinstance(item, Mapping) else None
        names.append(PurePath(path).name + (f" [{plane}]" if plane else ""))
    return names


def _names(value: Any, size: int) -> list[str] | None:
    if isinstance(value, list) and len(value) == size and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def string_array(values: Any) -> npt.NDArray[np.str_]:
    """Any array of strings (numpy StringDType, objects, bytes, fixed width) as fixed-width unicode."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()],
                    dtype=str).reshape(np.shape(values))


def _without(attrs: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k != key}


def _decode_criterion(ds: xr.Dataset) -> xr.Dataset:
    criterion = ds[CRITERION]
    names = _names(criterion.attrs.get(CRITERION_NAMES_ATTR), ds.sizes[CRITERION])
    if names is not None and criterion.dtype.kind in "iu":
        attrs = {**_without(criterion.attrs, CRITERION_NAMES_ATTR), "long_name": "geometric screening criterion"}
        attrs.pop("units", None)
        return ds.assign_coords({CRITERION: (CRITERION, np.array(names), attrs)})
    if criterion.dtype.kind in "TO":  # earlier versions: vlen strings
        return ds.assign_coords({CRITERION: (CRITERION, string_array(criterion.values), dict(criterion.attrs))})
    return ds


def _decode_input_files(ds: xr.Dataset) -> xr.Dataset:
    index = ds[INPUT]
    files = _names(index.attrs.get(INPUT_FILES_ATTR), ds.sizes[INPUT])
    if files is None:
        return ds
    return ds.assign_coords({
        INPUT: (INPUT, index.values, _without(index.attrs, INPUT_FILES_ATTR)),
        INPUT_FILE: (INPUT, np.array(files), {"long_name": "input file name (and plane or tile)"}),
    })


def decode_labels(ds: xr.Dataset) -> xr.Dataset:
    """The run with ``criterion`` as a coordinate of names and ``input_file`` as a coordinate along ``input``,
    whether they are stored as attributes (this version) or as string arrays (earlier versions)."""
    if CRITERION in ds.coords:
        ds = _decode_criterion(ds)
    if INPUT in ds.coords and INPUT_FILE not in ds.variables:
        ds = _decode_input_files(ds)
    return ds


@contextmanager
def legacy_string_arrays() -> Iterator[None]:
    """Read runs of earlier versions without zarr's warnings about their string arrays (their unspecified
    ``fixed_length_utf32`` type, the ``vlen-utf8`` codec): the reader converts them (:func:`decode_labels`)."""
    from zarr.errors import UnstableSpecificationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        warnings.filterwarnings("ignore", message="The codec `vlen-utf8` is currently not part")
        yield
