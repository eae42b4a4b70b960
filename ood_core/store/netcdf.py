"""A run as a plain netCDF file that CF checkers accept, and its provenance read back from either form.

``open_run`` gives the provenance as a dict (``ds.attrs["ood_run"]``), which netCDF cannot store (attributes
are strings, numbers and arrays); a plain ``ds.to_netcdf()`` stops on the run's first attribute, whose
value (:data:`.describe.NETCDF_NOTE`) names this module. :func:`netcdf_ready` gives the run in CF form
(:mod:`.cf`: Conventions, title, history, UDUNITS units, the criteria's names as a label variable) with every
JSON-object attribute as JSON text under the same name, so ``netcdf_ready(ds).to_netcdf(path)`` works;
:func:`export_run_netcdf` does it from a store, and :func:`run_provenance` reads the provenance back as a
dict from a dataset of either kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from ood_core.store.cf import cf_dataset
from ood_core.store.contract import RUN_ATTR
from ood_core.store.readers import open_run

NETCDF_ENGINE: Literal["h5netcdf"] = "h5netcdf"
"""netCDF-4 (HDF5) writer: int64 seeds and strings need netCDF-4; the netCDF-3 writer (scipy) has neither."""

_KEPT_ENCODING = ("dtype", "_FillValue")


def netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """A copy of a run dataset (from ``open_run`` or plain ``xarray.open_zarr``) that netCDF can store and CF
    checkers accept: JSON-object attributes as JSON text, CF attributes and labels (see :mod:`.cf`).

    Variable encodings of the zarr store (chunks, codecs) are dropped: the netCDF writer picks its own.
    """
    out = cf_dataset(ds, run_provenance(ds))
    for name in out.variables:
        variable = out.variables[name]
        variable.encoding = {k: v for k, v in variable.encoding.items() if k in _KEPT_ENCODING}
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
