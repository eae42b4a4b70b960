"""A real run and its exports opened by readers this project did not write (README "Readers").

One small real run (project-made skies in MJy/sr, tests/made_fits.py, through the shipped model) is written with
today's code, exported as FITS and netCDF, and then opened by: tensorstore and zarrita (every array, values compared
with what zarr-python wrote), xarray over the oldest zarr-python the project supports for readers, fitsverify and
astropy's fitscheck (the FITS files), and the IOOS compliance checker for CF (the netCDF file). Each check is also
shown to fail on a planted defect: a string array of a type zarr v3 does not specify, a FITS file without checksums, a
netCDF file without ``Conventions``.
The readers live outside the project's virtual environment (`make readers`). A reader that is not installed
skips its test with the reason, except under CI (``CI`` set), where `make readers` has installed them: there a
missing reader fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from made_fits import write_skies

from ood_core.pipeline import run_in_process
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import export_run_fits
from ood_core.store.cf import CONVENTIONS, FITS_UNIT_ATTR
from ood_core.store.netcdf import export_run_netcdf
from ood_core.store.udunits import REPLACEMENTS, SI_PREFIXES, UDUNITS_SYMBOLS, udunits

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
READERS_DIR = ROOT / "tests" / "readers"
READERS_PYTHON = Path(os.environ.get("OOD_READERS_VENV", ROOT / ".venv-readers")) / "bin" / "python"
CF_TEST = "cf:" + CONVENTIONS.removeprefix("CF-")
ZARR_V3_CORE_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                      "float16", "float32", "float64", "complex64", "complex128"}
"""The data types of the zarr v3 core specification (plus raw bits ``r<N>``): what every v3 reader implements."""


def _need(available: bool, what: str) -> None:
    """Skip (not installed here) or, under CI, fail: CI installs every reader with `make readers`."""
    if available:
        return
    message = f"{what} is not installed (`make readers` installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"CI runs every reader, but {message}")
    pytest.skip(message)


def _readers_python() -> str:
    _need(READERS_PYTHON.is_file(), f"the readers' virtual environment {READERS_PYTHON.parent.parent}")
    return str(READERS_PYTHON)


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("interop")
    inputs = [str(p) for p in write_skies(folder / "inputs", 4, unit="MJy/sr")]
    store = str(folder / "store.zarr")
    params = PipelineParameters(inputs=inputs, store=store, samples=3, steps=4, t0=300, reference_count=2,
                                batch_size=8, device="cpu", seed=3)
    run_id = run_in_process(params).run_id
    fits_files = export_run_fits(store, folder / "fits", run_id)
    netcdf = export_run_netcdf(store, folder / "run.nc", run_id)
    return {"store": store, "run_id": run_id, "group": f"runs/{run_id}", "folder": folder,
            "fits": [str(p) for p in fits_files], "netcdf": str(netcdf)}


def _arrays(store: str, group: str) -> dict[str, dict[str, Any]]:
    """Every array of the group as this project's zarr-python reads it: dtype, shape, sha256 of the values."""
    import hashlib

    node = zarr.open_group(store, path=group, mode="r", zarr_format=3)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a planted string array
        for name, array in node.arrays():
            values = np.ascontiguousarray(array[...])
            sha = hashlib.sha256(values.tobytes()).hexdigest() if values.dtype.kind in "biufc" else None
            out[name] = {"dtype": str(values.dtype), "shape": list(values.shape), "sha256": sha}
    return out


def _non_portable(store: str, group: str) -> list[str]:
    """Arrays whose data type is not one of the zarr v3 core specification's."""
    folder = Path(store) / group
    found = []
    for path in sorted(folder.glob("*/zarr.json")):
        meta = json.loads(path.read_text())
        kind = meta.get("data_type")
        portable = isinstance(kind, str) and (kind in ZARR_V3_CORE_TYPES or re.fullmatch(r"r\d+", kind))
        if meta.get("node_type") == "array" and not portable:
            found.append(f"{path.parent.name}: {json.dumps(kind)}")
    return found


