"""FITS reading: formats and edge cases on files written here (demo skies, astropy into tmp_path), bad files,
batches, tiling; and every real file of the dev set (OOD_DEV_DATA, marked devdata)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from devdata import MANIFEST
from made_fits import write_skies

from ood_core.base_model.demo_skies import SkyConfig, make_sky
from ood_core.errors import (
    CorruptFitsError,
    EmptyImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidInputError,
    MissingInputError,
    NoImageHDUError,
    NotFitsError,
    TruncatedFitsError,
    WrongDimensionError,
)
from ood_core.io.fits import (
    DEFAULT_MAX_PIXELS,
    FitsImage,
    QuarantinedInput,
    expand_inputs,
    read_fits_batch,
    read_fits_image,
    tile_cutouts,
    unmatched_inputs,
)


def _manifest_rows() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------------------
# Every real file


@pytest.mark.devdata  # without the set: one placeholder, skipped with the set's reason
@pytest.mark.parametrize("row", _manifest_rows() or [{"file": "no-dev-set"}], ids=lambda row: row["file"])
def test_every_manifest_file_reads_as_listed(fits_dir: Path, row: dict[str, str]) -> None:
    image = read_fits_image(fits_dir / row["file"])
    expected_shape = tuple(int(n) for n in row["shape"].split("x"))[-2:]  # a cube gives its moment 0
    assert image.shape == expected_shape
    assert image.data.dtype == np.float32 and image.mask.dtype == np.bool_
    assert int(image.mask.sum()) == int(row["n_nan"])
    assert np.array_equal(image.mask, np.isnan(image.data))
    assert image.sha256.startswith(row["sha256_16"])
    assert image.hdu_index == int(row["hdu"])
    # M67 has no CTYPE (manifest wcs=False) but a DSS plate solution, which astropy turns into a TAN WCS.
    dss_plate = "PLTRAH" in image.header
    assert (image.wcs is not None) == (row["wcs"] == "True" or dss_plate)
    if image.wcs is not None:
        assert image.wcs.naxis == 2 and image.wcs.has_celestial
    assert image.plane == ("moment0" if len(row["shape"].split("x")) == 3 else None)


def test_manifest_is_complete(fits_dir: Path) -> None:
    listed = {row["file"] for row in _manifest_rows()}
    on_disk = {str(p.relative_to(fits_dir)) for p in fits_dir.glob("*/*.fits")}
    assert listed == on_disk and len(listed) == 82



# ---------------------------------------------------------------------------------------------------------
# Files the project makes (tests/made_fits.py and astropy into tmp_path): what the dev set's files exercise,
# without the dev set


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo skies and edge-case files written with astropy: the formats the dev set's files exercise."""
    folder = tmp_path_factory.mktemp("made")
    skies = write_skies(folder / "skies", 5)
    data, header = make_sky(SkyConfig(size=320, nan_hole_probability=0.0), seed=7)
    wcs = WCS(header)
    wide = folder / "wide.fits"  # 300 x 260 with a TAN WCS, cut from a 320 px sky by WCS slicing
    fits.PrimaryHDU(data[:300, :260], wcs[:300, :260].to_header()).writeto(wide)
    counts = folder / "counts_uint16.fits"  # astropy stores uint16 as int16 with BZERO = 32768
    fits.PrimaryHDU(np.clip(np.round(data * 100), 0, 65535).astype(np.uint16), header).writeto(counts)
    scaled = folder / "scaled_int16.fits"  # float data packed into int16 with BSCALE / BZERO
    hdu = fits.PrimaryHDU(np.clip(data, 0.0, 10_000.0).astype(np.float64), header)
    hdu.scale("int16", bscale=0.25, bzero=3000.0)
    hdu.writeto(scaled)
    with_table = folder / "image_then_table.fits"  # as DSS2 cutouts carry an "er.mask" table after the image
    table = fits.BinTableHDU.from_columns([fits.Column(name="flag", format="J", array=np.zeros(3))], name="er.mask")
    fits.HDUList([fits.PrimaryHDU(np.round(data[:200, :180]).astype(np.int16), header), table]).writeto(with_table)
    cube = folder / "cube.fits"  # RA, Dec, velocity: 7 planes
    cube_wcs = WCS(naxis=3)
    cube_wcs.wcs.ctype = ["RA---TAN", "DEC--TAN", "VRAD"]
    cube_wcs.wcs.crval, cube_wcs.wcs.crpix = [51.3, 30.8, 0.0], [40.0, 30.0, 1.0]
    cube_wcs.wcs.cdelt, cube_wcs.wcs.cunit = [-1e-3, 1e-3, 250.0], ["deg", "deg", "m/s"]
    planes = np.stack([data[:80, :96] * (k + 1) / 7 for k in range(7)]).astype(np.float32)
    fits.PrimaryHDU(planes, cube_wcs.to_header()).writeto(cube)
    edges = folder / "nan_edges.fits"  # a sky with NaN borders, as the Bolocam map has
    holed = data.copy()
    holed[:, :45], holed[:37, :], holed[300:, 290:] = np.nan, np.nan, np.nan
    fits.PrimaryHDU(holed, header).writeto(edges)
    small = folder / "small_149.fits"
    fits.PrimaryHDU(data[:149, :149], header).writeto(small)
    return {"sky": skies[0], "skies": skies[0].parent, "wide": wide, "counts": counts, "scaled": scaled,
            "with_table": with_table, "cube": cube, "nan_edges": edges, "small": small}


