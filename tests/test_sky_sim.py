"""The simulated-sky corpus of the base models (issue 20): GalSim stamp library and the scenes composed from it.

Seeded and reproducible, in range, flux-conserving, normalized exactly as the pipeline maps a FITS image, no
survey image anywhere; a training run on skies resumes bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_core.base_model.sky_library import (
    LICENCE,
    LibraryConfig,
    SkyLibrary,
    library_path,
    load_library,
    render_galaxy,
    render_psf,
    sky_library,
)
from ood_core.base_model.sky_scenes import STRETCHES, SceneConfig, SkyScenes, apply_stretch, interval_unit
from ood_core.base_model.training import TrainConfig, read_checkpoint, train_base_model, warm_start_from_export
from ood_core.base_model.training_mix import MixedSampler, build_sampler, describe_data
from ood_core.errors import ConfigurationError
from ood_core.method.normalization import fit_normalization, normalize

TINY = LibraryConfig(psfs=6, galaxies=(12, 4, 2))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sky-cache")


@pytest.fixture(scope="module")
def library(cache: Path) -> SkyLibrary:
    return sky_library(TINY, folder=cache)


@pytest.fixture
def scenes(library: SkyLibrary) -> SkyScenes:
    return SkyScenes(library, SceneConfig(), "cpu")


def test_stamps_are_seeded_and_do_not_depend_on_the_others() -> None:
    psf, fwhm, kind = render_psf(TINY, 3)
    again, _, _ = render_psf(LibraryConfig(psfs=50), 3)  # a larger library draws the same PSF 3
    np.testing.assert_array_equal(psf, again)
    other, _, _ = render_psf(LibraryConfig(seed=1, psfs=6, galaxies=(12, 4, 2)), 3)
    assert not np.array_equal(psf, other)
    galaxy, galaxy_kind = render_galaxy(TINY, 0, 5)
    np.testing.assert_array_equal(galaxy, render_galaxy(TINY, 0, 5)[0])
    assert kind and galaxy_kind and TINY.psf_fwhm[0] <= fwhm <= TINY.psf_fwhm[1]


def test_library_stamps_are_unit_flux_centred_and_in_range(library: SkyLibrary) -> None:
    side = library.psfs.shape[1]
    np.testing.assert_allclose(library.psfs.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert side % 2 == 1 and library.psfs.min() >= 0
    peaks = [np.unravel_index(np.argmax(p), p.shape) for p in library.psfs]
    assert all(abs(py - side // 2) <= 2 and abs(px - side // 2) <= 2 for py, px in peaks)
    for stamps, size in zip(library.galaxies, TINY.stamp_sizes, strict=True):
        assert stamps.shape[1:] == (size, size) and stamps.min() >= 0
        flux = stamps.sum(axis=(1, 2))
        assert np.all(flux <= 1.0 + 1e-3) and np.all(flux > 0.7)  # at most a little light beyond the stamp
        rows = np.arange(size, dtype=np.float64)[None, :, None]
        centre_y = (stamps * rows).sum(axis=(1, 2)) / flux
        assert np.all(np.abs(centre_y - (size - 1) / 2) < 0.25 * size)


def test_library_cache_round_trips_and_refuses_a_damaged_file(library: SkyLibrary, cache: Path,
                                                               tmp_path: Path) -> None:
    shutil.copy(library_path(TINY, cache), tmp_path)
    again = sky_library(TINY, folder=tmp_path)
    np.testing.assert_array_equal(again.psfs, library.psfs)
    for a, b in zip(again.galaxies, library.galaxies, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3 * float(b.max()))  # stored as float16
    cached = next(tmp_path.glob("sky-library-*.npz"))
    cached.write_bytes(cached.read_bytes()[:2000])
    with pytest.raises(ConfigurationError, match="delete it to rebuild"):
        load_library(cached)


def test_scenes_are_reproducible_from_the_generator_and_in_range(scenes: SkyScenes) -> None:
    first = scenes.sample(6, torch.Generator().manual_seed(7))
    second = scenes.sample(6, torch.Generator().manual_seed(7))
    third = scenes.sample(6, torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, third)
    assert first.shape == (6, 1, 64, 64) and first.min() >= -1 and first.max() <= 1
    assert torch.all(first.flatten(1).std(dim=1) > 0.01)  # never a blank frame: there is always noise


def test_three_channel_scenes_have_independent_noise_and_coloured_sources(library: SkyLibrary) -> None:
    scenes = SkyScenes(library, SceneConfig(channels=3), "cpu")
    skies = scenes.physical(8, torch.Generator().manual_seed(0))
    assert skies.shape == (8, 3, 64, 64)
    residual = skies - skies.median(dim=1, keepdim=True).values
    assert not torch.allclose(skies[:, 0], skies[:, 1])
    assert residual.abs().mean() > 0.1


def test_psf_convolution_and_binning_conserve_flux(scenes: SkyScenes) -> None:
    n, o, margin = scenes.fft_size, scenes.oversampling, scenes.config.margin
    canvas = torch.zeros(3, 1, n, n)
    centre = o * (margin + 32)
    canvas[:, 0, centre, centre] = 100.0
    frame = scenes._convolve_and_bin(canvas, torch.tensor([0, 1, 2]))
    assert frame.shape == (3, 1, 64, 64)
    torch.testing.assert_close(frame.sum(dim=(1, 2, 3)), torch.full((3,), 100.0), rtol=0.02, atol=0)
    peak = np.unravel_index(int(frame[0, 0].argmax()), (64, 64))
    assert abs(peak[0] - 32) <= 1 and abs(peak[1] - 32) <= 1


def test_background_noise_is_unit_sigma_and_shot_noise_grows_with_signal(scenes: SkyScenes) -> None:
    flat = torch.zeros(64, 1, 64, 64)
    noise = scenes._noise(flat, torch.Generator().manual_seed(1))
    assert abs(float(noise.std()) - 1.0) < 0.03
    bright = scenes._noise(flat + 1000.0, torch.Generator().manual_seed(1))
    assert float(bright.std()) > 1.5 * float(noise.std())


@pytest.mark.parametrize("stretch", STRETCHES)
def test_normalization_is_the_pipelines_own(scenes: SkyScenes, stretch: str) -> None:
    sky = scenes.physical(4, torch.Generator().manual_seed(3))
    which = torch.full((4,), STRETCHES.index(stretch))
    ours = (apply_stretch(interval_unit(sky.reshape(4, -1).double()), which) * 2 - 1).reshape(4, 64, 64)
    for image, mapped in zip(sky[:, 0].double().numpy(), ours.numpy(), strict=True):
        params = fit_normalization([image], stretch=stretch)  # type: ignore[arg-type]
        pipeline = normalize(image, params)
        assert np.mean(np.abs(mapped - pipeline) < 2e-3) > 0.99, stretch


def test_mixed_batches_hold_the_asked_share_of_image_patches(library: SkyLibrary) -> None:
    class Constant:
        def __init__(self, value: float) -> None:
            self.value = value

        def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
            return torch.full((batch_size, 1, 4, 4), self.value)

    batch = MixedSampler(Constant(-1.0), Constant(1.0), 0.25).sample(8, torch.Generator())
    assert batch[:, 0, 0, 0].tolist() == [-1.0] * 6 + [1.0] * 2
    with pytest.raises(ConfigurationError, match="natural_share"):
        MixedSampler(Constant(0.0), Constant(0.0), 1.5)


def test_training_data_names_every_source_and_no_survey_image(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("OOD_SYNTH_CACHE", str(tmp_path))
    config = TrainConfig(channels=1, data=("sky-sim", "dead-leaves"), library=_tiny())
    described = describe_data(config)
    assert described["licences"]["sky-sim"].startswith("simulated skies: GalSim")
    assert "no survey image" in LICENCE and described["simulated_skies"]["natural_share"] == 0.1
    assert not [name for name in described["images"] if "hubble" in name or "moon" in name or "fits" in name]
    with pytest.raises(ConfigurationError, match="sky-sim"):
        build_sampler(TrainConfig(data=("sdss",)), "loop", torch.device("cpu"))


def test_training_on_skies_resumes_bit_for_bit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               one_torch_thread: None) -> None:
    monkeypatch.setenv("OOD_SYNTH_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(channels=1, data=("sky-sim", "dead-leaves"), natural_share=0.25, batch_size=4,
                         block_out_channels=(16, 32), attention_levels=(), checkpoint_every=2, total_steps=4,
                         warmup_steps=1, library=_tiny(), device="cpu")
    train_base_model(config, tmp_path / "whole")
    train_base_model(config, tmp_path / "split", max_steps=2)
    train_base_model(config, tmp_path / "split")
    whole, split = read_checkpoint(tmp_path / "whole"), read_checkpoint(tmp_path / "split")
    assert whole is not None and split is not None and whole["step"] == split["step"] == 4
    assert whole["losses"] == split["losses"]
    for key, value in whole["unet"].items():
        torch.testing.assert_close(split["unet"][key], value, rtol=0, atol=0)


def _tiny() -> dict[str, object]:
    return {"psfs": TINY.psfs, "galaxies": list(TINY.galaxies)}


SKY_MODEL = Path(__file__).resolve().parents[1] / "models" / "sky64"


def test_the_committed_sky_model_continues_its_loss_curve_reproducibly(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path,
                                                                       one_torch_thread: None) -> None:
    """models/sky64 is a resumable state: continued twice from the folder (EMA weights, step count, a fresh
    optimizer), the two runs agree bit for bit, and the loss goes on where the GPU run left it, far below
    the loss of the same network freshly initialized."""
    monkeypatch.setenv("OOD_SYNTH_CACHE", str(tmp_path / "cache"))
    log = json.loads((SKY_MODEL / "training_log.json").read_text())
    saved = {k: v for k, v in log["config"].items() if k in ("block_out_channels", "attention_levels", "channels",
                                                               "layers_per_block", "data", "natural_share")}
    config = TrainConfig(**_tuples(saved), batch_size=8, learning_rate=1e-5, warmup_steps=1, checkpoint_every=3,
                         total_steps=log["steps"] + 3, library=_tiny(), device="cpu", seed=5)
    runs = []
    for name in ("a", "b"):
        warm_start_from_export(SKY_MODEL, tmp_path / name, config)
        runs.append(train_base_model(config, tmp_path / name))
    scratch = train_base_model(dataclasses.replace(config, total_steps=3), tmp_path / "scratch")
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    assert a is not None and b is not None and a["step"] == log["steps"] + 3
    assert all(torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])
    continued, recorded, initial = runs[0].losses[-1], log["loss_per_checkpoint"][-1], scratch.losses[-1]
    assert continued < 4 * recorded and continued < initial / 5, (continued, recorded, initial)


def _tuples(values: dict[str, object]) -> dict[str, object]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
