"""Units decide the resampling (ood_core.method.resampling): per-pixel units are block-summed so a source keeps its
flux, surface brightness and unknown units block-averaged (bit for bit as before the rule), mixed units refused
unless the setting forces one rule; the rule is recorded per input, per band and in the normalization."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import block_reduce
from made_fits import write_band_set, write_skies

from ood_core.errors import ConfigurationError
from ood_core.evaluation.run_summary import resampling_lines
from ood_core.io.bands import read_band_group, tile_band_group
from ood_core.io.fits import FitsImage, read_fits_batch
from ood_core.method.normalization import (
    NormalizationParams,
    fit_normalization,
    model_to_physical,
    normalize,
    prepare_band_batch,
    prepare_batch,
    resize_to_resolution,
)
from ood_core.method.resampling import block_resample, choose_resampling
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import RunWriter
from ood_core.store.fits_export import block_rule, export_run_fits

NO_CLIP = {"stretch": "linear", "lower_percentile": 0.0, "upper_percentile": 100.0}
"""A normalization that clips nothing, so the inverse gives every pixel back (to float32 precision)."""


def _source_image(flux: float, centre: tuple[float, float], size: int = 128) -> np.ndarray:
    """A Gaussian point source of total ``flux`` (sigma 3 px) on a flat background of 5 per pixel."""
    y, x = np.mgrid[:size, :size]
    sigma = 3.0
    gauss = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    return (5.0 + flux * gauss).astype(np.float32)


def _write(folder: Path, name: str, data: np.ndarray, bunit: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = fits.Header()
    if bunit is not None:
        header["BUNIT"] = bunit
    path = folder / name
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
    return path


def _read(paths: list[Path]) -> list[FitsImage]:
    images, quarantined = read_fits_batch(paths)
    assert not quarantined and len(images) == len(paths)
    return images


@pytest.fixture
def sources(tmp_path: Path) -> list[np.ndarray]:
    return [_source_image(flux, centre) for flux, centre in
            ((4.0e4, (60.5, 70.0)), (1.5e4, (30.0, 90.5)), (8.0e3, (95.0, 40.0)))]


def _files(tmp_path: Path, data: list[np.ndarray], units: list[str | None], prefix: str = "in") -> list[Path]:
    pairs = enumerate(zip(data, units, strict=True))
    return [_write(tmp_path, f"{prefix}_{i}.fits", d, unit) for i, (d, unit) in pairs]


def test_a_sources_flux_is_kept_when_counts_are_summed_and_quartered_when_averaged(
    tmp_path: Path, sources: list[np.ndarray]
) -> None:
    """128 x 128 counts -> 64 x 64 model pixels -> physical units again: the totals agree to float precision under
    sum, and the averaged run's are factor^2 = 4 times smaller for the same data."""
    images = _read(_files(tmp_path, sources, ["adu"] * 3))
    summed = prepare_batch(images, resolution=64, channels=1, **NO_CLIP)  # type: ignore[arg-type]  # stretch literal
    averaged = prepare_batch(images, resolution=64, channels=1, resampling="mean", **NO_CLIP)  # type: ignore[arg-type]
    assert summed.resampling[0].rule == "sum" and summed.params[0].resampling == "sum"
    assert averaged.resampling[0].rule == "mean" and "resampling=mean" in averaged.resampling[0].reason
    back_sum = model_to_physical(summed.images, summed.params).astype(np.float64)
    back_mean = model_to_physical(averaged.images, averaged.params).astype(np.float64)
    for i, data in enumerate(sources):
        total = float(data.astype(np.float64).sum())
        source = total - 5.0 * data.size  # the point source alone (background 5 per input pixel)
        assert back_sum[i].sum() == pytest.approx(total, rel=1e-6)
        assert back_sum[i].sum() - 5.0 * data.size == pytest.approx(source, rel=1e-4)
        assert back_mean[i].sum() * 4 == pytest.approx(total, rel=1e-6)
        # the resize alone: the sum of the blocks is the sum of the pixels (float64 rounding)
        plane, _ = resize_to_resolution(data, np.zeros(data.shape, bool), 64, rule="sum")
        assert plane.astype(np.float64).sum() == pytest.approx(total, rel=1e-6)


def test_a_partly_masked_block_sums_to_its_valid_mean_times_the_area() -> None:
    values = np.arange(16, dtype=np.float64).reshape(4, 4)
    values[0, 0] = np.nan  # block (0, 0) keeps 1, 4, 5: mean 10/3
    values[2:, 2:] = np.nan  # block (1, 1) wholly masked
    summed = block_resample(values, 2, "sum")
    assert summed[0, 0] == pytest.approx(4 * 10 / 3) and summed[0, 1] == 2 + 3 + 6 + 7 and np.isnan(summed[1, 1])
    data, mask = resize_to_resolution(values.astype(np.float32), np.zeros((4, 4), bool), 2, rule="sum")
    assert mask.tolist() == [[False, False], [False, True]] and np.isnan(data[1, 1])
    with pytest.raises(ConfigurationError, match="sum or mean"):
        block_resample(values, 2, "median")  # type: ignore[arg-type]  # a wrong rule on purpose