def test_uint16_bzero_file_gives_unsigned_counts(made: dict[str, Path]) -> None:
    image = read_fits_image(made["counts"])
    stored = fits.getdata(made["counts"], do_not_scale_image_data=True)  # int16 as written, BZERO not applied
    assert stored.dtype.kind == "i" and fits.getheader(made["counts"])["BZERO"] == 32768
    assert np.array_equal(image.data, stored.astype(np.float32) + 32768.0)
    assert image.data.min() >= 0 and image.data.max() <= 65535 and image.data.max() > 32767


def test_bscale_bzero_int16_file_is_scaled(made: dict[str, Path]) -> None:
    image = read_fits_image(made["scaled"])
    header = fits.getheader(made["scaled"])
    stored = fits.getdata(made["scaled"], do_not_scale_image_data=True)
    assert stored.dtype == np.dtype(">i2") and (header["BSCALE"], header["BZERO"]) == (0.25, 3000.0)
    expected = stored.astype(np.float64) * 0.25 + 3000.0
    np.testing.assert_allclose(image.data, expected, rtol=1e-6)


def test_image_with_a_table_hdu_after_it_is_read_and_the_table_refused_when_named(made: dict[str, Path]) -> None:
    path = made["with_table"]
    image = read_fits_image(path)
    assert image.hdu_index == 0 and image.shape == (200, 180) and image.wcs is not None
    with pytest.raises(NoImageHDUError, match="not an image") as info:
        read_fits_image(path, hdu=1)
    assert "1 ER.MASK BINTABLE" in str(info.value) and path.name in str(info.value)
    assert read_fits_image(path, hdu="PRIMARY").hdu_index == 0


def test_cube_moment0_is_the_sum_of_planes_and_a_plane_can_be_chosen(made: dict[str, Path]) -> None:
    cube = fits.getdata(made["cube"]).astype(np.float64)
    moment0 = read_fits_image(made["cube"])
    assert moment0.plane == "moment0" and moment0.shape == (80, 96)
    np.testing.assert_allclose(moment0.data, cube.sum(axis=0), rtol=1e-5)
    assert moment0.wcs is not None and moment0.wcs.naxis == 2 and moment0.wcs.has_celestial
    plane = read_fits_image(made["cube"], cube_plane=3)
    assert plane.plane == "plane=3"
    np.testing.assert_array_equal(plane.data, cube[3].astype(np.float32))
    assert plane.wcs is not None and plane.wcs.naxis == 2
    with pytest.raises(WrongDimensionError, match="7 planes"):
        read_fits_image(made["cube"], cube_plane=9)


def test_metadata_is_json_safe_and_carries_header_keywords(made: dict[str, Path]) -> None:
    image = read_fits_image(made["wide"])
    meta = json.loads(json.dumps(image.metadata()))
    assert meta["shape"] == [300, 260] and meta["hdu"] == 0 and meta["plane"] is None
    assert meta["OBJECT"] is None and len(meta["sha256"]) == 64  # keywords the file lacks are None
    sky = json.loads(json.dumps(read_fits_image(made["sky"]).metadata()))
    assert sky["BUNIT"] == "adu" and sky["TELESCOP"] == "OOD-SYNTH" and sky["FILTER"] == "r"


