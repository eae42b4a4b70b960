"""FITS export of a run's samples: data and provenance headers round-trip through astropy."""

from __future__ import annotations

import hashlib
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from made_fits import write_skies

from ood_core.store import RunNotCompleteError, RunWriter
from ood_core.store.fits_export import CRITERION_KEYWORDS, criterion_keyword, export_run_fits, history_lines

CRITERIA = ["mean_distance_to_reference", "mean_angle_to_ood_deg", "some_future_criterion"]
SHA = hashlib.sha256(b"weights").hexdigest()


@pytest.fixture
def skies(tmp_path: Path) -> list[Path]:
    """Three project-made skies whose BUNIT is mixed case, as the dev set's Bolocam cutouts have it."""
    return write_skies(tmp_path / "skies", 3, size=32, unit="Jy/Beam")


def provenance(paths: list[Path]) -> dict[str, Any]:
    return {
        "parameters": {"seed": 5, "t0": 500, "steps": 25, "eta": 0.0, "prior": "scalar"},
        "environment": {"version": "0.1.0", "git_commit": "a" * 40},
        "model": {"source": "models/base64", "weights_sha256": SHA},
        "inversion": {"t0": 600, "steps": 30},
        "generation": {"eta": 0.25},
        "prior": {"kind": "ppca"},
        "sampler": {"strategy": "slerp_ood_prior", "acceptance_rate": 0.375, "written": 3,
                    "candidates_tried": 8},
        "normalization": {"mode": "per_run"},
        "inputs": [{"path": str(p)} for p in paths],
    }


def write_run(store: str, paths: list[Path], complete: bool = True) -> tuple[str, np.ndarray, str]:
    images = np.stack([fits.getdata(p).astype(np.float32) for p in paths])
    unit = fits.getheader(paths[0])["BUNIT"]
    n, size = images.shape[0], images.shape[-1]
    writer = RunWriter.create(store, n_inputs=n, channels=1, height=size, width=size,
                              criterion_names=CRITERIA, provenance=provenance(paths), units=unit)
    writer.write_inputs(images[:, None], np.zeros((n, size, size), bool), images[:, None], images[:, None],
                        np.full(n, 35.0))
    criteria = np.array([[600.5, 88.25, 1.0], [601.0, 87.5, 2.0], [599.0, np.nan, 3.0]], np.float32)
    writer.append_samples(images[:, None], images, images[:, None], np.array([11, 12, 13]),
                          np.array([0, -1, 2]), criteria, np.array([1.5, 2.5, 3.5]))
    if complete:
        writer.complete()
    return writer.run_id, images, unit


def test_export_round_trips_data_and_headers(tmp_path: Path, skies: list[Path]) -> None:
    # a long store path exercises CONTINUE cards
    store = str(tmp_path / ("deeply_nested_folder_name_" * 3) / "store.zarr")
    run_id, images, unit = write_run(store, skies)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncated cards, no verification fixes
        paths = export_run_fits(store, tmp_path / "out")
    assert [p.name for p in paths] == [f"{run_id}_sample_{i:06d}.fits" for i in range(3)]
    assert unit == "Jy/Beam"

    for index, path in enumerate(paths):
        with fits.open(path) as hdul:
            hdul.verify("exception")
            header, data = hdul[0].header, hdul[0].data
            assert data.dtype == np.dtype(">f4")
            np.testing.assert_array_equal(data, images[index])
            assert header["BUNIT"] == "Jy/Beam"
            assert header["OODRUN"] == run_id
            assert header["OODSTORE"] == store
            assert header["OODIDX"] == index
            assert header["OODSEED"] == 11 + index
            assert header["OODPARNT"] == [0, -1, 2][index]
            assert header["OODNNDST"] == pytest.approx(1.5 + index)
            assert header["OODMSHA"] == SHA[:16]
            assert header["OODT0"] == 600 and header["OODSTEPS"] == 30  # inversion wins over parameters
            assert header["OODETA"] == 0.25 and header["OODPRIOR"] == "ppca"
            assert header["OODSTRAT"] == "slerp_ood_prior" and header["OODRATE"] == 0.375
            assert header["OODVERS"] == "0.1.0" and header["OODSCHEM"] == 2  # store schema 2 (issue 30)
            history = [str(h) for h in header["HISTORY"]]
            assert SHA in history
            assert f"run {run_id}" in history
            assert "criterion OODCRI03 = some_future_criterion" in history
            assert header.tostring()  # serialises as valid 80-character cards
            assert len(header.tostring()) % 80 == 0
            assert hdul[0].verify_checksum() == 1 and hdul[0].verify_datasum() == 1  # CHECKSUM/DATASUM present
    first = fits.getheader(paths[0])
    assert first["OODCDREF"] == pytest.approx(600.5)
    assert first["OODCAOOD"] == pytest.approx(88.25)
    assert first.comments["OODCAOOD"] == "mean_angle_to_ood_deg"
    assert first["OODCRI03"] == pytest.approx(1.0)
    assert "OODCAOOD" not in fits.getheader(paths[2])  # NaN criterion: keyword left out, not invalid


def test_export_refuses_incomplete_runs_and_picks_latest(tmp_path: Path, skies: list[Path]) -> None:
    store = f"memory://fits-export-{uuid.uuid4().hex}/store.zarr"
    first, _, _ = write_run(store, skies)
    writing, _, _ = write_run(store, skies, complete=False)
    with pytest.raises(RunNotCompleteError):
        export_run_fits(store, tmp_path / "x", run_id=writing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a store URL of middling length must not truncate its card
        paths = export_run_fits(store, tmp_path / "y")
    header = fits.getheader(paths[0])
    assert header["OODRUN"] == first and header["OODSTORE"] == store
    with pytest.raises(OSError):
        export_run_fits(store, tmp_path / "y")  # no silent overwrite
    assert len(export_run_fits(store, tmp_path / "y", overwrite=True)) == 3


def test_criterion_keywords_are_valid_fits_keywords() -> None:
    for position, name in enumerate([*CRITERION_KEYWORDS, "x", "y"]):
        keyword = criterion_keyword(name, position)
        assert len(keyword) <= 8 and keyword.isupper()
        fits.Card(keyword, 1.0).verify("exception")
    assert criterion_keyword("unknown", 4) == "OODCRI05"


@pytest.mark.parametrize(("text", "cards"), [
    ("started 2026-12-04T17:38:28.332547+00:00 ended 2026-12-04T17:43:43.640516+00:00",
     ["started 2026-12-04T17:38:28.332547+00:00 ended", "  2026-12-04T17:43:43.640516+00:00"]),
    ("inputs were centre-cropped and block-averaged (NaN-aware mean) to the model resolution before inversion",
     ["inputs were centre-cropped and block-averaged (NaN-aware mean) to the", "  model resolution before inversion"]),
    ("  /a/" + "b" * 80 + ".fits", ["  /a/" + "b" * 67, "    " + "b" * 13 + ".fits"]),  # a path longer than a card
    ("model weights sha256:", ["model weights sha256:"]),
    ("", []),
    ("caf\u00e9 r\u00e9sum\u00e9", ["caf? r?sum?"]),  # printable ASCII only
])
def test_history_is_wrapped_at_word_boundaries(text: str, cards: list[str]) -> None:
    assert history_lines(text) == cards
    assert all(len(card) <= 72 for card in cards)
