"""Background noise matching the inputs' (issue 11 item 5): the fitted level against the noise the project's own
skies were made with (and against independent estimates on real cutouts when the dev set is there), seeded
realizations, and runs with --noise on / off (kept when given, chosen by the calibration otherwise, the same with
1 or N shards) on made skies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.stats import mad_std
from made_sets import PLAIN, SURVEY64, write_sky_set

from ood_cli.main import _calibration_summary, _parameters, build_parser
from ood_core.calibration import calibrate
from ood_core.evaluation.run_summary import calibration_rows
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.noise import (
    add_matching_noise,
    fit_noise_model,
    high_pass,
    own_level,
    realization,
    residual_level,
)
from ood_core.method.normalization import model_to_physical
from ood_core.pipeline import PipelineParameters, ingest, run_in_process
from ood_core.pipeline.sequence import settings_record
from ood_core.store import open_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOISE = 2.0
"""The made skies' pixel noise (ADU)."""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Nine made skies standing in for the GLIMPSE cutouts: a coarsely sampled field whose noise (std NOISE) is
    correlated over 0.6 px, so its spectrum is not flat."""
    return write_sky_set(tmp_path_factory.mktemp("noisy"), 9, config=SURVEY64, noise=NOISE, correlation=0.6)


def cutouts(fits_dir: Path, source: str, count: int | None = None) -> list[str]:
    return [str(p) for p in sorted((fits_dir / "cutouts_128").glob(f"{source}_*.fits"))[:count]]


def physical_inputs(files: list[str]) -> np.ndarray:
    """The run's physical inputs at the model resolution (normalized and mapped back, as the sample stage reads)."""
    params = PipelineParameters(inputs=files, store="unused.zarr", device="cpu")
    batch = ingest(params, 64, 1).batch
    return model_to_physical(batch.images, batch.params, np.arange(len(files)))


def params_for(files: list[str], store: Path, **fields: Any) -> PipelineParameters:
    base: dict[str, Any] = {"inputs": files, "store": str(store), "samples": 4, "steps": 2, "t0": 400,
                            "strategy": "slerp_ood_prior", "prior": "ppca", "reference_count": 3, "device": "cpu",
                            "seed": 5, "batch_size": 2, "calibrate": False, "candidate_budget": 400}
    return PipelineParameters(**{**base, **fields})


def test_level_of_real_cutouts_matches_independent_estimates(fits_dir: Path) -> None:
    """Near-white backgrounds (horsehead, hcg88r): the level is the pixel-difference MAD estimate (/sqrt 2).
    A cutout plus white noise of a known sigma: the level is sqrt(own^2 + sigma^2) (within 5 %; in a crowded field,
    glimpse, within 20 %: source residuals the clipping removed from the clean image hide in the added noise)."""
    for source in ("horsehead", "hcg88r"):
        images = physical_inputs(cutouts(fits_dir, source))
        model = fit_noise_model(images)
        independent = np.median([mad_std(np.diff(image, axis=1)) / np.sqrt(2) for image in images])
        assert model.level == pytest.approx(independent, rel=0.15), (source, model.level, independent)
    for source, factor, tolerance in (("hcg88r", 1, 0.05), ("hcg88r", 3, 0.05), ("glimpse", 3, 0.2)):
        images = physical_inputs(cutouts(fits_dir, source, 6))
        own = fit_noise_model(images).level
        noisy = images + np.random.default_rng(0).normal(0, factor * own, images.shape)
        expected = np.hypot(own, factor * own)
        assert fit_noise_model(noisy).level == pytest.approx(expected, rel=tolerance), (source, factor)
    assert own < 0.6 * mad_std(images)  # the level is the background noise, not the image's spread