def test_reading_leaves_no_open_file(made: dict[str, Path]) -> None:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to count open file descriptors")
    before = len(os.listdir(fd_dir))
    for name in ("with_table", "counts", "cube"):
        read_fits_image(made[name])
    assert len(os.listdir(fd_dir)) == before


# ---------------------------------------------------------------------------------------------------------
# The dev set's own particulars (README facts of real files): what only the real files can show


@pytest.mark.devdata
def test_dev_set_particulars_are_read_as_documented(fits_dir: Path) -> None:
    images = fits_dir / "images"
    m13 = read_fits_image(images / "starfield_M13_blue_0001.fits")  # uint16 counts (int16, BZERO=32768), no WCS
    stored = fits.getdata(images / "starfield_M13_blue_0001.fits", do_not_scale_image_data=True)
    assert stored.dtype.kind == "i" and np.array_equal(m13.data, stored.astype(np.float32) + 32768.0)
    assert m13.wcs is None
    assert read_fits_image(images / "starfield_GC_2MASS_J.fits").data.max() == pytest.approx(3000.0, rel=1e-6)
    horsehead = images / "nebula_HorseHead_DSS2red.fits"
    assert read_fits_image(horsehead).shape == (893, 891)
    with pytest.raises(NoImageHDUError, match=r"er\.mask"):
        read_fits_image(horsehead, hdu=1)
    meta = read_fits_image(images / "starfield_GLIMPSE_l18.fits").metadata()
    assert meta["BUNIT"] == "MJy/sr" and meta["TELESCOP"] == "SPITZER" and meta["shape"] == [513, 1025]
    # The r-band header wrongly says FILTER=g (README); metadata reports the header, not a guess.
    assert read_fits_image(images / "galaxy_HCG88_SDSS_r.fits").metadata()["FILTER"] == "g"
    cube = fits_dir / "extras" / "cloud_L1448_13CO_cube.fits"
    derived = fits.getdata(images / "cloud_L1448_13CO_mom0_derived.fits")
    np.testing.assert_allclose(read_fits_image(cube).data, derived, rtol=1e-5, atol=1e-6)


@pytest.mark.devdata
def test_tiles_match_the_dev_sets_cutouts(fits_dir: Path) -> None:
    for image_name, cutout, origin in (("nebula_HorseHead_DSS2red.fits", "horsehead_y0128_x0256.fits",
                                        "cutout y0=128 x0=256"),
                                       ("cloud_GC_Bolocam_1p1mm.fits", "bolocam_y0256_x0256.fits",
                                        "cutout y0=256 x0=256")):
        image = read_fits_image(fits_dir / "images" / image_name)
        tile = next(t for t in tile_cutouts(image, 128) if t.plane == origin)
        shipped = read_fits_image(fits_dir / "cutouts_128" / cutout)
        np.testing.assert_array_equal(tile.data, shipped.data)
        assert tile.wcs is not None and shipped.wcs is not None
        assert tile.wcs.pixel_to_world(10, 20).separation(shipped.wcs.pixel_to_world(10, 20)).arcsec < 1e-6


# ---------------------------------------------------------------------------------------------------------
# Written formats: tile compression, gzip, BLANK, float64, degenerate axes, extensions


def test_tile_compressed_copies_read_back_equal(made: dict[str, Path], tmp_path: Path) -> None:
    with fits.open(made["with_table"], memmap=False) as hdul:  # int16 with a TAN WCS
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    original = read_fits_image(made["with_table"])
    rice = tmp_path / "int16.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header)]).writeto(rice)
    packed = read_fits_image(rice)
    assert packed.hdu_index == 1 and packed.wcs is not None
    np.testing.assert_array_equal(packed.data, original.data)

    lossless = tmp_path / "float.fits.fz"
    hdu = fits.CompImageHDU(fits.getdata(made["sky"]), compression_type="GZIP_2", quantize_level=0.0)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(lossless)
    np.testing.assert_array_equal(read_fits_image(lossless).data, read_fits_image(made["sky"]).data)


