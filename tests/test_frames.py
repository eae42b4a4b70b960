"""Full frames in (issue 29): geometry chosen and recorded, tiles screened and selected, mixed inputs warned about.

Synthetic FITS written with astropy in tmp_path; the one dev-data test (the M13 + M67 frames) is marked devdata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ood_core.errors import ConfigurationError
from ood_core.evaluation.run_summary import frame_lines, frame_sentence
from ood_core.io.fits import read_fits_image, tile_grid
from ood_core.pipeline import PipelineParameters, input_set_key
from ood_core.pipeline.compatibility import level_warnings, mixed_input_warnings, pixel_scale_warnings
from ood_core.pipeline.frames import shares, stratified_subset
from ood_core.pipeline.ingest import ingest, read_frames

RESOLUTION = 64


def star_field(shape: tuple[int, int], *, seed: int, background: float = 100.0, noise: float = 5.0,
               stars: int = 60) -> np.ndarray:
    """A sky of Gaussian noise with round Gaussian stars (float32)."""
    rng = np.random.default_rng(seed)
    data = background + noise * rng.standard_normal(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(stars):
        y, x, flux = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(20, 200) * noise
        data += flux * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    return data.astype(np.float32)


def write(path: Path, data: np.ndarray, *, scale_deg: float | None = None) -> str:
    header = fits.Header()
    if scale_deg is not None:
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [150.0, 2.0]
        wcs.wcs.crpix = [data.shape[1] / 2, data.shape[0] / 2]
        wcs.wcs.cdelt = [-scale_deg, scale_deg]
        header.update(wcs.to_header())
    fits.PrimaryHDU(data, header=header).writeto(path)
    return str(path)


def params(inputs: list[str], tmp_path: Path, **kwargs: object) -> PipelineParameters:
    return PipelineParameters(inputs=inputs, store=str(tmp_path / "s.zarr"), **kwargs)


def test_a_large_frame_is_tiled_at_its_own_pixel_scale_by_default(tmp_path: Path) -> None:
    frame = star_field((300, 400), seed=1)
    path = write(tmp_path / "big.fits", frame)
    result = ingest(params([path], tmp_path), RESOLUTION, 1)
    (record,) = result.frames
    assert record["geometry"] == "tiles" and record["block"] == 1 and record["tile"] == RESOLUTION
    assert record["tiles_cut"] == (300 // 64) * (400 // 64) == record["kept"] == len(result.images) == 24
    assert "block 4 per axis" in record["reason"]  # why it was tiled: the whole frame would need block 4
    assert all(src["block"] == 1 and src["plane"].startswith("cutout") for src in result.batch.sources)
    first = result.images[0]  # native pixels: a tile is the frame's own pixels (grid centred: 300 % 64 = 44)
    y0, x0 = (int(v.split("=")[1]) for v in first.plane.split()[1:])
    assert (y0, x0) == (22, 8)
    np.testing.assert_array_equal(first.data, frame[y0 : y0 + 64, x0 : x0 + 64])
    assert "24 of 24 tiles kept" in frame_sentence(record)


def test_inputs_that_fit_are_used_whole_as_before(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"cut{i}.fits", star_field((130, 128), seed=i, stars=5)) for i in range(3)]
    result = ingest(params(paths, tmp_path), RESOLUTION, 1)
    assert [f["geometry"] for f in result.frames] == ["whole"] * 3
    assert [s["block"] for s in result.batch.sources] == [2, 2, 2]
    assert result.frames[0]["crop"] == {"y0": 1, "x0": 0, "side": 128}
    assert result.warnings == []


def test_block_factor_above_two_without_the_flag_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "big.fits", star_field((300, 400), seed=1))
    with pytest.raises(ConfigurationError) as refused:
        read_frames(params([path], tmp_path, tile=256), RESOLUTION)
    message = str(refused.value)
    assert "--tile 256" in message and "4x4" in message
    assert "leave --tile out" in message and "--tile 128" in message and "--max-block 4" in message
    allowed = read_frames(params([path], tmp_path, tile=256, max_block=4), RESOLUTION)
    assert [p.block for p in allowed.plans] == [4] and len(allowed.images) == 1
    whole = read_frames(params([path], tmp_path, max_block=4), RESOLUTION)  # the flag: the whole frame, reduced
    assert whole.plans[0].geometry == "whole" and whole.plans[0].block == 4 and len(whole.images) == 1


def test_mostly_nan_and_padding_tiles_are_dropped_and_counted(tmp_path: Path) -> None:
    frame = star_field((256, 384), seed=2)
    padded = np.zeros_like(frame)  # zero padding 40 px wide on three sides, like the outside of an all-sky map
    padded[40:216, :344] = frame[40:216, :344]
    padded[:, :130] = np.nan  # the left two tile columns are more than half NaN (grid at x0 = 0, 64, ...)
    path = write(tmp_path / "holes.fits", padded)
    read = read_frames(params([path], tmp_path), RESOLUTION)
    (plan,) = read.plans
    assert plan.cut == 4 * 6
    # top and bottom tile rows and the right column are 40 of 64 px padding: 4 + 4 + 2 "edge" tiles
    assert plan.dropped == {"masked": 8, "flat": 0, "edge": 10}
    assert plan.kept == len(read.images) == 6
    assert "dropped: 8 masked, 10 edge" in frame_sentence(plan.record())
    kept, dropped = tile_grid(read_fits_image(path), 64)  # without the padding value those tiles are kept
    assert dropped == {"masked": 8, "flat": 0, "edge": 0} and len(kept) == 16


def test_many_tiles_are_thinned_to_a_seeded_subset_stratified_by_source_content(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"f{i}.fits", star_field((512, 512), seed=i, stars=200)) for i in range(2)]
    small = write(tmp_path / "small.fits", star_field((128, 128), seed=9, stars=5))
    read = read_frames(params([*paths, small], tmp_path, max_tiles=10), RESOLUTION)
    assert [p.kept for p in read.plans] == [5, 5, 1] and len(read.images) == 11
    assert [p.not_selected for p in read.plans[:2]] == [59, 59]
    again = read_frames(params([*paths, small], tmp_path, max_tiles=10), RESOLUTION)
    assert [im.plane for im in again.images] == [im.plane for im in read.images]  # seeded
    other = read_frames(params([*paths, small], tmp_path, max_tiles=10, seed=5), RESOLUTION)
    assert [im.plane for im in other.images] != [im.plane for im in read.images]
    assert "stratified by source content" in read.plans[0].reason


def test_stratified_subset_and_shares() -> None:
    scores = np.arange(100, dtype=float)[::-1]
    chosen = stratified_subset(scores, 4, np.random.default_rng(0))
    assert len(chosen) == 4 and sorted({99 - i for i in chosen} and {(99 - i) // 25 for i in chosen}) == [0, 1, 2, 3]
    assert stratified_subset(scores[:3], 5, np.random.default_rng(0)) == [0, 1, 2]
    assert shares([336, 336, 256], 24) == [8, 8, 8]
    assert shares([2, 100, 100], 24) == [2, 11, 11]
    assert shares([0, 5], 24) == [0, 5]


def test_mixed_levels_warn_naming_the_files_and_the_fix(tmp_path: Path) -> None:
    faint = [write(tmp_path / f"faint{i}.fits", star_field((130, 130), seed=i, background=500, noise=20))
             for i in range(2)]
    bright = write(tmp_path / "plate.fits", star_field((130, 130), seed=7, background=3700, noise=300))
    result = ingest(params([*faint, bright], tmp_path), RESOLUTION, 1)
    (warning,) = result.warnings
    assert "input levels differ" in warning and "faint0.fits" in warning and "plate.fits" in warning
    assert "--normalization per_image" in warning
    assert frame_lines({"frames": [], "input_warnings": [warning]}) == [f"- **WARNING (inputs)**: {warning}"]
    assert ingest(params([*faint, bright], tmp_path, normalization="per_image"), RESOLUTION, 1).warnings == []
    alike = [write(tmp_path / f"alike{i}.fits", star_field((130, 130), seed=i, noise=2 + 3 * i)) for i in range(3)]
    assert ingest(params(alike, tmp_path), RESOLUTION, 1).warnings == []


def test_level_warning_thresholds() -> None:
    from ood_core.pipeline.compatibility import Levels

    same = [Levels("a", 0.0, 1.0, 10.0), Levels("b", 5.0, 9.0, 90.0)]
    assert level_warnings(same) == []
    offset = [Levels("a", 0.0, 1.0, 10.0), Levels("b", 50.0, 2.0, 10.0)]
    assert "backgrounds by 25 times the larger noise" in level_warnings(offset)[0]


def test_pixel_scales_differing_warn(tmp_path: Path) -> None:
    data = star_field((130, 130), seed=3)
    fine = read_fits_image(write(tmp_path / "fine.fits", data, scale_deg=1 / 3600))
    close = read_fits_image(write(tmp_path / "close.fits", data, scale_deg=1.03 / 3600))
    coarse = read_fits_image(write(tmp_path / "coarse.fits", data, scale_deg=2 / 3600))
    bare = read_fits_image(write(tmp_path / "bare.fits", data))
    assert pixel_scale_warnings([fine, close]) == []
    (differ,) = pixel_scale_warnings([fine, coarse])
    assert "pixel scales differ" in differ and "fine.fits 1\"" in differ and "coarse.fits 2\"" in differ
    (unknown,) = pixel_scale_warnings([fine, bare])
    assert "no celestial WCS in bare.fits" in unknown
    assert mixed_input_warnings([fine, close], "per_image") == []


def test_new_settings_at_their_defaults_leave_the_idempotence_key_alone(tmp_path: Path) -> None:
    base = params(["a.fits"], tmp_path)
    key = input_set_key(["h1"], base)
    assert key == input_set_key(["h1"], params(["a.fits"], tmp_path, max_block=2, max_tiles=24))
    assert key != input_set_key(["h1"], params(["a.fits"], tmp_path, max_block=4))
    assert key != input_set_key(["h1"], params(["a.fits"], tmp_path, max_tiles=48))


@pytest.mark.devdata
def test_m13_and_m67_frames_are_tiled_and_their_mixed_levels_warned(fits_dir: Path, tmp_path: Path) -> None:
    names = ["starfield_M13_blue_0001", "starfield_M13_blue_0002", "starfield_M67_POSS1"]
    read = read_frames(params([str(fits_dir / "images" / f"{n}.fits") for n in names], tmp_path), RESOLUTION)
    assert [(p.geometry, p.block, p.cut, p.kept) for p in read.plans] == [
        ("tiles", 1, 336, 8), ("tiles", 1, 336, 8), ("tiles", 1, 256, 8)]
    assert any("input levels differ" in w and "starfield_M67_POSS1.fits" in w for w in read.warnings)


def test_the_command_says_alike_whole_inputs_in_one_line_and_tiled_frames_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ood_cli.main import _frames_summary

    whole = {"path": "a.fits", "shape": [128, 128], "geometry": "whole", "reason": "block 2 per axis"}
    _frames_summary({"frames": [whole] * 12})
    said = capsys.readouterr().out.strip().splitlines()
    assert said == ["frame      12 inputs (128x128): used whole, block 2 per axis"]
    tiled = {"path": "b.fits", "shape": [1024, 1024], "geometry": "tiles", "kept": 8, "tiles_cut": 256,
             "tiles_dropped": {"edge": 3}, "tiles_not_selected": 245, "reason": "native scale"}
    _frames_summary({"frames": [whole, tiled]})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "`a.fits`" in lines[0] and "8 of 256 tiles kept; dropped: 3 edge" in lines[1]
