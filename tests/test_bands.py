"""Band groups: alignment of a band on another grid with reproject, band names from headers or file names, matching
tiles, refusals, on band sets written here (demo skies sharing a TAN WCS); and the dev set's real multi-band data
(HCG 88 SDSS g/r/i, 2MASS J/H/K of the Galactic Centre; marked devdata)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from made_fits import write_band_set

from ood_core.errors import InvalidInputError
from ood_core.io.bands import read_band_group, tile_band_group


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """g, r, i skies of 384 x 640 px on one TAN grid, every header saying FILTER = g (as HCG 88's do), and J, H, K
    skies on a grid elsewhere on the sky whose headers name their bands."""
    folder = tmp_path_factory.mktemp("bands")
    write_band_set(folder, "gri", shape=(384, 640))
    field = write_band_set(folder, "JHK", shape=(200, 200), seed=30, prefix="field", filter_header=None)
    for path in field:  # elsewhere on the sky
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["CRVAL1"] = (hdul[0].header["CRVAL1"] + 90.0) % 360.0
    return folder


def test_names_come_from_files_when_the_headers_all_say_g(images: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ood_core"):
        group = read_band_group([images / f"sky_{b}.fits" for b in "gri"])
    assert group.names == ["g", "r", "i"] and group.reprojected == [False, False, False]
    assert "taken from the file names" in caplog.text
    band_map = group.band_map()
    assert [b["FILTER"] for b in band_map] == ["g", "g", "g"]  # what the headers say, recorded beside the name
    assert [b["channel"] for b in band_map] == [0, 1, 2] and band_map[2]["path"].endswith("sky_i.fits")
    assert not np.array_equal(group.bands[0].data, group.bands[2].data)


def test_names_come_from_band_headers(images: Path) -> None:
    group = read_band_group([images / f"field_{b}.fits" for b in "JHK"])
    assert group.names == ["J", "H", "K"] and group.shape == (200, 200)


def test_a_band_on_another_grid_is_reprojected_onto_the_first(images: Path, tmp_path: Path) -> None:
    with fits.open(images / "sky_r.fits") as hdul:
        wcs = WCS(hdul[0].header)
        cut = Cutout2D(hdul[0].data, (300, 200), (200, 300), wcs=wcs)
        header = hdul[0].header.copy()
    header.update(cut.wcs.to_header())
    header["FILTER"] = "r"
    fits.writeto(tmp_path / "r_cut.fits", cut.data, header)
    whole = read_band_group([images / "sky_g.fits", images / "sky_r.fits"])
    moved = read_band_group([images / "sky_g.fits", tmp_path / "r_cut.fits"])
    assert moved.reprojected == [False, True] and moved.shape == whole.shape
    covered = ~moved.bands[1].mask
    assert 0.1 < covered.mean() < 0.3  # the 200x300 cutout covers its part of the 384x640 grid, the rest is masked
    # An integer-pixel cutout lands back on the original pixels.
    np.testing.assert_allclose(moved.bands[1].data[covered], whole.bands[1].data[covered], rtol=1e-6)
    assert "reprojected onto sky_g.fits" in str(moved.bands[1].plane)
    tiles = tile_band_group(moved, 128)
    assert tiles and all(len({b.shape for b in t.bands}) == 1 for t in tiles)
    assert len(tiles) < len(tile_band_group(whole, 128))  # tiles mostly outside the cutout are dropped


def test_tiles_match_across_bands(images: Path) -> None:
    group = read_band_group([images / f"sky_{b}.fits" for b in "gri"])
    tiles = tile_band_group(group, 128)
    assert len(tiles) == (384 // 128) * (640 // 128)
    for tile in tiles:
        assert len({b.plane for b in tile.bands}) == 1 and tile.names == ["g", "r", "i"]


def test_refusals(images: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="at least 2 files"):
        read_band_group([images / "sky_g.fits"])
    # No WCS and another shape: cannot be aligned.
    fits.writeto(tmp_path / "nowcs.fits", np.random.default_rng(0).normal(size=(100, 120)).astype(np.float32))
    with pytest.raises(InvalidInputError, match=r"nowcs\.fits.*cannot be aligned"):
        read_band_group([images / "sky_g.fits", tmp_path / "nowcs.fits"])
    # Another part of the sky: no overlap.
    with pytest.raises(InvalidInputError, match="does not overlap"):
        read_band_group([images / "sky_g.fits", images / "field_K.fits"])


@pytest.mark.devdata
def test_the_dev_sets_band_sets_are_named_and_tiled(fits_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = fits_dir / "images"
    with caplog.at_level(logging.WARNING, logger="ood_core"):
        hcg88 = read_band_group([images / f"galaxy_HCG88_SDSS_{b}.fits" for b in "gri"])
    assert hcg88.names == ["g", "r", "i"] and "taken from the file names" in caplog.text  # r and i say FILTER = g
    assert len(tile_band_group(hcg88, 128)) == 15
    two_mass = read_band_group([images / f"starfield_GC_2MASS_{b}.fits" for b in "JHK"])
    assert two_mass.names == ["J", "H", "K"] and two_mass.shape == (720, 721)
    with pytest.raises(InvalidInputError, match="does not overlap"):
        read_band_group([images / "galaxy_HCG88_SDSS_g.fits", images / "starfield_GC_2MASS_K.fits"])