def test_gzipped_file_reads_and_hash_is_of_the_stored_bytes(made: dict[str, Path], tmp_path: Path) -> None:
    packed = tmp_path / "sky.fits.gz"
    packed.write_bytes(gzip.compress(made["sky"].read_bytes()))
    image = read_fits_image(packed)
    np.testing.assert_array_equal(image.data, read_fits_image(made["sky"]).data)
    assert image.sha256 != read_fits_image(made["sky"]).sha256


def test_blank_int16_pixels_become_nan_and_masked(tmp_path: Path) -> None:
    data = np.arange(64 * 64, dtype=np.int16).reshape(64, 64)
    data[3, 5] = data[10, 20] = -32768
    hdu = fits.PrimaryHDU(data)
    hdu.header["BLANK"] = -32768
    hdu.writeto(tmp_path / "blank.fits")
    image = read_fits_image(tmp_path / "blank.fits")
    assert np.argwhere(image.mask).tolist() == [[3, 5], [10, 20]]
    assert np.isnan(image.data[3, 5]) and image.data[0, 1] == 1.0


def test_float64_and_degenerate_axes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(20, 30))
    fits.PrimaryHDU(plane[None, None]).writeto(tmp_path / "stokes.fits")  # (1, 1, 20, 30)
    image = read_fits_image(tmp_path / "stokes.fits")
    assert image.shape == (20, 30) and image.plane is None
    np.testing.assert_array_equal(image.data, plane.astype(np.float32))
    cube4 = rng.normal(size=(1, 5, 20, 30))
    fits.PrimaryHDU(cube4).writeto(tmp_path / "cube4.fits")
    expected = cube4[0].astype(np.float32).sum(axis=0, dtype=np.float64)  # data are read as float32
    np.testing.assert_allclose(read_fits_image(tmp_path / "cube4.fits").data, expected, rtol=1e-6, atol=1e-7)
    assert read_fits_image(tmp_path / "cube4.fits", cube_plane=4).plane == "plane=4"


def test_image_extension_after_empty_primary_and_named_hdu(tmp_path: Path) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.ones(3))])
    image = fits.ImageHDU(np.arange(400, dtype=np.float32).reshape(20, 20), name="SCI")
    fits.HDUList([fits.PrimaryHDU(), table, image]).writeto(tmp_path / "ext.fits")
    assert read_fits_image(tmp_path / "ext.fits").hdu_index == 2
    assert read_fits_image(tmp_path / "ext.fits", hdu="SCI").hdu_index == 2
    with pytest.raises(NoImageHDUError, match="no HDU 'ERR'"):
        read_fits_image(tmp_path / "ext.fits", hdu="ERR")
    with pytest.raises(EmptyImageError, match="has no data"):
        read_fits_image(tmp_path / "ext.fits", hdu=0)


# ---------------------------------------------------------------------------------------------------------
# Bad files: each raises its own error class, naming the file and the reason


