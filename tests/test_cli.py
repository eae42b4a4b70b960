"""The `ood` command: subcommands, exit codes (DESIGN 6b) and the demo end to end through the real console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from made_fits import write_skies

from ood_cli.main import EXIT_OK, EXIT_USAGE, build_parser, main
from ood_core.method.model import FrozenDiffusionModel
from ood_core.pipeline import run_in_process
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import list_runs, open_run

OOD = Path(sys.executable).parent / "ood"
SMALL = ["--samples", "2", "--steps", "8", "--t0", "400", "--device", "cpu", "--batch-size", "8"]


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory, shipped_model: FrozenDiffusionModel) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    store = folder / "store.zarr"
    inputs = [str(p) for p in write_skies(folder / "inputs", 3)]  # demo skies (tests/made_fits.py)
    params = PipelineParameters(inputs=inputs, store=str(store), samples=2, steps=8, t0=400, reference_count=4,
                                device="cpu", batch_size=8)
    run_in_process(params)
    return store


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("demo", "run", "runs", "export-fits", "export-netcdf", "evaluate", "train-base"):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args([command, "--help"])
        assert stop.value.code == 0
        assert "usage: ood " + command in capsys.readouterr().out


def test_version_module_entry_and_run_flags(capsys: pytest.CaptureFixture[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "ood_cli", "--version"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ood 0.1.0", done.stderr
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    assert "INPUT" in text and "glob" in text and "--quiet" in text and "--verbose" in text
    args = build_parser().parse_args(["run", "a.fits", "--store", "s.zarr", "--strategy", "slerp_ood_ood",
                                      "--reference-count", "8", "--novelty-factor", "0.3", "--normalization",
                                      "per_image", "--stretch", "sqrt", "--dtype", "bfloat16", "--resampling", "sum",
                                      "-q"])
    params = __import__("ood_cli.main", fromlist=["_parameters"])._parameters(args, ["a.fits"], "s.zarr")
    assert (params.strategy, params.reference_count, params.novelty_factor, params.normalization, params.stretch,
            params.dtype, params.resampling) == ("slerp_ood_ood", 8, 0.3, "per_image", "sqrt", "bfloat16", "sum")
    assert args.quiet and not args.verbose
    assert (params.calibrate, params.t0, params.prior) == (None, None, None)  # left to the calibration
    for flag, expected in (("--calibrate", True), ("--no-calibrate", False)):
        given = build_parser().parse_args(["run", "a.fits", "--store", "s.zarr", flag, "--t0", "450"])
        chosen = __import__("ood_cli.main", fromlist=["_parameters"])._parameters(given, ["a.fits"], "s.zarr")
        assert (chosen.calibrate, chosen.t0, chosen.given()) == (expected, 450, {"t0"})


def test_runs_lists_each_run_with_status_and_counts(finished_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(finished_store)]) == EXIT_OK
    lines = capsys.readouterr().out.strip().splitlines()
    run_id = list_runs(str(finished_store))[0].run_id
    assert lines[0].split()[:2] == ["run", "id"]
    row = lines[1].split()
    assert row[:4] == [run_id, "complete", "3", "2"]
    assert 0 < float(row[4]) <= 1


def test_export_fits_writes_one_file_per_sample(finished_store: Path, tmp_path: Path) -> None:
    assert main(["export-fits", str(finished_store), str(tmp_path / "fits")]) == EXIT_OK
    files = sorted((tmp_path / "fits").glob("*.fits"))
    ds = open_run(str(finished_store))
    assert len(files) == ds.sizes["sample"] == 2
    with fits.open(files[0]) as hdul:
        np.testing.assert_allclose(hdul[0].data, ds.samples_physical.values[0], rtol=1e-6)


def test_runs_says_why_a_failed_run_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ood_core.store import RunWriter

    store = str(tmp_path / "store.zarr")
    writer = RunWriter.create(store, n_inputs=3, channels=1, height=8, width=8, criterion_names=["a"],
                              provenance={"parameters": {}})
    writer.fail(ValueError("the GPU ran out of memory\nat stage sample"))
    assert main(["runs", store]) == EXIT_OK
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[:2] == [writer.run_id, "failed"]
    assert lines[2] == f"  {writer.run_id}: failed: ValueError: the GPU ran out of memory"


def test_export_into_a_folder_with_the_files_is_one_line_naming_overwrite(
    finished_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fits"
    assert main(["export-fits", str(finished_store), str(out)]) == EXIT_OK
    capsys.readouterr()
    assert main(["export-fits", str(finished_store), str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "overwrite=True" not in err, err
    assert main(["export-fits", str(finished_store), str(out), "--overwrite"]) == EXIT_OK


def test_export_netcdf_writes_a_file_xarray_reads(finished_store: Path, tmp_path: Path) -> None:
    import xarray as xr

    from ood_core.store.netcdf import run_provenance

    path = tmp_path / "run.nc"
    assert main(["export-netcdf", str(finished_store), str(path)]) == EXIT_OK
    with xr.open_dataset(path) as back:
        assert back.sizes["sample"] == 2 and run_provenance(back)["status"] == "complete"
    assert main(["export-netcdf", str(finished_store), str(path)]) == EXIT_USAGE


def test_bad_usage_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.zarr"
    # Out-of-bounds parameter: refused by the parameter model before anything runs.
    assert main(["run", str(tmp_path), "--store", str(store), "--samples", "0"]) == EXIT_USAGE
    assert "samples" in capsys.readouterr().err
    # A resolution the shipped model does not have.
    assert main(["run", str(tmp_path), "--store", str(store), "--resolution", "32"]) == EXIT_USAGE
    assert "64x64" in capsys.readouterr().err
    # A store that does not exist.
    assert main(["runs", str(tmp_path / "missing.zarr")]) == EXIT_USAGE
    assert not store.exists()


def _ood(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(cwd / "prefect-home")  # temporary local server, its own database
    return subprocess.run([str(OOD), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_run_with_nothing_usable_exits_2_naming_each_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.fits").write_bytes(b"")
    (bad / "notes.fits").write_text("not a FITS file")
    done = _ood("run", str(bad), "--store", str(tmp_path / "store.zarr"), *SMALL, cwd=tmp_path)
    assert done.returncode == EXIT_USAGE, done.stderr[-3000:]
    assert "empty.fits" in done.stderr and "notes.fits" in done.stderr
    assert not (tmp_path / "store.zarr").exists() or list_runs(str(tmp_path / "store.zarr")) == []


def test_run_on_mixed_units_exits_2_naming_files_units_and_the_flag(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    counts = write_skies(inputs, 2, size=128, prefix="counts")  # the demo skies' unit: adu (summed)
    bright = write_skies(inputs, 2, size=128, prefix="bright", unit="MJy/sr")  # averaged
    done = _ood("run", str(inputs), "--store", str(tmp_path / "store.zarr"), *SMALL, cwd=tmp_path)
    assert done.returncode == EXIT_USAGE, done.stderr[-3000:]
    assert all(p.name in done.stderr for p in [*counts, *bright]) and "(adu)" in done.stderr
    assert "(MJy/sr)" in done.stderr and "--resampling sum" in done.stderr
    assert not (tmp_path / "store.zarr").exists() or list_runs(str(tmp_path / "store.zarr")) == []


def test_demo_runs_end_to_end_and_says_where_the_store_is(tmp_path: Path) -> None:
    done = _ood("demo", "--out", str(tmp_path / "demo"), "--images", "6", *SMALL, cwd=tmp_path)
    assert done.returncode == EXIT_OK, done.stdout[-3000:] + done.stderr[-3000:]
    # Not a terminal: progress as plain lines on stderr, no bar; no third-party noise, no Prefect INFO lines.
    assert re.search(r"^ood: invert inputs: (\d+)/\1 \(100%\)$", done.stderr, re.M), done.stderr[-3000:]
    assert "ood: prior fit: 2/2 (100%)" in done.stderr and "ood: samples: 2/2 (100%)" in done.stderr
    assert "━" not in done.stdout + done.stderr
    noise = ("accelerate", "Task run", "Traceback", "telemetry")
    assert not [n for n in noise if n in done.stdout + done.stderr], done.stderr[-3000:]
    # no third-party warning (zarr's UnstableSpecificationWarning about a string array, UserWarning, ...)
    assert not re.findall(r"\w+Warning\b", done.stdout + done.stderr), done.stderr[-3000:]
    store = tmp_path / "demo" / "store.zarr"
    assert str(store) in done.stdout and "open_run(" in done.stdout
    runs = list_runs(str(store))
    assert [r.status for r in runs] == ["complete"] and runs[0].n_samples == 2
    ds = open_run(str(store))
    assert ds.samples_physical.attrs["units"] and ds.sizes["input"] == 6
    # The demo skies are single-band: the shipped one-channel model, one-channel samples.
    assert "mono64" in done.stdout and ds.sizes["channel"] == 1
    assert Path(ds.attrs["ood_run"]["model"]["source"]).name == "mono64"
    # Sky 5 of seed 0 has NaN bad columns: it goes through the user path (filled, masked) and is kept.
    with fits.open(tmp_path / "demo" / "inputs" / "sky_0_5.fits") as hdul:
        assert np.isnan(hdul[0].data).any()
    assert np.isfinite(ds.inputs.values).all()
    assert "sky_0_5.fits" in str(ds.attrs["ood_run"]["inputs"])


def test_console_script_is_installed() -> None:
    assert OOD.is_file() and shutil.which(str(OOD))


def test_run_in_a_terminal_shows_a_progress_bar(tmp_path: Path) -> None:
    """`python -m ood_cli run` with stdout on a pseudo-terminal: rich bars for each stage; stdout off a
    terminal gets none (the demo test above)."""
    import pty
    import select

    inputs = [str(p) for p in write_skies(tmp_path / "inputs", 3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), TERM="xterm-256color", COLUMNS="120",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ood_cli", "run", *inputs, "--store", str(tmp_path / "s.zarr"),
                             "--samples", "1", "--steps", "4", "--t0", "300", "--reference-count", "2",
                             "--device", "cpu", "--batch-size", "8"],
                            stdout=secondary, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    os.close(secondary)
    shown = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=900)
    os.close(primary)
    err = proc.stderr.read().decode() if proc.stderr else ""
    text = shown.decode(errors="replace")
    assert proc.returncode == EXIT_OK, text[-3000:] + err[-3000:]
    assert "━" in text and "\x1b[" in text  # a rich bar, redrawn in place
    for label in ("invert inputs", "reference latents", "prior fit", "samples"):
        assert label in text, label
    assert "100%" in text and "run " in text and "open_run(" in text
    assert "ood: invert inputs:" not in err  # lines are only for a stdout that is not a terminal


def test_train_base_takes_device_precision_and_sampler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-base", "--dtype", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err
    out = tmp_path / "model"
    assert main(["train-base", "--checkpoints", str(tmp_path / "ckpt"), "--out", str(out), "--total-steps", "1",
                 "--batch-size", "2", "--device", "cpu", "--dtype", "float32", "--sampler", "batched"]) == EXIT_OK
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps"] == 1 and log["batch_size"] == 2
    assert log["history"] == [{"start": 0, "end": 1, "device": "cpu", "device_name": "cpu", "dtype": "float32",
                               "sampler": "batched"}]
    assert (log["config"]["device"], log["config"]["sampler"]) == ("cpu", "batched")


def test_train_base_continues_an_exported_model_in_an_empty_checkpoint_folder(tmp_path: Path) -> None:
    common = ["--batch-size", "2", "--device", "cpu", "--channels", "1", "--data", "dead-leaves", "-q"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train-base", "--checkpoints", str(tmp_path / "a"), "--out", str(first), "--total-steps", "1",
                 *common]) == EXIT_OK
    assert main(["train-base", "--checkpoints", str(tmp_path / "b"), "--out", str(second), "--total-steps", "2",
                 "--continue-from", str(first), *common]) == EXIT_OK
    log = json.loads((second / "training_log.json").read_text())
    assert log["steps"] == 2 and len(log["loss_per_checkpoint"]) == 2  # step 1 carried over, step 2 trained here
    assert log["config"]["channels"] == 1 and log["data"]["sets"] == ["dead-leaves"]
