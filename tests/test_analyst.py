"""A finished run as the analyst meets it: plain xarray, netCDF, exported FITS headers, the inputs' order.

One small real run (project-made skies of 128 px in MJy/sr, tests/made_fits.py, block-averaged 2x to the shipped
64 px model) given in an
order that is not sorted, with a relative store path.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS
from made_fits import write_skies

from ood_core.pipeline import run_in_process
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import ExportExistsError, export_run_fits, open_run
from ood_core.store.netcdf import export_run_netcdf, netcdf_ready, run_provenance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("analyst")
    cutouts = write_skies(folder / "inputs", 4, unit="MJy/sr")
    inputs = [str(cutouts[2]), str(cutouts[0]), str(cutouts[3]), str(cutouts[1])]  # the user's order
    here = Path.cwd()
    os.chdir(folder)  # the store path is typed relative to where the user is
    try:
        params = PipelineParameters(inputs=inputs, store="store.zarr", samples=2, steps=6, t0=400,
                                    reference_count=4, batch_size=8, device="cpu", seed=3)
        result = run_in_process(params)
    finally:
        os.chdir(here)
    return {"store": str(folder / "store.zarr"), "run_id": result.run_id, "inputs": inputs, "folder": folder}


def test_inputs_are_stored_in_the_users_order(finished: dict[str, Any]) -> None:
    ds = open_run(finished["store"], finished["run_id"])
    assert [item["path"] for item in ds.attrs["ood_run"]["inputs"]] == finished["inputs"]
    assert list(ds["input_file"].values) == [Path(p).name for p in finished["inputs"]]


def test_plain_xarray_opens_the_run_consolidated_without_warning(finished: dict[str, Any]) -> None:
    group = f"runs/{finished['run_id']}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata missing" warning
        ds = xr.open_zarr(finished["store"], group=group, consolidated=False)
        # store schema 2: the run group holds its own consolidated metadata (the root none, issue 30)
        consolidated = xr.open_zarr(f"{finished['store']}/{group}", consolidated=True)
    assert set(consolidated.data_vars) == set(ds.data_vars) and set(consolidated.coords) == set(ds.coords)
    assert consolidated["reconstruction_psnr"].attrs["units"] == "1"  # the descriptions are in the copy too


def test_plain_xarray_shows_coordinates_names_and_units(finished: dict[str, Any]) -> None:
    ds = xr.open_zarr(finished["store"], group=f"runs/{finished['run_id']}", consolidated=False)
    for dim in ("sample", "input", "y", "x", "criterion"):
        assert dim in ds.coords and list(ds[dim].values) == list(range(ds.sizes[dim])), dim
        assert ds[dim].attrs["units"] == "1", dim  # index coordinates: UDUNITS' dimensionless, not "pixel"
    for name in (*ds.data_vars, *ds.coords):
        assert ds[name].attrs.get("long_name"), f"{name} has no long_name"
    assert ds["reconstruction_psnr"].attrs["units"] == "1" and "decibels" in ds["reconstruction_psnr"].long_name
    assert ds["samples_physical"].attrs["units"] == "MJy/sr"
    # names are attributes of the index coordinates (no string array: every zarr v3 reader opens every array)
    assert ds["input"].attrs["files"] == [Path(p).name for p in finished["inputs"]]
    assert ds["criterion"].attrs["names"][1] == "mean_angle_to_ood_deg"
    assert all(ds[name].dtype.kind in "biuf" for name in ds.variables)


def test_netcdf_export_round_trips_data_and_provenance(finished: dict[str, Any], tmp_path: Path) -> None:
    ds = open_run(finished["store"], finished["run_id"])
    assert isinstance(ds.attrs["ood_run"], dict)  # the library keeps the dict
    with pytest.raises(TypeError, match="ood export-netcdf"):  # plain to_netcdf stops on the note naming the way
        ds.to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
    netcdf_ready(ds).to_netcdf(tmp_path / "ready.nc", engine="h5netcdf")
    path = export_run_netcdf(finished["store"], tmp_path / "run.nc", finished["run_id"])
    for file in (tmp_path / "ready.nc", path):
        back = xr.open_dataset(file)
        np.testing.assert_array_equal(back["samples_physical"].values, ds["samples_physical"].values)
        np.testing.assert_array_equal(back["sample_seed"].values, ds["sample_seed"].values)
        assert back["sample_seed"].dtype == np.int64
        assert back["reconstruction_psnr"].attrs["units"] == "1"
        assert list(back["input_file"].values) == list(ds["input_file"].values)
        assert list(back["criterion_name"].values) == list(ds["criterion"].values)
        assert back.attrs["Conventions"].startswith("CF-")
        assert run_provenance(back) == json.loads(json.dumps(ds.attrs["ood_run"]))
        back.close()
    assert run_provenance(ds)["run_id"] == finished["run_id"]
    with pytest.raises(FileExistsError):
        export_run_netcdf(finished["store"], path, finished["run_id"])


def test_exported_fits_carry_pixel_scale_units_and_no_sky_position(finished: dict[str, Any], tmp_path: Path) -> None:
    paths = export_run_fits(finished["store"], tmp_path / "fits", finished["run_id"])
    ds = open_run(finished["store"], finished["run_id"])
    record = ds.attrs["ood_run"]
    assert len(paths) == 2
    for index, path in enumerate(paths):
        header = fits.getheader(path)
        parent = int(ds["sample_parent"].values[index])
        with fits.open(finished["inputs"][max(parent, 0)]) as hdul:
            source = WCS(hdul[0].header).celestial.pixel_scale_matrix
        assert header["OODBLOCK"] == 2
        np.testing.assert_allclose([[header["CD1_1"], header["CD1_2"]], [header["CD2_1"], header["CD2_2"]]],
                                   2 * source, rtol=1e-9)
        assert header["OODPIXSC"] == pytest.approx(2 * 0.4, rel=1e-3)  # made skies: 0.4 arcsec, 2x block
        assert header["CUNIT1"] == "deg" and header["CRPIX1"] == pytest.approx(32.5)
        # a linear, non-celestial WCS: offsets from the centre (CRVAL 0), no sky position
        assert (header["CTYPE1"], header["CTYPE2"], header["CRVAL1"], header["CRVAL2"]) == ("LINEAR", "LINEAR", 0, 0)
        assert header["CHECKSUM"] and header["DATASUM"]
        assert header["BUNIT"] == "MJy/sr"
        assert header["OODSTORE"] == finished["store"] and os.path.isabs(header["OODSTORE"])
        history = " ".join(str(h) for h in header["HISTORY"])
        assert f"candidates tried {record['sampler']['tried']}" in history
        assert "candidates tried None" not in history
        assert "128 -> 64 px (2x)" in history
        wcs = WCS(header)  # a linear offset WCS: readable, without a celestial frame
        assert not wcs.has_celestial


def test_export_into_a_folder_with_the_files_refuses_before_writing(finished: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "fits"
    first = export_run_fits(finished["store"], out, finished["run_id"])
    stamps = [p.stat().st_mtime_ns for p in first]
    with pytest.raises(ExportExistsError) as info:
        export_run_fits(finished["store"], out, finished["run_id"])
    assert "overwrite=True" in str(info.value) and first[0].name in str(info.value)
    assert isinstance(info.value, FileExistsError) and len(info.value.existing) == 2
    assert [p.stat().st_mtime_ns for p in first] == stamps
    assert export_run_fits(finished["store"], out, finished["run_id"], overwrite=True) == first