def _write_bad_files(source: Path, folder: Path) -> dict[str, tuple[type[InvalidInputError], str]]:
    """Write one bad file per failure kind; return name -> (expected error, expected words in the reason)."""
    raw = source.read_bytes()
    (folder / "truncated.fits").write_bytes(raw[: len(raw) // 2])
    (folder / "header_cut.fits").write_bytes(raw[:1000])
    (folder / "notes.fits").write_text("These are my observing notes, not a FITS file.\n")
    (folder / "empty.fits").write_bytes(b"")
    (folder / "broken.fits.gz").write_bytes(gzip.compress(raw)[:5000])
    table = fits.BinTableHDU.from_columns([fits.Column(name="ra", format="D", array=np.zeros(4))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(folder / "table_only.fits")
    fits.PrimaryHDU(np.full((64, 64), np.nan, dtype=np.float32)).writeto(folder / "all_nan.fits")
    fits.PrimaryHDU(np.zeros((64, 64), dtype=np.float32)).writeto(folder / "constant.fits")
    fits.PrimaryHDU(np.arange(100, dtype=np.float32)).writeto(folder / "spectrum_1d.fits")
    fits.PrimaryHDU(np.ones((2, 3, 4, 5, 6), dtype=np.float32)).writeto(folder / "five_d.fits")
    fits.PrimaryHDU(np.arange(1600, dtype=np.float32).reshape(40, 40)).writeto(folder / "small.fits")
    return {
        "truncated.fits": (TruncatedFitsError, "file truncated"),
        "header_cut.fits": (TruncatedFitsError, "file truncated: the header of HDU 0 has no END card"),
        "notes.fits": (NotFitsError, "not a FITS file (first bytes b'These are my"),
        "empty.fits": (NotFitsError, "empty file (0 bytes)"),
        "broken.fits.gz": (TruncatedFitsError, "compressed stream"),
        "table_only.fits": (NoImageHDUError, "no image HDU (HDUs: 0 PRIMARY empty, 1 (unnamed) BINTABLE)"),
        "all_nan.fits": (EmptyImageError, "all pixels are NaN"),
        "constant.fits": (EmptyImageError, "image is constant (value 0.0)"),
        "spectrum_1d.fits": (WrongDimensionError, "1-D data (shape 100), expected a 2-D image"),
        "five_d.fits": (WrongDimensionError, "5-D data"),
        "small.fits": (ImageTooSmallError, "image is 40x40, smaller than the required 64"),
        "missing.fits": (MissingInputError, "no such file"),
    }


@pytest.fixture
def bad_files(made: dict[str, Path], tmp_path: Path) -> dict[str, tuple[type[InvalidInputError], str]]:
    return _write_bad_files(made["sky"], tmp_path)


def test_each_bad_file_raises_its_error_with_name_and_reason(
    bad_files: dict[str, tuple[type[InvalidInputError], str]], tmp_path: Path
) -> None:
    for name, (error, words) in bad_files.items():
        with pytest.raises(error) as info:
            read_fits_image(tmp_path / name, min_size=64)
        assert type(info.value) is error, name
        assert info.value.path.endswith(name)
        assert str(info.value).startswith(str(tmp_path / name) + ": ")
        assert words in info.value.reason, (name, info.value.reason)


def test_batch_keeps_good_files_and_quarantines_bad_ones(
    made: dict[str, Path], bad_files: dict[str, tuple[type[InvalidInputError], str]], tmp_path: Path
) -> None:
    good = sorted(made["skies"].glob("sky_*.fits"))[:3]
    bad = [tmp_path / name for name in bad_files]
    paths = [good[0], *bad[:6], good[1], *bad[6:], good[2]]
    images, quarantined = read_fits_batch(paths, min_size=64)
    assert [im.path for im in images] == [str(p) for p in good]
    assert all(isinstance(im, FitsImage) for im in images)
    assert [q.path for q in quarantined] == [str(p) for p in bad]
    for q in quarantined:
        error, words = bad_files[Path(q.path).name]
        assert q.error == error.__name__ and words in q.reason
        assert json.loads(json.dumps(q.to_dict())) == {"path": q.path, "reason": q.reason, "error": q.error}


# ---------------------------------------------------------------------------------------------------------
# Input expansion


def test_expand_inputs_files_directories_globs(made: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "a.fits").write_bytes(b"")
    (tmp_path / "b.fits.gz").write_bytes(b"")
    (tmp_path / "c.fts").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.fits").write_bytes(b"")
    specs = [tmp_path, str(tmp_path / "*.fits"), tmp_path / "notes.txt", tmp_path / "nope.fits"]
    paths = expand_inputs(specs)
    assert paths == sorted(
        [tmp_path / "a.fits", tmp_path / "b.fits.gz", tmp_path / "c.fts", tmp_path / "notes.txt"]
    )
    skies = expand_inputs([str(made["skies"] / "sky_*.fits")])
    assert len(skies) == 5 and skies == sorted(skies)
    missing = unmatched_inputs([*specs, str(tmp_path / "*.fz"), tmp_path / "sub2"])
    assert [(q.path, q.reason) for q in missing] == [
        (str(tmp_path / "nope.fits"), "no such file or directory"),
        (str(tmp_path / "*.fz"), "no file matches this pattern"),
        (str(tmp_path / "sub2"), "no such file or directory"),
    ]
    assert all(isinstance(q, QuarantinedInput) and q.error == "MissingInputError" for q in missing)


def test_expand_inputs_keeps_the_users_order(tmp_path: Path) -> None:
    for name in ("a.fits", "b.fits", "c.fits"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d").mkdir()
    for name in ("z.fits", "y.fits"):
        (tmp_path / "d" / name).write_bytes(b"")
    paths = expand_inputs([tmp_path / "c.fits", tmp_path / "a.fits", tmp_path / "d", str(tmp_path / "*.fits")])
    # Named files as given; a directory's and a pattern's files sorted; a file met again keeps its first place.
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["c.fits", "a.fits", "d/y.fits", "d/z.fits",
                                                                   "b.fits"]


# ---------------------------------------------------------------------------------------------------------
# Tiling


def test_tiles_are_slices_of_the_image_and_keep_wcs(made: dict[str, Path], tmp_path: Path) -> None:
    image = read_fits_image(made["wide"])  # 300 x 260
    tiles = tile_cutouts(image, 128)
    assert len(tiles) == (300 // 128) * (260 // 128)
    tile = {t.plane: t for t in tiles}["cutout y0=128 x0=128"]
    # The same cutout made the other way: the pixels sliced and the WCS sliced by astropy, written and read back.
    with fits.open(made["wide"]) as hdul:
        sliced_wcs = WCS(hdul[0].header)[128:256, 128:256]
        fits.PrimaryHDU(hdul[0].data[128:256, 128:256], sliced_wcs.to_header()).writeto(tmp_path / "cut.fits")
    cut = read_fits_image(tmp_path / "cut.fits")
    np.testing.assert_array_equal(tile.data, cut.data)
    assert tile.wcs is not None and image.wcs is not None and cut.wcs is not None
    sky_tile = tile.wcs.pixel_to_world(10, 20)
    assert sky_tile.separation(image.wcs.pixel_to_world(128 + 10, 128 + 20)).arcsec < 1e-6
    assert sky_tile.separation(cut.wcs.pixel_to_world(10, 20)).arcsec < 1e-6
    assert tile.sha256 == image.sha256 and tile.metadata()["shape"] == [128, 128]


def _tiles_over(mask: np.ndarray, size: int, stride: int, threshold: float) -> int:
    """How many grid tiles have an invalid fraction above ``threshold``, counted from the mask alone."""
    count = 0
    for y0 in range(0, mask.shape[0] - size + 1, stride):
        for x0 in range(0, mask.shape[1] - size + 1, stride):
            count += int(mask[y0:y0 + size, x0:x0 + size].mean() > threshold)
    return count


def test_tiles_with_too_many_invalid_pixels_are_skipped(made: dict[str, Path]) -> None:
    image = read_fits_image(made["nan_edges"])  # 320 x 320, NaN borders left and top, a NaN corner
    mask = np.isnan(fits.getdata(made["nan_edges"]))
    every = tile_cutouts(image, 64, max_invalid_fraction=1.0)
    assert len(every) == (320 // 64) ** 2 - _tiles_over(mask, 64, 64, 0.999999)  # an all-NaN tile is constant
    for threshold in (0.5, 0.1, 0.0):
        n_over = _tiles_over(mask, 64, 64, threshold)
        assert n_over > 0
        kept = tile_cutouts(image, 64, max_invalid_fraction=threshold)
        assert len(kept) == (320 // 64) ** 2 - n_over
        assert all(tile.mask.mean() <= threshold for tile in kept)
    overlapping = tile_cutouts(image, 64, stride=32)
    assert len(overlapping) == 9 * 9 - _tiles_over(mask, 64, 32, 0.5)
    assert "cutout y0=0 x0=0" not in {tile.plane for tile in overlapping}  # 87 % NaN


def test_overlapping_tiles_and_too_small_image(made: dict[str, Path]) -> None:
    image = read_fits_image(made["small"])  # 149x149
    assert len(tile_cutouts(image, 64, stride=32)) == 9  # origins 0, 32, 64 on each axis
    with pytest.raises(ImageTooSmallError, match="smaller than the tile size 256"):
        tile_cutouts(image, 256)


def test_input_errors_survive_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(TruncatedFitsError("a.fits", "file truncated: 10 bytes")))
    assert type(error) is TruncatedFitsError and error.path == "a.fits"
    assert str(error) == "a.fits: file truncated: 10 bytes"


# ---------------------------------------------------------------------------------------------------------
# Damaged and hostile files (issue 13): every reader error is a reason; data accepted are data decoded


def _garble_tile_data(path: Path, hdu_index: int = 1, length: int = 400) -> None:
    """Flip bytes in the middle of the HDU's stored (compressed) data, leaving the headers intact."""
    raw = bytearray(path.read_bytes())
    with fits.open(path) as hdul:
        start = int(hdul.fileinfo(hdu_index)["datLoc"])
    for offset in range(start + 2000, start + 2000 + length):
        raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))


def _replace_card(source: Path, target: Path, old: str, new: str) -> None:
    raw = source.read_bytes()
    header = raw[:2880].decode("ascii")
    assert old in header and len(old) == len(new)
    target.write_bytes(header.replace(old, new).encode("ascii") + raw[2880:])


def write_damaged_tile_compressed(folder: Path, compression: str = "RICE_1") -> Path:
    """A real tile-compressed file (CompImageHDU) whose compressed tile bytes are garbled."""
    data = (np.random.default_rng(0).normal(size=(128, 128)) * 100).astype(np.int16)
    path = folder / f"garbled_{compression.lower()}.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type=compression)]).writeto(path)
    _garble_tile_data(path)
    return path


@pytest.mark.parametrize("compression", ["RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1"])
def test_garbled_tile_compressed_data_is_a_reason_naming_the_file(tmp_path: Path, compression: str) -> None:
    path = write_damaged_tile_compressed(tmp_path, compression)
    with pytest.raises(CorruptFitsError, match="image data cannot be decoded") as info:
        read_fits_image(path)
    assert info.value.path == str(path)
    images, quarantined = read_fits_batch([path])
    assert images == [] and quarantined[0].error == "CorruptFitsError" and quarantined[0].path == str(path)


def test_datasum_mismatch_is_refused_and_a_sound_checksum_passes(tmp_path: Path) -> None:
    data = np.abs(np.random.default_rng(1).normal(size=(128, 128)) * 100).astype(np.int16)
    sound = tmp_path / "plio.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="PLIO_1")]).writeto(
        sound, checksum=True)
    np.testing.assert_array_equal(read_fits_image(sound).data, data.astype(np.float32))
    # PLIO decodes garbage without an error: only the DATASUM the file carries can tell.
    _garble_tile_data(sound, length=40)
    with pytest.raises(CorruptFitsError, match="DATASUM"):
        read_fits_image(sound)


def test_corrupt_header_cards_are_named_not_called_truncated(made: dict[str, Path], tmp_path: Path) -> None:
    source = made["sky"]
    header = source.read_bytes()[:2880].decode("ascii")
    naxis1 = next(header[i:i + 80] for i in range(0, 2880, 80) if header.startswith("NAXIS1", i))
    bitpix = next(header[i:i + 80] for i in range(0, 2880, 80) if header.startswith("BITPIX", i))
    _replace_card(source, tmp_path / "naxis.fits", naxis1, "NAXIS1  =                  abc".ljust(80))
    _replace_card(source, tmp_path / "bitpix.fits", bitpix, "BITPIX  =                  -33".ljust(80))
    with pytest.raises(CorruptFitsError, match=r"header card 4 of HDU 0 is corrupt: 'NAXIS1  = +abc'"):
        read_fits_image(tmp_path / "naxis.fits")
    with pytest.raises(CorruptFitsError, match=r"header card 2 of HDU 0 \(BITPIX\) is corrupt: -33 is not one"):
        read_fits_image(tmp_path / "bitpix.fits")


def _gzipped_zero_image(path: Path, shape: tuple[int, int]) -> None:
    """A gzip FITS file of a float32 zero image, streamed so the test never holds the image in memory."""
    import zlib

    header = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", shape[1]),
                          ("NAXIS2", shape[0])])
    size = -(-shape[0] * shape[1] * 4 // 2880) * 2880
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(header.tostring().encode("ascii"))]
    block = bytes(1 << 22)
    for start in range(0, size, len(block)):
        parts.append(packer.compress(block[: min(len(block), size - start)]))
    parts.append(packer.flush())
    path.write_bytes(b"".join(parts))


def _peak_memory_mb(path: Path) -> float:
    """Peak resident memory (VmHWM) of a fresh process that imports the reader and reads ``path``."""
    import subprocess
    import sys

    code = ("import sys\nfrom ood_core.io.fits import read_fits_image\n"
            "try:\n    read_fits_image(sys.argv[1])\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
            "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def test_a_small_gzip_of_a_huge_image_is_refused_without_decompressing_it(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.fits.gz"
    _gzipped_zero_image(bomb, (8000, 8000))  # 256 MB of pixels in about 250 kB
    assert bomb.stat().st_size < 300_000
    limit = f"8000x8000 = 64000000 pixels, above the limit of {DEFAULT_MAX_PIXELS}"
    with pytest.raises(ImageTooLargeError, match=limit):
        read_fits_image(bomb)
    if Path("/proc/self/status").exists():
        small = tmp_path / "small_plain.fits"
        fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(small)
        grown = _peak_memory_mb(bomb) - _peak_memory_mb(small)
        assert grown < 64, f"refusing the bomb took {grown:.0f} MB more than reading a 64x64 image"
    # The limit is stated and can be changed; a stream that expands past it is cut off while inflating.
    small = tmp_path / "small.fits.gz"
    _gzipped_zero_image(small, (2000, 2000))
    with pytest.raises(ImageTooLargeError, match="above the limit of 1000000 pixels"):
        read_fits_image(small, max_pixels=1_000_000)
    hidden = tmp_path / "hidden.fits.gz"  # the big image sits in an extension: the inflate bound catches it
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3000, 3000), np.float32))]).writeto(buffer)
    hidden.write_bytes(gzip.compress(buffer.getvalue()))
    with pytest.raises(ImageTooLargeError, match="expands to more than"):
        read_fits_image(hidden, max_pixels=10_000)


