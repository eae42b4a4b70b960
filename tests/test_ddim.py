"""DDIM formulas checked against a model whose optimal noise prediction is known in closed form."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler

from ood_core.errors import ConfigurationError
from ood_core.method.ddim import (
    ddim_generate,
    ddim_invert,
    invert_and_reconstruct,
    psnr,
    scan_bandwidth,
    timestep_grid,
)
from ood_core.method.model import FrozenDiffusionModel

DATA_STD = 0.5


class GaussianOracle(torch.nn.Module):
    """Exact eps for data ~ N(0, DATA_STD^2 I): eps = sqrt(1-a) x / (a s^2 + 1 - a)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.alphas = alphas_cumprod.double()
        self.config = SimpleNamespace(in_channels=3, out_channels=3, sample_size=8)
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> Any:
        self.calls += 1
        a = self.alphas[t].view(-1, 1, 1, 1).float()
        return SimpleNamespace(sample=(1 - a).sqrt() * x / (a * DATA_STD**2 + 1 - a))


def oracle_model() -> FrozenDiffusionModel:
    alphas = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()
    return FrozenDiffusionModel(
        unet=GaussianOracle(alphas),  # type: ignore[arg-type]
        alphas_cumprod=alphas,
        device=torch.device("cpu"),
        dtype=torch.float32,
        source="oracle",
        weights_sha256="none",
        unet_config={},
        scheduler_config={},
    )


def test_grid_spans_zero_to_t0() -> None:
    assert timestep_grid(900, 3, 1000) == [0, 300, 600, 900]
    with pytest.raises(ConfigurationError, match="t0=1000"):
        timestep_grid(1000, 10, 1000)
    with pytest.raises(ConfigurationError, match="steps=0"):
        timestep_grid(500, 0, 1000)


def test_inversion_follows_the_probability_flow_of_the_gaussian() -> None:
    # For Gaussian data the DDIM ODE is linear: x_t = x0 * sqrt(a s^2 + 1 - a) / s.
    model = oracle_model()
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * DATA_STD
    grid = timestep_grid(800, 400, 1000)
    latents = ddim_invert(model, x0, grid, batch_size=3)
    a = float(model.alphas_cumprod[800])
    expected = x0 * ((a * DATA_STD**2 + 1 - a) ** 0.5 / DATA_STD)
    assert torch.allclose(latents, expected, rtol=2e-2, atol=2e-3)


def test_generation_inverts_inversion_and_counts_k_evaluations() -> None:
    model = oracle_model()
    oracle = model.unet
    x0 = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * DATA_STD
    result = invert_and_reconstruct(model, x0, t0=600, steps=50, batch_size=8)
    assert oracle.calls == 2 * 50  # type: ignore[attr-defined]
    assert result.grid[-1] == 600 and result.latents.shape == x0.shape
    assert float(result.psnr_db.min()) > 33.0
    assert result.summary()["median_psnr_db"] == pytest.approx(float(result.psnr_db.median()), abs=1.0)
    # DDIM inversion is a first-order scheme: the round-trip error shrinks as K grows.
    finer = invert_and_reconstruct(model, x0, t0=600, steps=200, batch_size=8)
    assert float(finer.psnr_db.min()) > float(result.psnr_db.max()) + 6.0


def test_batching_does_not_change_results() -> None:
    model = oracle_model()
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    grid = timestep_grid(500, 20, 1000)
    one = ddim_generate(model, x, grid, eta=0.5, seeds=list(range(6)), batch_size=1)
    many = ddim_generate(model, x, grid, eta=0.5, seeds=list(range(6)), batch_size=4)
    assert torch.equal(one, many)


def test_eta_adds_seeded_noise_only_when_positive() -> None:
    model = oracle_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    grid = timestep_grid(500, 10, 1000)
    deterministic = ddim_generate(model, x, grid)
    assert torch.equal(deterministic, ddim_generate(model, x, grid))
    noisy_a = ddim_generate(model, x, grid, eta=1.0, seeds=[7, 8])
    noisy_b = ddim_generate(model, x, grid, eta=1.0, seeds=[7, 8])
    noisy_c = ddim_generate(model, x, grid, eta=1.0, seeds=[9, 8])
    assert torch.equal(noisy_a, noisy_b)
    assert not torch.equal(noisy_a[0], noisy_c[0]) and torch.equal(noisy_a[1], noisy_c[1])
    assert not torch.equal(noisy_a, deterministic)
    with pytest.raises(ConfigurationError, match="one seed per latent"):
        ddim_generate(model, x, grid, eta=0.5)


def test_psnr_of_known_error() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = a + 0.02  # mse 4e-4 over data range 2 -> 10 log10(4 / 4e-4) = 40 dB
    assert torch.allclose(psnr(a, b), torch.tensor([40.0, 40.0]), atol=1e-4)


def test_bandwidth_scan_picks_largest_t0_over_threshold() -> None:
    model = oracle_model()
    x0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * DATA_STD
    scan = scan_bandwidth(model, x0, [200, 500, 900], steps=10, threshold_db=25.0)
    medians = {int(p["t0"]): p["median_psnr_db"] for p in scan.curve}
    passing = [t for t, v in medians.items() if v >= 25.0]
    assert scan.chosen_t0 == max(passing)
    assert scan.to_dict()["curve"][0]["t0"] == 200.0
    strict = scan_bandwidth(model, x0, [200, 900], steps=10, threshold_db=1e6)
    assert strict.chosen_t0 == 200 and not strict.threshold_met