def test_level_is_the_noise_the_skies_were_made_with(made: list[str], tmp_path: Path) -> None:
    """White Gaussian noise of a known std on noiseless skies: the level is that std (within 5 %). The demo's CCD
    skies (128 px in adu, block-summed to the model's 64): the level is the sky's Poisson and read noise of the sum
    of 2 x 2 pixels, twice a pixel's (within 10 %; the sources' own Poisson noise adds a little), and the
    pixel-difference MAD estimate (/sqrt 2) agrees (within 15 %). A set plus white noise of a known sigma: the level
    is sqrt(own^2 + sigma^2) (within 5 %; with correlated noise within 20 %, as on GLIMPSE)."""
    white = physical_inputs(write_sky_set(tmp_path / "white", 6, config=SURVEY64, noise=NOISE))
    assert fit_noise_model(white).level == pytest.approx(NOISE, rel=0.05), fit_noise_model(white).levels
    ccd = physical_inputs(write_sky_set(tmp_path / "ccd", 6))
    model = fit_noise_model(ccd)
    sky = np.sqrt(PLAIN.sky_level_adu * PLAIN.gain_e_per_adu + PLAIN.read_noise_e**2) / PLAIN.gain_e_per_adu
    assert model.level == pytest.approx(sky * 2, rel=0.1), (model.level, sky * 2)
    independent = np.median([mad_std(np.diff(image, axis=1)) / np.sqrt(2) for image in ccd])
    assert model.level == pytest.approx(independent, rel=0.15), (model.level, independent)
    for images, factor, tolerance in ((white, 1, 0.05), (ccd, 3, 0.05), (physical_inputs(made[:6]), 3, 0.2)):
        own = fit_noise_model(images).level
        noisy = images + np.random.default_rng(0).normal(0, factor * own, images.shape)
        expected = np.hypot(own, factor * own)
        assert fit_noise_model(noisy).level == pytest.approx(expected, rel=tolerance), (factor, tolerance)


def test_realization_has_the_std_and_the_spectrum_and_is_seeded(made: list[str]) -> None:
    model = fit_noise_model(physical_inputs(made))
    field = realization(model.spectrum, 2.5, seed=7)
    assert field.std() == pytest.approx(2.5, rel=1e-9) and abs(field.mean()) < 1e-9
    np.testing.assert_array_equal(field, realization(model.spectrum, 2.5, seed=7))
    assert not np.array_equal(field, realization(model.spectrum, 2.5, seed=8))
    fields = [realization(model.spectrum, 1.0, seed=k) for k in range(32)]
    power = np.mean([np.abs(np.fft.fft2(f)) ** 2 for f in fields], axis=0)
    measured = type(model)(model.levels, power / power[1:].mean(), model.gain).isotropic()
    np.testing.assert_allclose(measured, model.isotropic(), rtol=0.15)
    white = fit_noise_model(np.random.default_rng(1).standard_normal((8, 64, 64)))
    assert max(white.isotropic()) / min(white.isotropic()) < 1.4  # white stays white
    assert max(model.isotropic()) / min(model.isotropic()) > 2  # the made noise is correlated, and seen so


def test_matching_noise_fills_only_the_missing_variance(made: list[str]) -> None:
    images = physical_inputs(made)
    model = fit_noise_model(images)
    smooth = images[0] - high_pass(images[0])  # the running median: no pixel noise left
    noisy, added = add_matching_noise(smooth, model, seed=3)
    assert own_level(smooth, model) < 0.3 * model.level and added > 0.9 * model.level
    assert own_level(noisy, model) == pytest.approx(model.level, rel=0.15)
    again, _ = add_matching_noise(smooth, model, seed=3)
    np.testing.assert_array_equal(noisy, again)
    noisiest = int(np.argmax(model.levels))
    _, none_added = add_matching_noise(images[noisiest], model, seed=3)
    assert none_added == 0.0  # already noisier than the run's level: left alone
    assert residual_level(images[noisiest]) > residual_level(smooth)


