"""Training images of the base models (photographs from installed wheels, dead leaves) and one-channel training
started from a shipped model's weights (issue 10 item 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from made_fits import write_skies

from ood_core.base_model.patches import BatchedPatchSampler, PatchSampler
from ood_core.base_model.training import TrainConfig, export_model, read_checkpoint, train_base_model
from ood_core.base_model.training_data import (
    DATA_SETS,
    EXCLUDED_ASTRONOMICAL,
    LICENCES,
    SIMULATED_SKIES,
    dead_leaves,
    natural_images,
    pink_noise,
)
from ood_core.errors import ConfigurationError
from ood_core.method.model import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("sets", "channels", "at_least"), [
    (("photos",), 3, 13),
    (("photos",), 1, 13),
    (("wheel-photos",), 1, 6),
    (("dead-leaves",), 1, 16),
    (("photos", "wheel-photos", "dead-leaves"), 1, 35),
])
def test_every_set_gives_images_in_range_with_the_asked_channels(sets: tuple[str, ...], channels: int,
                                                                 at_least: int) -> None:
    images = natural_images(sets, channels)
    assert len(images) >= at_least
    assert not any(bad in name for name in images for bad in EXCLUDED_ASTRONOMICAL)
    for name, image in images.items():
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == channels, name
        assert min(image.shape[:2]) >= 64, name
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.02, name


def test_every_set_has_a_licence_line() -> None:
    assert set(LICENCES) == set(DATA_SETS) | {SIMULATED_SKIES}


def test_grey_photos_are_the_luminance_of_the_colour_ones() -> None:
    rgb, grey = natural_images(("photos",), 3)["astronaut"], natural_images(("photos",), 1)["astronaut"]
    luminance = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    np.testing.assert_allclose(grey[..., 0], luminance, atol=1e-5)


def test_unknown_sets_and_channel_counts_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="choose from"):
        natural_images(("photos", "hubble"))
    with pytest.raises(ConfigurationError, match="1 or 3 channels"):
        natural_images(("photos",), 2)


def test_pink_noise_has_a_one_over_f_amplitude_spectrum() -> None:
    field = pink_noise((256, 256), np.random.default_rng(0))
    assert abs(field.mean()) < 1e-9 and abs(field.std() - 1) < 1e-9
    power = np.abs(np.fft.rfft2(field)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(256), np.fft.rfftfreq(256), indexing="ij")
    radius = np.hypot(fy, fx)
    bands = [(0.02, 0.04), (0.08, 0.16)]
    mean_power = [power[(radius >= lo) & (radius < hi)].mean() for lo, hi in bands]
    slope = np.log(mean_power[1] / mean_power[0]) / np.log(4.0)  # band centres 4x apart
    assert -2.3 < slope < -1.7  # power ~ f^-2


def test_dead_leaves_are_seeded_occluding_discs() -> None:
    a = dead_leaves(128, np.random.default_rng(3))
    b = dead_leaves(128, np.random.default_rng(3))
    c = dead_leaves(128, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.15
    # Occlusion makes flat regions with sharp edges: most neighbouring pixels are nearly equal, a few jump.
    steps = np.abs(np.diff(a, axis=1))
    assert np.median(steps) < 0.05 and np.quantile(steps, 0.99) > 0.3


@pytest.mark.parametrize("sampler", [PatchSampler, BatchedPatchSampler])
def test_samplers_draw_one_channel_patches(sampler: type[PatchSampler] | type[BatchedPatchSampler]) -> None:
    patches = sampler(natural_images(("photos",), 1), 32).sample(6, torch.Generator().manual_seed(0))
    assert patches.shape == (6, 1, 32, 32)
    assert patches.min() >= -1.0 and patches.max() <= 1.0 and patches.std() > 0.05


def test_one_channel_training_starts_from_the_shipped_mono64(tmp_path: Path) -> None:
    config = TrainConfig(channels=1, data=("photos", "dead-leaves"), init_from=str(ROOT / "models" / "mono64"),
                         batch_size=2, total_steps=1, checkpoint_every=1, learning_rate=1e-5)
    state = train_base_model(config, tmp_path / "ckpt")
    assert state.step == 1
    start = load_model(ROOT / "models" / "mono64", device="cpu").unet.state_dict()
    trained = read_checkpoint(tmp_path / "ckpt")["unet"]  # type: ignore[index]
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert moved and max(float((start[k] - trained[k]).abs().max()) for k in start) < 1e-3  # one small step away
    log = export_model(config, tmp_path / "ckpt", tmp_path / "model")
    assert log["data"]["sets"] == ["photos", "dead-leaves"] and log["data"]["channels"] == 1
    assert log["data"]["initialized_from"].endswith("mono64") and "dead-leaves" in log["data"]["licences"]
    assert load_model(tmp_path / "model", device="cpu").channels == 1


def test_init_from_a_model_of_another_architecture_is_refused(tmp_path: Path) -> None:
    config = TrainConfig(channels=3, init_from=str(ROOT / "models" / "mono64"), batch_size=2, total_steps=1)
    with pytest.raises(ConfigurationError, match="in_channels=1"):
        train_base_model(config, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "state.safetensors").exists()


@pytest.fixture(scope="module")
def grey16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-channel 16 px model trained 2 steps from a random start on wheel photos and dead leaves."""
    tmp = tmp_path_factory.mktemp("grey16")
    config = TrainConfig(channels=1, data=("wheel-photos", "dead-leaves"), resolution=16, block_out_channels=(16, 32),
                         attention_levels=(1,), batch_size=2, total_steps=2, checkpoint_every=1)
    train_base_model(config, tmp / "ckpt")
    export_model(config, tmp / "ckpt", tmp / "grey16")
    return tmp / "grey16"


