"""A run as a plain netCDF file, and its provenance read back from either form.

``open_run`` gives the provenance as a dict (``ds.attrs["ood_run"]``), which netCDF cannot store (attributes
are strings, numbers and arrays). :func:`netcdf_ready` turns every such attribute into a JSON string under the
same name, so ``netcdf_ready(ds).to_netcdf(path)`` works; :func:`export_run_netcdf` does it from a store, and
:func:`run_provenance` reads the provenance back as a dict from a dataset of either kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from ood_core.store.provenance import json_safe
from ood_core.store.runs import RUN_ATTR, open_run

NETCDF_ENGINE: Literal["h5netcdf"] = "h5netcdf"
"""netCDF-4 (HDF5) writer: int64 seeds and strings need netCDF-4; the netCDF-3 writer (scipy) has neither."""

_NETCDF_ATTR_TYPES = (str, bytes, int, float, np.number, np.ndarray)


def _storable(value: Any) -> Any:
    """An attribute value netCDF can hold: strings and numbers as they are, anything else as JSON text."""
    if isinstance(value, bool) or not isinstance(value, _NETCDF_ATTR_TYPES):
        return json.dumps(json_safe(value), sort_keys=True)
    return value


def netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """A copy of a run dataset whose attributes netCDF can store (dicts, lists, booleans, None -> JSON strings).

    Variable encodings of the zarr store (chunks, codecs) are dropped: the netCDF writer picks its own.
    """
    out = ds.copy()
    out.attrs = {key: _storable(value) for key, value in ds.attrs.items()}
    for name in out.variables:
        variable = out.variables[name]
        variable.attrs = {key: _storable(value) for key, value in variable.attrs.items()}
        variable.encoding = {k: v for k, v in variable.encoding.items() if k in ("dtype", "_FillValue")}
        if variable.dtype.kind == "T":  # numpy StringDType (zarr v3 strings): plain object strings for netCDF
            out[name] = variable.astype(object)
    return out


def export_run_netcdf(
    store_url: str,
    path: str | os.PathLike[str],
    run_id: str | None = None,
    *,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete run (latest when ``run_id`` is None) as one netCDF-4 file; returns its path.

    Provenance is the JSON string attribute ``ood_run`` (read it with :func:`run_provenance`).
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: exists already; pass overwrite=True to replace it")
    ds = open_run(store_url, run_id, storage_options=storage_options)
    target.parent.mkdir(parents=True, exist_ok=True)
    netcdf_ready(ds).to_netcdf(target, engine=NETCDF_ENGINE)
    return target


def run_provenance(ds: xr.Dataset) -> dict[str, Any]:
    """The run's provenance record as a dict, from ``open_run`` (a dict) or from a netCDF file (JSON text)."""
    value = ds.attrs.get(RUN_ATTR)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise KeyError(f"dataset has no {RUN_ATTR!r} provenance attribute")
    return value
