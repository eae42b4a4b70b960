"""A run dataset in the form the CF conventions ask of a netCDF file (what ``ood export-netcdf`` writes).

The store's xarray form differs from CF in a few places that netCDF readers and CF checkers care about:

* ``criterion`` is a dimension coordinate of names; CF coordinate variables are numeric (CF 1.8 section 1.3),
  so the netCDF file gets an index ``criterion`` and the names as the label variable ``criterion_name``
  (section 6.1); labels (``criterion_name``, ``input_file``) are character arrays;
* every unit is written in UDUNITS syntax (index coordinates "1", ``samples_physical`` through
  :func:`.udunits.udunits`, its FITS unit kept in ``fits_bunit``); runs of earlier versions carried ``pixel``
  and ``dB``, which UDUNITS rejects;
* global attributes ``Conventions``, ``title``, ``history``, ``source``, ``references`` and ``comment``; the
  provenance and other JSON-object attributes become JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ood_core.store.describe import DESCRIPTIONS, INDEX_COORDINATES, NETCDF_NOTE_ATTR
from ood_core.store.labels import CRITERION, INPUT_FILE, decode_labels, string_array
from ood_core.store.provenance import json_safe, utc_now_iso
from ood_core.store.udunits import udunits

CONVENTIONS = "CF-1.11"
CRITERION_NAME = "criterion_name"
FITS_UNIT_ATTR = "fits_bunit"
"""Attribute of ``samples_physical`` in netCDF: the inputs' FITS unit as they gave it (BUNIT)."""
REFERENCES = ("Zhu et al., A Sampling-Based Domain Generalization Study with Diffusion Generative Models, "
              "arXiv:2310.09213")
_NETCDF_ATTR_TYPES = (str, bytes, int, float, np.number, np.ndarray)
_CHARACTERS = {"dtype": "S1"}  # xarray writes a string variable with this encoding as a netCDF char array


def storable(value: Any) -> Any:
    """An attribute value netCDF can hold: strings and numbers as they are, anything else as JSON text."""
    if isinstance(value, bool) or not isinstance(value, _NETCDF_ATTR_TYPES):
        return json.dumps(json_safe(value), sort_keys=True)
    return value


def _labels_as_characters(ds: xr.Dataset) -> xr.Dataset:
    """A numeric ``criterion`` index with its names in ``criterion_name``; labels stored as characters."""
    if CRITERION in ds.coords and ds[CRITERION].dtype.kind in "UTOS":
        names = string_array(ds[CRITERION].values)
        ds = ds.assign_coords({
            CRITERION: (CRITERION, np.arange(names.size, dtype=np.int64)),
            CRITERION_NAME: (CRITERION, names, {"long_name": "name of the geometric screening criterion"}),
        })
    labels = {name: xr.Variable(ds[name].dims, string_array(ds[name].values), ds[name].attrs, encoding=_CHARACTERS)
              for name in (CRITERION_NAME, INPUT_FILE) if name in ds.coords}
    return ds.assign_coords(labels)


def _variable_attributes(name: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """CF attributes of one variable: the descriptions of this version over what the store had."""
    out = {key: storable(value) for key, value in attrs.items() if key != "units"}
    if name in INDEX_COORDINATES:
        out.update(long_name=INDEX_COORDINATES[name], units="1")
    elif name == CRITERION:
        out.update(long_name="geometric screening criterion (index; criterion_name names it)", units="1")
    elif name in DESCRIPTIONS:
        out.update(DESCRIPTIONS[name])
    if name == "samples_physical":
        given = str(attrs.get("units", ""))
        unit = udunits(given)
        if unit is not None:
            out["units"] = unit
        if given:
            out[FITS_UNIT_ATTR] = given
    elif "units" in attrs and "units" not in out and name not in DESCRIPTIONS:
        out["units"] = attrs["units"]
    return out


def _history(record: Mapping[str, Any]) -> str:
    lines = []
    if record.get("started"):
        lines.append(f"{record['started']} run {record.get('run_id')} started (ood-synth)")
    if record.get("ended"):
        lines.append(f"{record['ended']} run {record.get('run_id')} {record.get('status', 'ended')}")
    lines.append(f"{utc_now_iso()} written as netCDF-4 (ood_core.store.netcdf)")
    return "\n".join(lines)


def _global_attributes(ds: xr.Dataset, record: Mapping[str, Any]) -> dict[str, Any]:
    version = (record.get("environment") or {}).get("version", "unknown")
    n_inputs = ds.sizes.get("input", 0)
    run_attrs = {key: storable(value) for key, value in ds.attrs.items() if key != NETCDF_NOTE_ATTR}
    return {
        "Conventions": CONVENTIONS,
        "title": f"ood-synth run {record.get('run_id')}: {ds.sizes.get('sample', 0)} samples generated from "
                 f"{n_inputs} inputs",
        "history": _history(record),
        "source": f"ood-synth {version}: few-shot out-of-domain sampling with a frozen diffusion model "
                  f"({(record.get('model') or {}).get('source', 'model unknown')})",
        "references": REFERENCES,
        "comment": "provenance of the run: JSON text in the attribute ood_run "
                   "(ood_core.store.netcdf.run_provenance reads it back as a dict)",
        **run_attrs,
    }


def cf_dataset(ds: xr.Dataset, record: Mapping[str, Any]) -> xr.Dataset:
    """``ds`` (a run as :func:`ood_core.store.open_run` or plain ``xarray.open_zarr`` gives it) in CF form;
    ``record`` is its provenance."""
    out = _labels_as_characters(decode_labels(ds.copy()))
    for name in out.variables:
        out[name].attrs = _variable_attributes(str(name), out[name].attrs)
    out.attrs = _global_attributes(out, record)
    return out