def _card_names_its_data_start_and_reconstruction(model_dir: Path, cutouts: Path,
                                                  sources: tuple[str, ...]) -> None:
    from ood_core.base_model.model_card import write_model_card

    model = load_model(model_dir, device="cpu")
    card = write_model_card(model, model_dir, cutouts, title="test model", sources=sources)
    text = (model_dir / "README.md").read_text()
    assert text.startswith("# Base model: test model, 1x16x16")
    assert "**wheel-photos** (scikit-image: retina (CC0" in text and "**dead-leaves** (procedural" in text
    assert "from a random initialization, 2 steps of batch 2" in text
    assert [row["source"] for row in card["reconstruction"]] == list(sources)
    assert all(np.isfinite(row["median_psnr_db"]) for row in card["reconstruction"])
    assert all(f"| {source} | 600 | 40 |" in text for source in sources)
    assert (model_dir / "samples.png").stat().st_size > 1000


def test_card_of_a_one_channel_model_names_its_data_start_and_reconstruction(grey16: Path, tmp_path: Path) -> None:
    """On project-made skies under two source prefixes: one reconstruction row each."""
    write_skies(tmp_path / "cutouts", 2, prefix="skyA", seed=1)
    write_skies(tmp_path / "cutouts", 2, prefix="skyB", seed=2)
    _card_names_its_data_start_and_reconstruction(grey16, tmp_path / "cutouts", ("skyA", "skyB"))


def test_card_reconstructs_the_dev_sets_cutouts(grey16: Path, fits_dir: Path) -> None:
    _card_names_its_data_start_and_reconstruction(grey16, fits_dir / "cutouts_128", ("glimpse", "horsehead", "bolocam"))


def test_train_only_moves_the_named_layers_and_freezes_the_rest(tmp_path: Path) -> None:
    base: dict[str, Any] = dict(channels=1, data=("dead-leaves",), resolution=16, block_out_channels=(16, 32),
                                attention_levels=(1,), batch_size=2, total_steps=1, checkpoint_every=1, warmup_steps=0)
    train_base_model(TrainConfig(**base), tmp_path / "start")
    export_model(TrainConfig(**base), tmp_path / "start", tmp_path / "model")
    edges = TrainConfig(**base, init_from=str(tmp_path / "model"), train_only=("conv_in", "conv_out"))
    train_base_model(edges, tmp_path / "edges")
    before = load_model(tmp_path / "model", device="cpu").unet.state_dict()
    after = read_checkpoint(tmp_path / "edges")["unet"]  # type: ignore[index]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias"}
    with pytest.raises(ConfigurationError, match="names no UNet parameter"):
        train_base_model(TrainConfig(**base, train_only=("encoder",)), tmp_path / "none")