def test_noise_on_makes_noisier_backgrounds_than_off_and_records_it(made: list[str], tmp_path: Path) -> None:
    files = made[:6]
    runs = {value: run_in_process(params_for(files, tmp_path / f"{value}.zarr", noise=value))
            for value in ("off", "on")}
    data = {v: open_run(r.store, r.run_id, chunks=None) for v, r in runs.items()}
    record = dict(data["on"].attrs["ood_run"])
    model = fit_noise_model(physical_inputs(files))
    levels = {v: [own_level(image, model) for image in data[v]["samples_physical"].values] for v in data}
    assert np.median(levels["off"]) < 0.6 * model.level, levels
    assert np.median(levels["on"]) == pytest.approx(model.level, rel=0.2), levels
    for name in ("sample_seed", "sample_parent", "sample_latents"):  # everything else identical
        np.testing.assert_array_equal(data["on"][name].values, data["off"][name].values)
    phys_on, phys_off = data["on"]["samples_physical"].values, data["off"]["samples_physical"].values
    assert np.abs(phys_on - phys_off).mean() > 0.3 * model.level
    norm = _params(record)
    back = model_to_physical(data["on"]["samples"].values, [norm])  # model space: the noisy samples, clipped
    low, high = norm.background + norm.vmin, norm.background + norm.vmax
    assert ((phys_on > low) & (phys_on < high)).mean() > 0.3
    np.testing.assert_allclose(back, np.clip(phys_on, low, high), rtol=1e-4, atol=1e-3 * model.level)
    noise = record["noise"]
    assert noise["enabled"] and noise["from"] == "given" and noise["level_run"] == pytest.approx(model.level)
    assert len(noise["level_per_input"]) == 6 and "noise/<sample slot>" in noise["seed_stream"]
    assert record["settings"]["noise"] == "on" and record["settings"]["from"]["noise"] == "given"
    off = dict(data["off"].attrs["ood_run"])["noise"]
    assert not off["enabled"] and off["applied_to"] == "nothing"


def _params(record: dict[str, Any]) -> Any:
    from ood_core.method.normalization import NormalizationParams

    return NormalizationParams.from_dict(record["normalization"]["params"][0])


def test_sharded_noise_is_the_same_as_unsharded(made: list[str], tmp_path: Path) -> None:
    files = made[:4]
    one = run_in_process(params_for(files, tmp_path / "one.zarr", noise="on", samples=5))
    three = run_in_process(params_for(files, tmp_path / "three.zarr", noise="on", samples=5, shards=3))
    a, b = (open_run(r.store, r.run_id, chunks=None) for r in (one, three))
    assert dict(b.attrs["ood_run"])["sampler"]["shards"] == 3
    for name in ("samples", "samples_physical", "sample_seed"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_calibration_scores_noise_both_ways_and_keeps_a_given_noise(
    made: list[str], mono_model: FrozenDiffusionModel, capsys: pytest.CaptureFixture[str]
) -> None:
    files = made[:6]
    fields = {"t0": 400, "strategy": "slerp_ood_prior", "prior": "ppca", "calibrate": True, "samples": 2}
    shots = ingest(params_for(files, Path("unused.zarr"), **fields), mono_model.resolution, mono_model.channels)
    free = params_for(files, Path("unused.zarr"), **fields)
    record = calibrate(free, mono_model, shots)
    table = record["table"]
    assert [row["setting"]["noise"] for row in table] == ["off", "on"] and record["chosen"] == {
        "noise": table[record["best"]]["setting"]["noise"]}
    assert table[0]["scores"]["near_copy_fraction"] == table[1]["scores"]["near_copy_fraction"]
    assert table[0]["scores"]["spectrum_dex"] != table[1]["scores"]["spectrum_dex"]
    assert settings_record(free, record)["from"]["noise"] == "calibration"
    given = params_for(files, Path("unused.zarr"), **fields, noise="on")
    kept = calibrate(given, mono_model, shots)
    assert kept["chosen"] == {} and [row["setting"]["noise"] for row in kept["table"]] == ["on"]
    assert kept["evaluations_spent"] == record["evaluations_spent"]  # noise costs no network evaluation
    assert settings_record(given, kept)["noise"] == "on" and settings_record(given, kept)["from"]["noise"] == "given"
    assert [row["noise"] for row in calibration_rows({"calibration": record})] == ["off", "on"]
    _calibration_summary({"settings": settings_record(free, record), "calibration": record})
    out = capsys.readouterr().out
    assert " noise " in out and "noise " + table[record["best"]]["setting"]["noise"] + " (calibration)" in out


def test_cli_noise_flag() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "a.fits", "--store", "s.zarr", "--noise", "on"])
    assert _parameters(args, ["a.fits"], "s.zarr").noise == "on"
    args = parser.parse_args(["run", "a.fits", "--store", "s.zarr"])
    assert _parameters(args, ["a.fits"], "s.zarr").noise is None
    with pytest.raises(ValueError, match="single-band"):
        PipelineParameters(inputs=["a.fits", "b.fits"], store="s.zarr", band_groups=[["a.fits", "b.fits"]],
                           noise="on")