def test_oversized_plain_image_is_refused_before_decoding(tmp_path: Path) -> None:
    fits.PrimaryHDU(np.arange(200 * 300, dtype=np.float32).reshape(200, 300)).writeto(tmp_path / "big.fits")
    with pytest.raises(ImageTooLargeError, match="200x300 = 60000 pixels, above the limit of 50000"):
        read_fits_image(tmp_path / "big.fits", max_pixels=50_000)
    assert read_fits_image(tmp_path / "big.fits", max_pixels=60_000).shape == (200, 300)


def test_mostly_nan_and_beyond_float32_images_are_kept_with_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holes = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    holes[:58] = np.nan  # about 91 % NaN
    fits.PrimaryHDU(holes).writeto(tmp_path / "holes.fits")
    huge = np.arange(64 * 64, dtype=np.float64).reshape(64, 64)
    huge[0, :3] = 1e39
    fits.PrimaryHDU(huge).writeto(tmp_path / "huge.fits")
    with caplog.at_level("WARNING"):
        mostly_nan = read_fits_image(tmp_path / "holes.fits")
        beyond = read_fits_image(tmp_path / "huge.fits")
    assert mostly_nan.warnings == ("91% of the pixels are NaN, inf or BLANK (masked)",)
    assert beyond.warnings == ("3 pixel(s) beyond the float32 range (|value| > 3.4e+38) are masked",)
    assert beyond.mask[0, :3].all() and not beyond.mask[0, 3:].any()
    assert beyond.metadata()["warnings"] == list(beyond.warnings)
    assert "holes.fits: 91% of the pixels" in caplog.text and "huge.fits: 3 pixel(s)" in caplog.text
    holes[:30] = 1.0  # now 44 % NaN: no warning
    fits.PrimaryHDU(holes).writeto(tmp_path / "fewer_holes.fits")
    clean = read_fits_image(tmp_path / "fewer_holes.fits")
    assert clean.warnings == () and clean.metadata()["warnings"] == []


def test_existing_paths_with_glob_characters_are_paths(made: dict[str, Path], tmp_path: Path) -> None:
    source = made["sky"]
    (tmp_path / "cut[1].fits").write_bytes(source.read_bytes())
    (tmp_path / "obs[2]").mkdir()
    (tmp_path / "obs[2]" / "a.fits").write_bytes(source.read_bytes())
    (tmp_path / "cut1.fits").write_bytes(b"")  # what the pattern cut[1].fits would match
    specs = [str(tmp_path / "cut[1].fits"), str(tmp_path / "obs[2]")]
    assert expand_inputs(specs) == [tmp_path / "cut[1].fits", tmp_path / "obs[2]" / "a.fits"]
    assert unmatched_inputs(specs) == []
    assert read_fits_image(tmp_path / "cut[1].fits").shape == (128, 128)
    # A spec that does not exist is still a pattern.
    assert expand_inputs([str(tmp_path / "cut[0-9].fits")]) == [tmp_path / "cut1.fits"]
    assert [q.reason for q in unmatched_inputs([str(tmp_path / "nope[3].fits")])] == ["no file matches this pattern"]
