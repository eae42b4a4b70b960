"""The one-channel model collapsed from the shipped RGB one: same first-layer response to grey images,
reproducible shipped weights, the derivation recorded, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from ood_core.base_model.collapse import DERIVATION_FILE, WEIGHTS, collapse_channels, collapse_unet
from ood_core.errors import ConfigurationError
from ood_core.method.model import load_model
from ood_core.store.provenance import sha256_file

MONO = Path(__file__).resolve().parents[1] / "models" / "mono64"


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("mono") / "mono64"
    collapse_channels(shipped_model_dir, out)
    return out


def test_first_layer_of_grey_image_matches_rgb_model(shipped_model_dir: Path, collapsed: Path) -> None:
    rgb = UNet2DModel.from_pretrained(shipped_model_dir / "unet").eval()
    mono = UNet2DModel.from_pretrained(collapsed / "unet").eval()
    grey = torch.randn((2, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = rgb.conv_in(grey.repeat(1, 3, 1, 1))
        got = mono.conv_in(grey)
        # the whole network on a grey image predicts the channel mean of the RGB prediction only up to the
        # non-linear layers' response to the same features: after conv_in they are identical
        t = torch.tensor([300, 300])
        down_rgb = rgb.down_blocks[0](rgb.conv_in(grey.repeat(1, 3, 1, 1)), rgb.time_embedding(rgb.time_proj(t)))
        down_mono = mono.down_blocks[0](mono.conv_in(grey), mono.time_embedding(mono.time_proj(t)))
    assert (mono.config.in_channels, mono.config.out_channels) == (1, 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(down_mono[0], down_rgb[0], rtol=1e-4, atol=1e-4)
    # a colour image (channels differ) does not give the grey response: the test can tell the layers apart
    colour = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(rgb.conv_in(colour), mono.conv_in(colour.mean(dim=1, keepdim=True)), atol=1e-3)


def test_output_layer_is_the_channel_mean(shipped_model_dir: Path) -> None:
    rgb = UNet2DModel.from_pretrained(shipped_model_dir / "unet").eval()
    mono = collapse_unet(rgb)
    features = torch.randn((1, rgb.conv_out.in_channels, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(mono.conv_out(features), rgb.conv_out(features).mean(dim=1, keepdim=True),
                                   rtol=1e-5, atol=1e-5)


def test_shipped_mono64_is_the_collapse_of_base64(collapsed: Path) -> None:
    """models/mono64 is exactly what collapse_channels makes from models/base64 (byte-identical weights)."""
    assert sha256_file(MONO / WEIGHTS) == sha256_file(collapsed / WEIGHTS)
    record = json.loads((MONO / DERIVATION_FILE).read_text())
    assert record["weights_sha256"] == sha256_file(MONO / WEIGHTS) and record["derived_from"] == "base64"
    model = load_model(MONO, device="cpu")
    assert (model.channels, model.resolution) == (1, 64)
    card = json.loads((MONO / "card.json").read_text())
    assert card["weights_sha256"] == model.weights_sha256
    assert card["median_of_source_medians_psnr_db"] >= 35.0


def test_shipped_weights_stay_small() -> None:
    models = Path(__file__).resolve().parents[1] / "models"
    total = sum(p.stat().st_size for p in models.rglob("*") if p.is_file())
    assert total <= 50 * 2**20, f"shipped models take {total / 2**20:.1f} MiB (limit 50)"


def test_refusals(tmp_path: Path, shipped_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="no unet"):
        collapse_channels(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ConfigurationError, match="overwrite its source"):
        collapse_channels(shipped_model_dir, shipped_model_dir)
    learned_variance = UNet2DModel(sample_size=8, in_channels=3, out_channels=6, block_out_channels=(8, 16),
                                   down_block_types=("DownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with pytest.raises(ConfigurationError, match="reads 3 and writes 6"):
        collapse_unet(learned_variance)
