"""Multi-band runs: `ood run --bands` on g/r/i demo skies (tests/made_fits.py, laid out as HCG 88's SDSS images)
gives three-channel samples (the shipped three-channel model), per-band normalization, the band map in provenance,
and exported FITS cubes whose planes name their bands; a band/channel mismatch is refused before anything is
written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from made_fits import write_band_set

from ood_cli.main import EXIT_OK, EXIT_USAGE, main
from ood_core.io.bands import read_band_group, tile_band_group
from ood_core.method.normalization import denormalize, model_to_physical, prepare_band_batch
from ood_core.store import open_run
from ood_core.store.schema import validate_store

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL = ["--samples", "2", "--steps", "8", "--t0", "400", "--reference-count", "4", "--device", "cpu",
         "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def gri(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """g, r, i demo skies of 384 x 640 px on one grid, every header saying FILTER = g (as HCG 88's do)."""
    return [str(p) for p in write_band_set(tmp_path_factory.mktemp("gri"), "gri", shape=(384, 640))]


def test_bands_are_normalized_each_on_its_own(gri: list[str]) -> None:
    groups = tile_band_group(read_band_group(gri), 128)
    batch = prepare_band_batch(groups, resolution=64)
    assert batch.images.shape == (15, 3, 64, 64) and batch.per_band and len(batch.params) == 3
    assert len({p.vmax for p in batch.params}) == 3  # one fit per band, not one for all
    physical = model_to_physical(batch.images, batch.params, per_band=True)
    assert physical.shape == (15, 3, 64, 64)
    np.testing.assert_allclose(physical[:, 2], denormalize(batch.images[:, 2], batch.params[2]))
    assert batch.sources[0]["bands"][1]["path"] == gri[1] and batch.sources[0]["bands"][1]["name"] == "r"


def test_ood_run_bands_gives_three_channel_samples_whose_fits_name_their_bands(
    gri: list[str], tmp_path: Path
) -> None:
    store = tmp_path / "store.zarr"
    # The PPCA prior: six tiles of alike demo skies give a scalar prior whose draws all fall outside the band
    assert main(["run", "--bands", *gri, "--tile", "192", "--max-block", "3", "--prior", "ppca", "--store", str(store),
                 *SMALL]) == EXIT_OK
    assert validate_store(str(store)) == []
    ds = open_run(str(store))
    record = ds.attrs["ood_run"]
    assert Path(record["model"]["source"]).name == "base64"  # three bands: the shipped three-channel model
    assert ds.sizes["channel"] == 3 and ds.samples.shape[1] == 3
    assert ds.samples_physical.dims == ("sample", "channel", "y", "x") and ds.samples_physical.shape[1] == 3
    assert record["bands"]["names"] == ["g", "r", "i"] and record["normalization"]["per_band"] is True
    calibration = record["calibration"]  # enough tiles to calibrate, but its scores are single-band: off, says why
    assert calibration["enabled"] is False and "band groups" in calibration["reason"]
    assert [b["path"] for b in record["inputs"][0]["bands"]] == gri
    out = tmp_path / "fits"
    assert main(["export-fits", str(store), str(out)]) == EXIT_OK
    files = sorted(out.glob("*.fits"))
    assert len(files) == 2
    with fits.open(files[0]) as hdul:
        header, data = hdul[0].header, hdul[0].data
    assert data.shape == (3, 64, 64) and header["OODBANDS"] == 3
    assert [header[f"BAND{n}"] for n in (1, 2, 3)] == ["g", "r", "i"]
    assert header["BFILE3"] == "sky_i.fits" and header["BFILT3"] == "g"  # what the file's header says
    np.testing.assert_allclose(data, ds.samples_physical.values[0], rtol=1e-6)
    # Evaluating a band-group run is not implemented: refused with the reason, exit 2.
    assert main(["evaluate", str(store), "--reference", gri[0], "--out", str(tmp_path / "eval")]) == EXIT_USAGE


def test_a_band_channel_mismatch_is_refused_before_anything_is_written(
    gri: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store.zarr"
    mono = str(Path(__file__).resolve().parents[1] / "models" / "mono64")
    code = main(["run", "--bands", *gri, "--store", str(store), "--model", mono, *SMALL])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "3 bands but the model" in err and "reads 1 channel" in err and "--model" in err
    assert not store.exists()
    assert main(["run", gri[0], "--bands", *gri, "--store", str(store)]) == EXIT_USAGE
    assert "not both" in capsys.readouterr().err
    assert main(["run", "--bands", gri[0], "--store", str(store)]) == EXIT_USAGE
    assert "at least 2" in capsys.readouterr().err
    assert not store.exists()
