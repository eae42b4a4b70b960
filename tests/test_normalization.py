"""Reversible normalization: table-driven round trips on project-made skies in three units and scales (and on the
real dev set's cutouts when it is there), fitted values, NaN masking on a made map with blank edges, resize,
channels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from made_fits import write_skies

from ood_core.base_model.demo_skies import SkyConfig, make_sky
from ood_core.errors import ConfigurationError, ImageTooSmallError
from ood_core.io.fits import FitsImage, read_fits_batch, read_fits_image
from ood_core.method.normalization import (
    NormalizationParams,
    bands_to_channels,
    channels_to_band,
    clipped_fraction,
    denormalize,
    fit_normalization,
    fit_per_image,
    model_to_physical,
    normalize,
    prepare_batch,
    resize_to_resolution,
)

SOURCES = ("glimpse", "horsehead", "bolocam")
"""Roles of the made sets, named after the dev-set sources whose units they carry (MJy/sr, counts, Jy/Beam)."""
MADE = {"glimpse": (1e-3, "MJy/sr"), "horsehead": (7.0, None), "bolocam": (2e-5, "Jy/Beam")}
"""Made skies scaled so values differ by orders of magnitude between sets, as the dev set's do."""
STRETCHES = ("asinh", "linear", "log", "sqrt")

# The forward stretch written out from its definition (astropy.visualization docs), y in [0, 1].
EXPECTED_STRETCH = {
    "asinh": lambda y: np.arcsinh(y / 0.1) / np.arcsinh(1 / 0.1),
    "log": lambda y: np.log(1000.0 * y + 1.0) / np.log(1001.0),
    "sqrt": np.sqrt,
    "linear": lambda y: y,
}


def _read_four(files: list[Path]) -> list[FitsImage]:
    images, quarantined = read_fits_batch(files)
    assert len(images) == 4 and not quarantined
    return images


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[FitsImage]]:
    """Four made 128x128 skies per role, scaled and in the units of MADE."""
    folder = tmp_path_factory.mktemp("skies")
    out = {}
    for seed, (source, (scale, unit)) in enumerate(MADE.items()):
        files = write_skies(folder, 4, seed=seed, prefix=source)
        for path in files:
            with fits.open(path, mode="update") as hdul:
                hdul[0].data = hdul[0].data * np.float32(scale)
                if unit is None:
                    del hdul[0].header["BUNIT"]
                else:
                    hdul[0].header["BUNIT"] = unit
        out[source] = _read_four(files)
    return out


def test_round_trip_on_the_dev_sets_cutouts(fits_dir: Path) -> None:
    """The table below, every stretch, on four real cutouts of each of the three sources."""
    for source in SOURCES:
        images = _read_four(sorted((fits_dir / "cutouts_128").glob(f"{source}_*.fits"))[:4])
        for stretch in STRETCHES:
            test_round_trip_on_cutouts({source: images}, source, stretch)


@pytest.mark.parametrize("stretch", STRETCHES)
@pytest.mark.parametrize("source", SOURCES)
def test_round_trip_on_cutouts(cutouts: dict[str, list[FitsImage]], source: str, stretch: str) -> None:
    images = [im.data for im in cutouts[source]]
    params = fit_normalization(images, stretch=stretch)  # type: ignore[arg-type]
    width = params.vmax - params.vmin
    lowest, highest = 1.0, -1.0
    for data in images:
        x = normalize(data, params)
        assert x.dtype == np.float32 and x.shape == data.shape
        assert x.min() >= -1.0 and x.max() <= 1.0
        lowest, highest = min(lowest, float(x.min())), max(highest, float(x.max()))
        back = denormalize(x, params)
        excess = data.astype(np.float64) - params.background
        inside = (excess >= params.vmin) & (excess <= params.vmax)
        np.testing.assert_allclose(back[inside], data[inside], rtol=1e-5, atol=1e-5 * width)
        # Clipped pixels come back at the interval edges.
        np.testing.assert_allclose(back[excess < params.vmin], params.background + params.vmin, rtol=1e-6)
        np.testing.assert_allclose(back[excess > params.vmax], params.background + params.vmax, rtol=1e-6)
    assert lowest == -1.0 and highest == 1.0  # the percentile interval is reached at both ends