def _legacy_resize(data: np.ndarray, resolution: int) -> np.ndarray:
    """resize_to_resolution as it was before the units decided (astropy block_reduce with nanmean)."""
    side = min(data.shape) // resolution * resolution
    y0, x0 = (data.shape[0] - side) // 2, (data.shape[1] - side) // 2
    crop = data[y0:y0 + side, x0:x0 + side].astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(block_reduce(crop, side // resolution, func=np.nanmean), dtype=np.float32)


@pytest.mark.parametrize("bunit", [None, "", "km/s", "MJy/sr"])
def test_unknown_and_surface_brightness_units_are_averaged_bit_for_bit_as_before(
    tmp_path: Path, sources: list[np.ndarray], bunit: str | None
) -> None:
    images = _read(_files(tmp_path, [s[:, :120] for s in sources], [bunit] * 3))  # not square: cropped too
    batch = prepare_batch(images, resolution=40, channels=1)
    assert batch.resampling[0].rule == "mean" and batch.params[0].resampling == "mean"
    legacy = [_legacy_resize(image.data, 40) for image in images]
    expected = np.stack([normalize(plane, fit_normalization(legacy, units=bunit or "")) for plane in legacy])
    np.testing.assert_array_equal(batch.images[:, 0], expected)
    np.testing.assert_array_equal(batch.images, prepare_batch(images, resolution=40, channels=1,
                                                              resampling="mean").images)
    if not bunit:
        assert batch.resampling[0].reason.startswith("BUNIT missing: treated as surface brightness")
        assert "--resampling" in batch.resampling[0].reason


def test_summing_by_a_power_of_two_area_leaves_the_model_space_inputs_unchanged(
    tmp_path: Path, sources: list[np.ndarray]
) -> None:
    """Block 2: the sums are the means times 4 exactly, and the fit scales with them, so the model sees the same
    bits under either rule (only the physical values and their meaning differ)."""
    images = _read(_files(tmp_path, sources, ["count"] * 3))
    summed = prepare_batch(images, resolution=64, channels=1)
    averaged = prepare_batch(images, resolution=64, channels=1, resampling="mean")
    np.testing.assert_array_equal(summed.images, averaged.images)
    assert summed.params[0].vmax == 4 * averaged.params[0].vmax


def test_mixed_units_are_refused_naming_files_and_units_unless_a_rule_is_forced(
    tmp_path: Path, sources: list[np.ndarray]
) -> None:
    paths = _files(tmp_path, sources, ["count", "MJy/sr", None])
    images = _read(paths)
    with pytest.raises(ConfigurationError) as refused:
        prepare_batch(images, resolution=64, channels=1)
    message = str(refused.value)
    assert all(str(path) in message for path in paths) and "'count'" not in message
    assert "(count)" in message and "(MJy/sr)" in message and "(no BUNIT)" in message
    assert "--resampling sum" in message and "--resampling mean" in message
    for forced in ("sum", "mean"):
        batch = prepare_batch(images, resolution=64, channels=1, resampling=forced)  # type: ignore[arg-type]
        assert batch.resampling[0].rule == forced and batch.resampling[0].setting == forced
        assert batch.sources[0]["resampling"]["reason"].startswith(f"set by resampling={forced}")
    with pytest.raises(ConfigurationError, match="per-pixel units"):
        prepare_batch(_read(paths[:1] + paths[2:]), resolution=64, channels=1)  # count + a missing BUNIT
    assert choose_resampling([("a", "MJy/sr"), ("b", "")]).rule == "mean"  # averaged with averaged: fine
    with pytest.raises(ConfigurationError, match="auto, sum or mean"):
        choose_resampling([("a", "adu")], "median")  # type: ignore[arg-type]  # a wrong setting on purpose


def test_provenance_records_the_rule_per_input_and_in_the_normalization(
    tmp_path: Path, sources: list[np.ndarray]
) -> None:
    images = _read(_files(tmp_path, sources, ["nanomaggy"] * 3))
    batch = prepare_batch(images, resolution=32, channels=1, mode="per_image")
    assert batch.sources[1]["resampling"] == {
        "rule": "sum", "factor": 4, "setting": "auto",
        "reason": "BUNIT 'nanomaggy' is per pixel (a count or count rate in each pixel): blocks summed"}
    assert batch.sources[1]["block"] == 4 and all(p.resampling == "sum" for p in batch.params)
    stored = batch.params[0].to_dict()
    assert stored["resampling"] == "sum" and NormalizationParams.from_dict(stored).resampling == "sum"
    old = {k: v for k, v in stored.items() if k != "resampling"}  # a run recorded before the rule existed
    assert NormalizationParams.from_dict(old).resampling == "mean"
    record = {"normalization": {"resampling": [r.record() for r in batch.resampling]}}
    assert resampling_lines(record) == [f"- **resampling**: block sum, {batch.resampling[0].reason}"]
    assert block_rule(record)[0] == "summed" and block_rule({})[0] == "averaged"


def test_band_groups_take_the_rule_of_each_band(tmp_path: Path) -> None:
    paths = write_band_set(tmp_path / "gri", "gri", shape=(256, 256))
    with fits.open(paths[2], mode="update") as hdul:
        hdul[0].header["BUNIT"] = "MJy/sr"  # g and r stay in adu (the demo skies' unit): summed; i averaged
    groups = tile_band_group(read_band_group(paths), 128)
    batch = prepare_band_batch(groups, resolution=64)
    assert [r.rule for r in batch.resampling] == ["sum", "sum", "mean"]
    assert [p.resampling for p in batch.params] == ["sum", "sum", "mean"]
    assert [r["rule"] for r in batch.sources[0]["resampling"]] == ["sum", "sum", "mean"]
    assert batch.sources[0]["resampling"][0]["factor"] == 2
    physical = model_to_physical(batch.images, batch.params, per_band=True)
    first = groups[0]
    for k in (0, 2):  # within the clipped normalization's precision: the clipped pixels are few and faint here
        total = float(np.nansum(first.bands[k].data, dtype=np.float64))
        ratio = physical[0, k].astype(np.float64).sum() / total
        assert ratio == pytest.approx(1.0 if k == 0 else 0.25, rel=0.02), (k, ratio)
    assert block_rule({"normalization": {"resampling": [r.record() for r in batch.resampling]}})[0] == \
        "summed or averaged"
    with fits.open(paths[1], mode="update") as hdul:
        hdul[0].header["BUNIT"] = "MJy/sr"
    mixed = tile_band_group(read_band_group(paths), 128)
    mixed_groups = [mixed[0], *groups[1:]]  # band r: MJy/sr in the first group, adu in the others
    with pytest.raises(ConfigurationError, match="files of band 1"):
        prepare_band_batch(mixed_groups, resolution=64)
    forced = prepare_band_batch(mixed_groups, resolution=64, resampling="mean")
    assert [r.rule for r in forced.resampling] == ["mean"] * 3


def test_the_run_setting_defaults_to_auto_and_takes_sum_or_mean() -> None:
    params = PipelineParameters(inputs=["a.fits"], store="s.zarr")
    assert params.resampling == "auto"
    assert PipelineParameters(inputs=["a.fits"], store="s.zarr", resampling="sum").resampling == "sum"
    with pytest.raises(ValueError, match="resampling"):
        PipelineParameters(inputs=["a.fits"], store="s.zarr", resampling="median")  # type: ignore[arg-type]


def test_exported_counts_keep_their_unit_and_flux_at_the_block_pixel_scale(tmp_path: Path) -> None:
    """A run's record of summed counts, exported: BUNIT stays the input's, OODPIXSC and the CD matrix are the
    input's scale x the block factor (as provenance says), HISTORY says summed, and a sample that is an input
    mapped back holds the input's total counts."""
    paths = write_skies(tmp_path / "skies", 3, size=128, unit="count")  # demo skies: a TAN WCS
    images = _read(list(paths))
    batch = prepare_batch(images, resolution=64, channels=1, **NO_CLIP)  # type: ignore[arg-type]  # stretch literal
    physical = model_to_physical(batch.images, batch.params)
    record = {"parameters": {"seed": 1}, "inputs": batch.sources,
              "normalization": {"mode": "per_run", "params": [p.to_dict() for p in batch.params],
                                "per_band": False, "resampling": [r.record() for r in batch.resampling]}}
    store = str(tmp_path / "store.zarr")
    writer = RunWriter.create(store, n_inputs=3, channels=1, height=64, width=64, criterion_names=["c"],
                              provenance=record, units=batch.params[0].units)
    writer.write_inputs(batch.images, batch.mask, batch.images, batch.images, np.full(3, 35.0))
    writer.append_samples(batch.images, physical, batch.images, np.arange(3), np.arange(3),
                          np.zeros((3, 1), np.float32), np.ones(3))
    writer.complete()
    exported = export_run_fits(store, tmp_path / "out")
    native = np.asarray(batch.sources[0]["cd_matrix_deg"])
    np.testing.assert_allclose(native, images[0].wcs.celestial.pixel_scale_matrix)
    for index, path in enumerate(exported):
        header, data = fits.getheader(path), fits.getdata(path).astype(np.float64)
        assert header["BUNIT"] == "count" and header["OODBLOCK"] == 2 and "summed" in header.comments["OODBLOCK"]
        np.testing.assert_allclose([[header["CD1_1"], header["CD1_2"]], [header["CD2_1"], header["CD2_2"]]],
                                   2 * native)
        assert header["OODPIXSC"] == pytest.approx(2 * np.sqrt(abs(np.linalg.det(native))) * 3600)
        assert any("block-summed" in line for line in header["HISTORY"])
        total = float(images[index].data.astype(np.float64).sum())
        assert data.sum() == pytest.approx(total, rel=1e-6)