def _planted(run: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    """A copy of the run with one more array: names in zarr-python's ``fixed_length_utf32`` (the type earlier
    versions wrote ``input_file`` in), which the zarr v3 specification does not define."""
    store = str(tmp_path / "planted.zarr")
    shutil.copytree(Path(run["store"]) / run["group"], Path(store) / run["group"])
    shutil.copy(Path(run["store"]) / "zarr.json", Path(store) / "zarr.json")
    shutil.copy(Path(run["store"]) / "runs" / "zarr.json", Path(store) / "runs" / "zarr.json")
    group = zarr.open_group(store, path=run["group"], mode="r+", zarr_format=3, use_consolidated=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planted = group.create_array("planted", shape=(2,), dtype="<U8", dimension_names=("input2",))
        planted[:] = np.array(["a.fits", "b.fits"])
    return store, run["group"]


def _mismatches(expected: dict[str, dict[str, Any]], read: dict[str, dict[str, Any]]) -> list[str]:
    problems = [f"{name}: not read" for name in expected if name not in read]
    for name, got in read.items():
        if "error" in got:
            problems.append(f"{name}: {got['error'][:200]}")
        elif name in expected and (got["sha256"], list(got["shape"])) != (expected[name]["sha256"],
                                                                          expected[name]["shape"]):
            problems.append(f"{name}: values differ from zarr-python's")
    return problems


def _tensorstore(store: str, group: str) -> dict[str, dict[str, Any]]:
    done = _run([_readers_python(), str(READERS_DIR / "read_zarr.py"), "tensorstore", store, group])
    assert done.returncode == 0, done.stderr[-3000:]
    return {line["name"]: line for line in map(json.loads, done.stdout.splitlines())}


def _zarrita(store: str, group: str) -> dict[str, dict[str, Any]]:
    node = shutil.which("node")
    _need(node is not None and (READERS_DIR / "node_modules" / "zarrita").is_dir(), "zarrita (node)")
    done = _run([str(node), str(READERS_DIR / "read_zarrita.mjs"), store, group])
    assert done.returncode == 0, done.stderr[-3000:]
    return {line["name"]: line for line in map(json.loads, done.stdout.splitlines())}


def test_every_array_has_a_zarr_v3_core_data_type(run: dict[str, Any], tmp_path: Path) -> None:
    assert _non_portable(run["store"], run["group"]) == []
    assert _non_portable(*_planted(run, tmp_path)) == ['planted: {"name": "fixed_length_utf32", '
                                                      '"configuration": {"length_bytes": 32}}']


@pytest.mark.parametrize("reader", [_tensorstore, _zarrita], ids=["tensorstore", "zarrita"])
def test_an_independent_zarr_reader_reads_every_array_bit_identical(run: dict[str, Any], reader: Any) -> None:
    expected = _arrays(run["store"], run["group"])
    assert {"samples", "samples_physical", "criterion", "input", "input_mask", "sample_seed"} <= set(expected)
    read = reader(run["store"], run["group"])
    assert _mismatches(expected, read) == []
    assert set(read) == set(expected)


@pytest.mark.parametrize("reader", [_tensorstore, _zarrita], ids=["tensorstore", "zarrita"])
def test_the_reader_check_fails_on_a_planted_string_array(run: dict[str, Any], tmp_path: Path,
                                                          reader: Any) -> None:
    store, group = _planted(run, tmp_path)
    problems = _mismatches(_arrays(store, group), reader(store, group))
    assert len(problems) == 1 and problems[0].startswith("planted: "), problems


def test_the_oldest_supported_zarr_python_with_xarray_opens_the_run(run: dict[str, Any]) -> None:
    done = _run([_readers_python(), str(READERS_DIR / "read_zarr.py"), "xarray", run["store"], run["group"]])
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["zarr"].startswith("3.0.") and found["xarray"] == "2025.6.1"
    expected = xr.open_zarr(run["store"], group=run["group"], consolidated=False)
    for how in ("consolidated", "plain"):
        opened = found[how]
        assert "error" not in opened, opened
        assert opened["warnings"] == [], opened["warnings"]
        assert opened["sizes"] == {str(k): int(v) for k, v in expected.sizes.items()}
        assert set(opened["variables"]) == {str(v) for v in expected.variables}
        assert opened["variables"]["criterion"]["attrs"]["names"] == [
            "mean_distance_to_reference", "mean_angle_to_ood_deg", "mean_pair_angle_at_candidate_deg"]
        assert len(opened["variables"]["input"]["attrs"]["files"]) == expected.sizes["input"]
    samples = opened["variables"]["samples_physical"]
    import hashlib

    values = np.ascontiguousarray(expected["samples_physical"].values)
    assert samples["sha256"] == hashlib.sha256(values.tobytes()).hexdigest()


def _fitsverify(paths: list[str]) -> tuple[int, int, str]:
    """(warnings, errors) summed over the files, from fitsverify's own summary lines."""
    program = shutil.which("fitsverify")
    _need(program is not None, "fitsverify (Debian package fitsverify)")
    done = _run([str(program), *paths])
    counts = re.findall(r"Verification found (\d+) warning\(s\) and (\d+) error\(s\)", done.stdout)
    assert len(counts) == len(paths), done.stdout[-3000:]
    return sum(int(w) for w, _ in counts), sum(int(e) for _, e in counts), done.stdout


def _fitscheck(paths: list[str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from astropy.io.fits.scripts.fitscheck import main; sys.exit(main())"
    return _run([sys.executable, "-c", code, *paths])


def test_fitsverify_and_fitscheck_pass_the_fits_exports(run: dict[str, Any]) -> None:
    assert len(run["fits"]) == 3
    warnings_found, errors, text = _fitsverify(run["fits"])
    assert (warnings_found, errors) == (0, 0), text[-3000:]
    checked = _fitscheck(run["fits"])
    assert checked.returncode == 0 and "error" not in checked.stdout + checked.stderr, checked.stdout


def test_the_fits_checks_fail_on_a_file_without_checksums_or_ctype(run: dict[str, Any], tmp_path: Path) -> None:
    from astropy.io import fits

    with fits.open(run["fits"][0]) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data.copy()
    for keyword in ("CHECKSUM", "DATASUM"):
        del header[keyword]
    plain = tmp_path / "no_checksum.fits"
    fits.PrimaryHDU(data, header).writeto(plain)
    checked = _fitscheck([str(plain)])
    assert checked.returncode == 1 and "MISSING" in checked.stdout + checked.stderr
    for keyword in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2"):  # what exports of earlier versions lacked
        del header[keyword]
    old = tmp_path / "no_ctype.fits"
    fits.PrimaryHDU(data, header).writeto(old, checksum=True)
    assert _fitsverify([str(old)])[:2] == (2, 0)


def _compliance(path: str, tmp_path: Path) -> dict[str, Any]:
    program = READERS_PYTHON.parent / "compliance-checker"
    _need(program.is_file(), "compliance-checker (in the readers' virtual environment)")
    report = tmp_path / f"{Path(path).stem}.json"
    _run([str(program), "-t", CF_TEST, "-c", "strict", "-f", "json", "-o", str(report), path])
    result: dict[str, Any] = json.loads(report.read_text())[CF_TEST]
    return result


def _failures(result: dict[str, Any]) -> list[str]:
    return [f"{item['name']}: {item['msgs']}" for item in result["all_priorities"]
            if item["value"][0] < item["value"][1]]


def test_the_cf_checker_passes_the_netcdf_export(run: dict[str, Any], tmp_path: Path) -> None:
    result = _compliance(run["netcdf"], tmp_path)
    assert _failures(result) == [] and result["scored_points"] == result["possible_points"]
    with xr.open_dataset(run["netcdf"]) as back:  # what the CF form looks like to an analyst
        assert back.attrs["Conventions"] == CONVENTIONS and back.attrs["title"] and back.attrs["history"]
        assert list(back["criterion"].values) == [0, 1, 2] and back["criterion_name"].dims == ("criterion",)
        assert back["samples_physical"].attrs[FITS_UNIT_ATTR] == "MJy/sr"
        assert back["samples_physical"].attrs["units"] == "1e-20 W m-2 Hz-1 sr-1"


def test_the_cf_checker_fails_on_a_netcdf_file_without_conventions(run: dict[str, Any], tmp_path: Path) -> None:
    with xr.open_dataset(run["netcdf"]) as back:
        planted = back.load()
    del planted.attrs["Conventions"]
    path = tmp_path / "no_conventions.nc"
    planted.to_netcdf(path, engine="h5netcdf")
    failures = _failures(_compliance(str(path), tmp_path))
    assert len(failures) == 1 and "Conventions" in failures[0], failures


def test_udunits_accepts_every_unit_the_export_writes(tmp_path: Path) -> None:
    """The symbols :mod:`ood_core.store.udunits` writes, checked against UDUNITS-2 itself (cf-units)."""
    python = _readers_python()
    units = sorted(UDUNITS_SYMBOLS) + [f"{p}m" for p in SI_PREFIXES] + [
        " ".join(f"{s}{p}" for s, p in factors) for _, factors in REPLACEMENTS.values()]
    units += [str(udunits(text)) for text in ("MJy/sr", "K km/s", "mJy", "10**(-17) erg/s/cm2/Angstrom", "deg")]
    code = ("import json, sys, cf_units\nbad = []\nfor text in json.loads(sys.argv[1]):\n"
            "    try:\n        cf_units.Unit(text)\n    except ValueError:\n        bad.append(text)\n"
            "print(json.dumps(bad))")
    done = _run([python, "-c", code, json.dumps(units)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == []
    done = _run([python, "-c", code, json.dumps(["MJy/sr", "pixel", "dB", "pc"])])  # what UDUNITS refuses
    assert json.loads(done.stdout) == ["MJy/sr", "pixel", "dB", "pc"]


def test_plain_to_netcdf_of_a_run_says_how_to_export_it(run: dict[str, Any], tmp_path: Path) -> None:
    ds = xr.open_zarr(run["store"], group=run["group"])
    with pytest.raises(TypeError, match=r"ood export-netcdf .*netcdf_ready"):
        ds.to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