@pytest.mark.parametrize("stretch", STRETCHES)
def test_mapping_is_interval_then_stretch_then_affine(stretch: str) -> None:
    params = NormalizationParams(background=100.0, vmin=-5.0, vmax=395.0, stretch=stretch,  # type: ignore[arg-type]
                                 stretch_param={"asinh": 0.1, "log": 1000.0}.get(stretch))
    y = np.linspace(0.0, 1.0, 21)
    physical = 100.0 + (-5.0 + y * 400.0)
    np.testing.assert_allclose(normalize(physical, params), 2 * EXPECTED_STRETCH[stretch](y) - 1, atol=2e-7)
    np.testing.assert_allclose(denormalize(normalize(physical, params), params), physical, rtol=1e-6)
    assert normalize(np.array([-1e9, 1e9]), params).tolist() == [-1.0, 1.0]
    assert denormalize(np.array([-3.0, 3.0]), params).tolist() == [95.0, 495.0]


def test_fitted_background_interval_and_clipped_fraction() -> None:
    rng = np.random.default_rng(1)
    sky = rng.normal(100.0, 5.0, size=(2, 200, 200))
    sky[:, ::10, ::10] += 1000.0  # 1 % bright "stars" the sigma clipping must ignore
    sky[0, :5] = np.nan
    params = fit_normalization(list(sky), units="adu")
    assert params.background == pytest.approx(100.0, abs=0.2)
    assert params.vmin == pytest.approx(-2.576 * 5.0, rel=0.05)  # 0.5th percentile of the noise
    assert params.vmax == pytest.approx(1000.0, abs=20.0)  # 99.8th percentile lands among the stars
    assert params.clipped_fraction == pytest.approx(0.005 + 0.002, abs=0.001)
    assert clipped_fraction(sky[1], params) == pytest.approx(params.clipped_fraction, abs=0.002)
    assert params.units == "adu" and params.mode == "per_run" and params.stretch_param == 0.1


def test_cutout_clipped_fraction_matches_the_percentiles(cutouts: dict[str, list[FitsImage]]) -> None:
    params = fit_normalization([im.data for im in cutouts["glimpse"]])
    assert 0.005 <= params.clipped_fraction <= 0.009  # 0.5 % + 0.2 %, give or take ties
    assert params.vmin < 0.0 < params.vmax


def test_params_round_trip_through_json() -> None:
    rng = np.random.default_rng(2)
    params = fit_normalization([rng.normal(size=(32, 32))], stretch="log", units="MJy/sr")
    restored = NormalizationParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert restored == params
    assert restored.stretch_param == 1000.0


def test_bad_parameters_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown stretch 'gamma'"):
        fit_normalization([np.arange(16.0)], stretch="gamma")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"all pixels have the value 3\.0"):
        fit_normalization([np.full((8, 8), 3.0)])
    with pytest.raises(ConfigurationError, match="percentiles"):
        fit_normalization([np.arange(16.0)], lower_percentile=90, upper_percentile=10)
    with pytest.raises(ConfigurationError, match="no finite pixel"):
        fit_normalization([np.full((4, 4), np.nan)])
    with pytest.raises(ConfigurationError, match="vmax > vmin"):
        NormalizationParams(background=0.0, vmin=1.0, vmax=1.0)


# ---------------------------------------------------------------------------------------------------------
# Batches: per-run vs per-image, NaN handling


