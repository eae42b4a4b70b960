"""Names of criteria and inputs kept in attributes (no string arrays), and runs of earlier versions, which stored
them as string arrays, read the same by the project's readers (open_run, schema, FITS and netCDF export)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import store_writer_proc as proc
import xarray as xr
import zarr

from ood_core.store import export_run_fits, open_run, validate_store
from ood_core.store.cf import CRITERION_NAME
from ood_core.store.consolidation import consolidate_store
from ood_core.store.integrity import CHECKSUM_ATTR, digest_run
from ood_core.store.labels import decode_labels, input_file_names, string_array
from ood_core.store.netcdf import netcdf_ready

LEGACY_STORE = Path(__file__).resolve().parent / "data" / "legacy_run"


def _legacy(store: str, run_id: str) -> None:
    """Turn a complete run into the layout of earlier versions: ``criterion`` a vlen-string array, ``input_file``
    a fixed-width unicode array (zarr-python's ``fixed_length_utf32``), units ``pixel`` and ``dB``, no names in
    attributes and no netCDF note; checksums and consolidated metadata rewritten as those versions wrote them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's warning about fixed_length_utf32: what those versions wrote
        _write_legacy(store, run_id)


def _write_legacy(store: str, run_id: str) -> None:
    group = zarr.open_group(store, path=f"runs/{run_id}", mode="r+", zarr_format=3, use_consolidated=False)
    names = group["criterion"].attrs["names"]
    files = group["input"].attrs["files"]
    criterion = group.create_array("criterion", shape=(len(names),), dtype=np.dtypes.StringDType(),
                                   dimension_names=("criterion",), overwrite=True,
                                   attributes={"long_name": "name of the geometric screening criterion"})
    criterion[:] = np.array(names, dtype=np.dtypes.StringDType())
    group.create_array("input_file", data=np.array(files), dimension_names=("input",),
                       attributes={"long_name": "input file name (and plane or tile)"})
    del group["input"].attrs["files"]
    for name in ("y", "x"):
        group[name].update_attributes({"units": "pixel"})
    group["reconstruction_psnr"].update_attributes({"units": "dB", "coordinates": "input_file"})
    attrs = {k: v for k, v in group.attrs.items() if k != "ood_netcdf"}
    attrs[CHECKSUM_ATTR] = digest_run(group)
    group.attrs.clear()
    group.update_attributes(attrs)
    consolidate_store(store)


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """The same run written twice: today's layout and the layout of earlier versions."""
    out = {}
    for layout in ("today", "legacy"):
        store = str(tmp_path / layout / "store.zarr")
        run_id = proc.write_complete_run(store, seed=5)
        if layout == "legacy":
            _legacy(store, run_id)
        out[layout] = (store, run_id)
    return out


def test_a_run_stores_no_string_array_and_names_in_attributes(runs: dict[str, tuple[str, str]]) -> None:
    store, run_id = runs["today"]
    group = zarr.open_group(store, path=f"runs/{run_id}", mode="r", zarr_format=3)
    assert all(np.dtype(array.dtype).kind in "biuf" for _, array in group.arrays())
    assert group["criterion"].attrs["names"] == list(proc.CRITERIA)
    assert list(group["criterion"][...]) == [0, 1, 2]
    assert group["input"].attrs["files"] == [f"input_{i}.fits" for i in range(proc.N_INPUTS)]
    assert next(iter(group.attrs)) == "ood_netcdf"  # first: a plain to_netcdf() stops on it


@pytest.mark.parametrize("layout", ["today", "legacy"])
def test_open_run_gives_names_as_coordinates_in_either_layout(runs: dict[str, tuple[str, str]], layout: str) -> None:
    store, run_id = runs[layout]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zarr warning about the legacy string arrays reaches the user
        ds = open_run(store, run_id)
    assert list(ds["criterion"].values) == list(proc.CRITERIA) and ds["criterion"].dtype.kind == "U"
    assert list(ds["input_file"].values) == [f"input_{i}.fits" for i in range(proc.N_INPUTS)]
    assert ds["input_file"].dims == ("input",) and "files" not in ds["input"].attrs
    assert float(ds["sample_criteria"].sel(criterion="mean_angle_to_ood_deg")[0]) == pytest.approx(
        float(ds["sample_criteria"][0, 1]))
    assert next(iter(ds.attrs)) == "ood_netcdf"
    assert validate_store(store) == []


def test_both_layouts_read_alike_and_export_alike(runs: dict[str, tuple[str, str]], tmp_path: Path) -> None:
    today, legacy = (open_run(*runs[layout]) for layout in ("today", "legacy"))
    for name in ("criterion", "input_file", "sample_criteria", "samples_physical"):
        xr.testing.assert_equal(today[name], legacy[name])
    ready = {layout: netcdf_ready(ds) for layout, ds in (("today", today), ("legacy", legacy))}
    for ds in ready.values():
        assert list(ds[CRITERION_NAME].values) == list(proc.CRITERIA) and list(ds["criterion"].values) == [0, 1, 2]
        assert ds["x"].attrs["units"] == "1" and ds["reconstruction_psnr"].attrs["units"] == "1"
        assert "ood_netcdf" not in ds.attrs and json.loads(ds.attrs["ood_run"])["status"] == "complete"
        ds.to_netcdf(tmp_path / "run.nc", engine="h5netcdf")
    store, run_id = runs["legacy"]
    paths = export_run_fits(store, tmp_path / "fits", run_id)
    assert len(paths) == proc.N_BATCHES * proc.BATCH


def test_an_older_run_on_disk_still_opens(tmp_path: Path) -> None:
    """A run written by the store code before this layout (tests/data/legacy_run, see tests/data/README.md): its
    string arrays are read through zarr-python without a warning, its names become coordinates."""
    store = tmp_path / "store.zarr"
    shutil.copytree(LEGACY_STORE, store)
    meta = json.loads(next(store.glob("runs/*/input_file/zarr.json")).read_text())
    assert meta["data_type"]["name"] == "fixed_length_utf32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_run(str(store))
    assert str(ds["criterion"].values[0]) == "mean_distance_to_reference"
    assert list(ds["input_file"].values) == ["sky_a.fits", "sky_b.fits [tile 0,1]"]
    assert validate_store(str(store)) == [] and len(export_run_fits(str(store), tmp_path / "fits")) == 3
    assert "criterion_name" in netcdf_ready(ds).coords


def test_decode_labels_leaves_a_dataset_without_names_alone() -> None:
    ds = xr.Dataset(coords={"criterion": [0, 1], "input": [0, 1, 2]})
    assert decode_labels(ds).identical(ds)
    wrong = ds.assign_coords(criterion=("criterion", [0, 1], {"names": ["only one"]}))
    assert list(decode_labels(wrong)["criterion"].values) == [0, 1]  # a names list of the wrong length is ignored


def test_input_file_names_and_string_arrays() -> None:
    record = {"inputs": [{"path": "/a/b.fits"}, {"path": "c.fits", "plane": "tile 0,1"}, "d.fits"]}
    assert input_file_names(record, 3) == ["b.fits", "c.fits [tile 0,1]", "d.fits"]
    assert input_file_names(record, 2) is None and input_file_names({}, 3) is None
    mixed = np.array(["a", "bé"], dtype=np.dtypes.StringDType())
    assert string_array(mixed).dtype.kind == "U" and list(string_array(mixed)) == ["a", "bé"]
    assert list(string_array(np.array([b"x", b"yz"]))) == ["x", "yz"]
