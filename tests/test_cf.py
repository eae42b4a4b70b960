"""The CF form of a run for netCDF: numeric coordinates with label variables, UDUNITS units, global attributes.
(tests/test_interop.py runs the CF checker itself over an export of a real run.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from ood_core.store.cf import CONVENTIONS, CRITERION_NAME, FITS_UNIT_ATTR, cf_dataset
from ood_core.store.describe import NETCDF_NOTE_ATTR, with_netcdf_note

RECORD = {"run_id": "r1", "status": "complete", "started": "2026-01-01T00:00:00+00:00",
          "ended": "2026-01-01T00:01:00+00:00", "environment": {"version": "9.9"}, "model": {"source": "models/x"}}


def run_dataset(units: str) -> xr.Dataset:
    """A run as open_run gives it (string criterion coordinate, input_file, units of earlier versions)."""
    ds = xr.Dataset(
        {"samples_physical": (("sample", "y", "x"), np.zeros((2, 3, 3), np.float32), {"units": units}),
         "sample_criteria": (("sample", "criterion"), np.zeros((2, 2), np.float32)),
         "reconstruction_psnr": (("input",), np.array([30.0], np.float32), {"units": "dB"})},
        coords={"criterion": ["mean_distance_to_reference", "mean_angle_to_ood_deg"], "sample": [0, 1],
                "y": ("y", [0, 1, 2], {"units": "pixel"}), "x": [0, 1, 2], "input": [0],
                "input_file": ("input", ["sky é.fits"])},
    )
    ds.attrs = with_netcdf_note({"ood_run": RECORD, "ood_progress": {"inputs_written": True}})
    return ds


def test_criterion_becomes_an_index_with_a_label_variable() -> None:
    out = cf_dataset(run_dataset("MJy/sr"), RECORD)
    assert out["criterion"].dtype == np.int64 and list(out["criterion"].values) == [0, 1]
    assert list(out[CRITERION_NAME].values) == ["mean_distance_to_reference", "mean_angle_to_ood_deg"]
    assert out[CRITERION_NAME].dims == ("criterion",) and CRITERION_NAME in out.coords
    for name in (CRITERION_NAME, "input_file"):
        assert out[name].encoding["dtype"] == "S1"  # written as a netCDF char array


def test_units_are_udunits_and_the_fits_unit_is_kept() -> None:
    out = cf_dataset(run_dataset("MJy/sr"), RECORD)
    assert out["samples_physical"].attrs["units"] == "1e-20 W m-2 Hz-1 sr-1"
    assert out["samples_physical"].attrs[FITS_UNIT_ATTR] == "MJy/sr"
    assert out["y"].attrs["units"] == "1" and out["x"].attrs["units"] == "1"  # not "pixel"
    assert out["reconstruction_psnr"].attrs["units"] == "1" and "decibels" in out["reconstruction_psnr"].long_name
    unknown = cf_dataset(run_dataset("adu"), RECORD)["samples_physical"].attrs
    assert "units" not in unknown and unknown[FITS_UNIT_ATTR] == "adu"
    assert "units" not in cf_dataset(run_dataset(""), RECORD)["samples_physical"].attrs


def test_global_attributes_and_provenance_as_text() -> None:
    out = cf_dataset(run_dataset("K"), RECORD)
    assert list(out.attrs)[:3] == ["Conventions", "title", "history"] and out.attrs["Conventions"] == CONVENTIONS
    assert "r1" in out.attrs["title"] and "9.9" in out.attrs["source"]
    assert out.attrs["history"].splitlines()[0].startswith("2026-01-01T00:00:00+00:00 run r1 started")
    assert NETCDF_NOTE_ATTR not in out.attrs
    assert json.loads(out.attrs["ood_run"]) == RECORD


def test_plain_to_netcdf_stops_on_the_note_and_the_cf_form_writes(tmp_path: Path) -> None:
    ds = run_dataset("K")
    with pytest.raises(TypeError, match=r"Invalid value for attr 'ood_netcdf'.*ood export-netcdf"):
        ds.to_netcdf(f"{tmp_path}/plain.nc", engine="h5netcdf")
    cf_dataset(ds, RECORD).to_netcdf(f"{tmp_path}/cf.nc", engine="h5netcdf")
    with xr.open_dataset(f"{tmp_path}/cf.nc") as back:
        assert list(back["input_file"].values) == ["sky é.fits"]
        assert back["criterion_name"].dtype.kind in "UO"