def test_per_run_params_are_shared_and_per_image_differ(cutouts: dict[str, list[FitsImage]]) -> None:
    images = cutouts["horsehead"]
    shared = prepare_batch(images, resolution=32, channels=3, mode="per_run")
    assert shared.images.shape == (4, 3, 32, 32) and shared.mask.shape == (4, 32, 32)
    assert len(shared.params) == 1 and shared.params[0].mode == "per_run"
    assert all(shared.params_for(i) is shared.params[0] for i in range(4))
    own = prepare_batch(images, resolution=32, channels=3, mode="per_image")
    assert len(own.params) == 4 and all(p.mode == "per_image" for p in own.params)
    assert len({p.background for p in own.params}) == 4 and len({p.vmax for p in own.params}) == 4
    for i in range(4):  # each image spans the full range under its own normalization
        assert own.images[i].min() == -1.0 and own.images[i].max() == 1.0
    # Going back with the right parameters recovers the same physical block means either way.
    for batch in (shared, own):
        resized, _ = resize_to_resolution(images[1].data, images[1].mask, 32)
        back = denormalize(channels_to_band(batch.images)[1], batch.params_for(1))
        excess = resized - batch.params_for(1).background
        inside = (excess >= batch.params_for(1).vmin) & (excess <= batch.params_for(1).vmax)
        np.testing.assert_allclose(back[inside], resized[inside], rtol=1e-5)
    assert shared.sources[0]["path"] == images[0].path and shared.sources[0]["block"] == 4


@pytest.fixture(scope="module")
def blank_edged_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A made 638x640 map in Jy/Beam, NaN outside a circular footprint: its corners, 5 % of the pixels (the shape,
    units and NaN fraction of the dev set's Bolocam map cloud_GC_Bolocam_1p1mm.fits)."""
    data, header = make_sky(SkyConfig(size=640, nan_hole_probability=0.0), seed=11)
    data = data[:638]
    yy, xx = np.indices(data.shape)
    data[np.hypot(yy - 318.5, xx - 319.5) > 383.0] = np.nan
    header["BUNIT"] = "Jy/Beam"
    path = tmp_path_factory.mktemp("map") / "blank_edged_map.fits"
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def test_nan_pixels_are_masked_and_filled_with_the_background(blank_edged_map: Path) -> None:
    image = read_fits_image(blank_edged_map)
    assert image.data.shape == (638, 640) and np.isnan(image.data).mean() == pytest.approx(0.05, abs=0.005)
    batch = prepare_batch([image], resolution=64, channels=1)
    params = batch.params[0]
    assert params.units == "Jy/Beam"
    # 638x640 -> centred 576x576 square (y0=31, x0=32) -> blocks of 9x9; masked where a block is all NaN.
    assert batch.sources[0]["crop"] == {"y0": 31, "x0": 32, "side": 576}
    nan_blocks = np.isnan(image.data[31:607, 32:608]).reshape(64, 9, 64, 9).all(axis=(1, 3))
    assert nan_blocks.any()
    np.testing.assert_array_equal(batch.mask[0], nan_blocks)
    x = batch.images[0, 0]
    assert np.isfinite(x).all()
    filled = normalize(np.array([params.background]), params)[0]
    np.testing.assert_array_equal(x[nan_blocks], filled)
    # A block with some NaN holds the mean of its valid pixels.
    partial = np.isnan(image.data[31:607, 32:608]).reshape(64, 9, 64, 9).any(axis=(1, 3)) & ~nan_blocks
    by, bx = np.argwhere(partial)[0]
    block = image.data[31 + 9 * by : 31 + 9 * by + 9, 32 + 9 * bx : 32 + 9 * bx + 9]
    assert np.isnan(block).any()
    assert x[by, bx] == pytest.approx(normalize(np.array([np.nanmean(block)]), params)[0], abs=1e-6)


def test_mixed_units_are_flagged_in_per_run_mode(cutouts: dict[str, list[FitsImage]]) -> None:
    mixed = [cutouts["glimpse"][0], cutouts["bolocam"][0]]
    assert prepare_batch(mixed, resolution=32, channels=1).params[0].units == "mixed (Jy/Beam; MJy/sr)"
    per_image = prepare_batch(mixed, resolution=32, channels=1, mode="per_image")
    assert [p.units for p in per_image.params] == ["MJy/sr", "Jy/Beam"]
    with pytest.raises(ConfigurationError, match="normalization mode"):
        prepare_batch(mixed, resolution=32, channels=1, mode="per_band")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Resize and channels


def test_resize_conserves_mean_surface_brightness(cutouts: dict[str, list[FitsImage]]) -> None:
    for image in cutouts["glimpse"]:
        small, mask = resize_to_resolution(image.data, image.mask, 32)
        assert small.shape == (32, 32) and not mask.any()
        assert small.mean(dtype=np.float64) == pytest.approx(image.data.mean(dtype=np.float64), rel=1e-6)
        assert small[5, 7] == pytest.approx(image.data[20:24, 28:32].mean(dtype=np.float64), rel=1e-6)


def test_resize_crops_non_square_to_the_centre_and_masks_only_empty_blocks() -> None:
    data = np.arange(100 * 70, dtype=np.float32).reshape(100, 70)
    data[18, 3] = np.nan  # one bad pixel in the first 2x2 block
    data[20:22, 5:7] = np.nan  # a whole block
    small, mask = resize_to_resolution(data, np.isnan(data), 32)
    # min side 70 -> 64 (largest multiple of 32), centred: rows 18..81, columns 3..66; blocks of 2x2
    assert small.shape == (32, 32)
    assert small[0, 0] == pytest.approx(np.mean([data[18, 4], data[19, 3], data[19, 4]]))
    assert mask.sum() == 1 and mask[1, 1] and np.isnan(small[1, 1])
    assert small[10, 20] == pytest.approx(data[38:40, 43:45].mean())
    # NaN counts as invalid even where the given mask says valid; factor 1 is a plain centre crop.
    same, same_mask = resize_to_resolution(data[:32, :40], np.zeros((32, 40), bool), 32)
    np.testing.assert_array_equal(same, data[:32, 4:36])
    assert np.argwhere(same_mask).tolist() == [[20, 1], [20, 2], [21, 1], [21, 2]]
    too_small = r"tiny\.fits: image is 20x40, smaller than the model resolution 32"
    with pytest.raises(ImageTooSmallError, match=too_small):
        resize_to_resolution(np.ones((20, 40)), np.zeros((20, 40), bool), 32, path="tiny.fits")


def test_bands_to_channels_round_trip() -> None:
    band = np.random.default_rng(3).uniform(-1, 1, size=(2, 8, 8)).astype(np.float32)
    rgb = bands_to_channels(band, 3)
    assert rgb.shape == (2, 3, 8, 8) and np.array_equal(rgb[:, 2], band)
    np.testing.assert_array_equal(channels_to_band(rgb), band)
    rgb[:, 0] += 0.3
    rgb[:, 1] -= 0.3
    np.testing.assert_allclose(channels_to_band(rgb), band, atol=1e-6)  # averaging cancels the offsets
    with pytest.raises(ConfigurationError):
        bands_to_channels(band[0], 3)


def test_per_image_units_length_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="2 units for 1 images"):
        fit_per_image([np.arange(16.0)], units=["a", "b"])


@pytest.mark.parametrize("stretch", STRETCHES)
def test_denormalize_in_passes_and_per_owner_gives_the_whole_array_formula_bit_for_bit(stretch: str) -> None:
    """denormalize works through cache-sized passes, model_to_physical once per owner's parameters: both elementwise,
    so the bits are those of the formula over the whole array (NaN, inf and values outside [-1, 1] included)."""
    rng = np.random.default_rng(3)
    params = [NormalizationParams(background=float(rng.normal()), vmin=-float(rng.uniform(0.1, 2)),
                                  vmax=float(rng.uniform(1, 100)), stretch=stretch,
                                  stretch_param={"asinh": 0.1, "log": 1000.0}.get(stretch)) for _ in range(4)]
    x = rng.uniform(-1.3, 1.3, (40, 1, 64, 64)).astype(np.float32)  # 163,840 values: several passes
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]

    def formula(values: np.ndarray, p: NormalizationParams) -> np.ndarray:
        stretched = np.clip((np.asarray(values, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0)
        unit = p.stretch_transform().inverse(stretched, clip=True)
        return np.asarray(unit * (p.vmax - p.vmin) + p.vmin + p.background, dtype=np.float32)

    assert denormalize(x[:, 0], params[1]).tobytes() == formula(x[:, 0], params[1]).tobytes()
    parents = rng.integers(-1, 4, 40)
    expected = np.stack([formula(x[i, 0], params[int(parents[i])]) for i in range(40)])
    got = model_to_physical(x, params, parents)
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
    assert channels_to_band(x).tobytes() == np.asarray(x.mean(axis=1, dtype=np.float64), np.float32).tobytes()
