"""OOD priors on synthetic latents with planted structure, checked against independent implementations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import LowRankMultivariateNormal, Normal

from ood_core.errors import ConfigurationError
from ood_core.method.prior import (
    LatentPrior,
    PPCAPrior,
    ScalarGaussianPrior,
    fit_prior,
    generator_from_seed,
    prior_diagnostics,
    reseed,
)

D_IMAGE = 3 * 64 * 64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def planted_low_rank() -> dict[str, torch.Tensor]:
    """n = 40 latents in D = 2000: mean + 3 orthogonal directions (std 8, 5, 3) + isotropic noise 0.05."""
    n, dim = 40, 2000
    basis, _ = torch.linalg.qr(torch.randn(dim, 3, generator=_gen(1), dtype=torch.float64))
    coefficients = torch.randn(n, 3, generator=_gen(2), dtype=torch.float64) * torch.tensor([8.0, 5.0, 3.0])
    mean = torch.randn(dim, generator=_gen(3), dtype=torch.float64)
    noise = 0.05 * torch.randn(n, dim, generator=_gen(4), dtype=torch.float64)
    latents = mean + coefficients @ basis.T + noise
    return {"latents": latents.float(), "basis": basis, "coefficients": coefficients}


def test_scalar_prior_recovers_planted_sigma_and_mean() -> None:
    mu = torch.randn(D_IMAGE, generator=_gen(0))
    latents = (mu + 0.7 * torch.randn(12, D_IMAGE, generator=_gen(1))).reshape(12, 3, 64, 64)
    prior = fit_prior(latents, "scalar")
    assert isinstance(prior, ScalarGaussianPrior) and isinstance(prior, LatentPrior)
    assert prior.dim == D_IMAGE and prior.n_fit == 12
    assert prior.sigma == pytest.approx(0.7, rel=0.01)
    assert torch.allclose(prior.mean, latents.reshape(12, -1).double().mean(0).float(), atol=1e-6)
    # Pooled variance = mean of the unbiased per-dimension variances, exactly.
    assert prior.variance == pytest.approx(float(latents.reshape(12, -1).double().var(0).mean()), rel=1e-12)
    summary = prior.to_dict()
    json.dumps(summary, allow_nan=False)
    assert summary["kind"] == "scalar" and summary["sigma"] == pytest.approx(prior.sigma)
    lo, q10, median, q90, hi = summary["per_dimension_variance_quantiles"].values()
    assert lo <= q10 <= median <= q90 <= hi and median == pytest.approx(0.49, rel=0.1)


def test_scalar_log_density_matches_torch_normal() -> None:
    latents = 2.0 + 0.5 * torch.randn(10, 300, generator=_gen(5))
    prior = fit_prior(latents, "scalar")
    z = 2.0 + 0.5 * torch.randn(4, 300, generator=_gen(6))
    expected = Normal(prior.mean.double(), prior.sigma).log_prob(z.double()).sum(dim=1)
    assert torch.allclose(prior.log_density(z), expected, rtol=1e-10)


def test_ppca_recovers_planted_low_rank_structure(planted_low_rank: dict[str, torch.Tensor]) -> None:
    prior = fit_prior(planted_low_rank["latents"], "ppca")
    assert isinstance(prior, PPCAPrior)
    assert prior.n_components == 3  # the 90% rule finds exactly the planted rank
    # The fitted directions span the planted ones. The noise tilts each by about
    # sqrt(noise eigenvalue / planted variance) = sqrt(D 0.05^2 / (n - 1) / 9) ~ 0.12 rad at most.
    cosines = torch.linalg.svdvals(prior.components.double() @ planted_low_rank["basis"])
    assert float(cosines.min()) > 0.985
    planted_variances = planted_low_rank["coefficients"].var(dim=0).sort(descending=True).values
    assert torch.allclose(prior.component_variances, planted_variances, rtol=0.02)
    assert prior.residual_variance == pytest.approx(0.05**2, rel=0.1)
    # Same total variance, hence the same pooled sigma, as the scalar prior.
    scalar = fit_prior(planted_low_rank["latents"], "scalar")
    assert prior.sigma == pytest.approx(scalar.sigma, rel=1e-9)
    summary = prior.to_dict()
    json.dumps(summary, allow_nan=False)
    assert summary["explained_variance_total"] > 0.9 and len(summary["component_variances"]) == 3


def test_ppca_log_density_and_draws_follow_the_model(planted_low_rank: dict[str, torch.Tensor]) -> None:
    prior = PPCAPrior.fit(planted_low_rank["latents"], n_components=2)
    assert prior.n_components == 2 and prior.n_components_rule.startswith("fixed")
    # Cov = V diag(lambda) V^T + s2 (I - V V^T) = V diag(lambda - s2) V^T + s2 I.
    factor = prior.components.double().T * (prior.component_variances - prior.residual_variance).sqrt()
    reference = LowRankMultivariateNormal(
        prior.mean.double(), factor, torch.full((prior.dim,), prior.residual_variance, dtype=torch.float64)
    )
    z = planted_low_rank["latents"][:5]
    assert torch.allclose(prior.log_density(z), reference.log_prob(z.double()), rtol=1e-8)

    draws = prior.sample(3000, _gen(7)).double() - prior.mean.double()
    along = draws @ prior.components.double().T
    assert torch.allclose(along.var(dim=0), prior.component_variances, rtol=0.1)
    off = planted_low_rank["basis"][:, 2]  # the third planted direction is left to the residual
    off = off - prior.components.double().T @ (prior.components.double() @ off)
    off = off / off.norm()
    assert float((draws @ off).var()) == pytest.approx(prior.residual_variance, rel=0.1)


def test_ppca_rejects_too_many_components(planted_low_rank: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ConfigurationError, match="n_components"):
        PPCAPrior.fit(planted_low_rank["latents"], n_components=39)  # n - 1: nothing left for the residual
    with pytest.raises(ConfigurationError):
        fit_prior(planted_low_rank["latents"], "scalar", n_components=2)


@pytest.mark.parametrize("kind", ["scalar", "ppca"])
def test_seeded_draws_regenerate(kind: str) -> None:
    latents = torch.randn(8, 3, 8, 8, generator=_gen(8))
    prior = fit_prior(latents, kind)
    seeds = [3, -5, 2**62, 3]
    rows = prior.sample_with_seeds(seeds)
    assert rows.shape == (4, 192) and rows.dtype == torch.float32
    assert torch.equal(rows[0], rows[3])
    assert not torch.equal(rows[0], rows[1])
    assert torch.equal(rows[1], prior.sample(1, generator_from_seed(-5))[0])
    assert prior.sample_with_seeds([]).shape == (0, 192)


def test_fit_rejects_unusable_latents() -> None:
    with pytest.raises(ConfigurationError):
        fit_prior(torch.randn(1, 10))
    bad = torch.randn(4, 10)
    bad[1, 2] = float("nan")
    with pytest.raises(ConfigurationError, match="NaN"):
        fit_prior(bad)
    with pytest.raises(ConfigurationError):
        fit_prior(torch.ones(4, 10))
    with pytest.raises(ConfigurationError):
        fit_prior(torch.randn(4, 10), "gmm")  # type: ignore[arg-type]


def test_diagnostics_of_an_isotropic_gaussian_cloud() -> None:
    n = 12
    ood = torch.randn(n, D_IMAGE, generator=_gen(9))
    prior = fit_prior(ood, "scalar")
    diag = prior_diagnostics(ood, prior)
    json.dumps(diag, allow_nan=False)
    expected_keys = {"norm_concentration", "norms", "pairwise_angles_centred_deg", "pairwise_angles_raw_deg",
                     "ks_standardized"}
    assert expected_keys <= diag.keys()
    assert "separability" not in diag
    concentration = diag["norm_concentration"]
    assert concentration["ratio"] == pytest.approx(concentration["expected_ratio"], rel=0.01)
    assert concentration["expected_ratio"] == pytest.approx(math.sqrt((n - 1) / n))
    assert diag["norms"]["ratio"] == pytest.approx(1.0, rel=0.01)
    assert diag["pairwise_angles_raw_deg"]["mean"] == pytest.approx(90.0, abs=1.0)
    # Centred on their own mean, n latents meet at arccos(-1/(n-1)) = 95.2 degrees on average.
    centred_mean = diag["pairwise_angles_centred_deg"]["mean"]
    assert centred_mean == pytest.approx(diag["expected_centred_angle_deg"], abs=1.0)
    assert diag["ks_standardized"]["statistic"] < 0.01
    assert diag["ks_standardized"]["pvalue"] > 1e-3


def test_ks_detects_non_gaussian_latents() -> None:
    uniform = (torch.rand(12, 4096, generator=_gen(10)) - 0.5) * math.sqrt(12.0)  # unit variance, flat
    diag = prior_diagnostics(uniform, fit_prior(uniform, "scalar"))
    assert diag["ks_standardized"]["statistic"] > 0.04
    assert diag["ks_standardized"]["pvalue"] < 1e-6


def test_separability_of_separated_and_identical_clouds() -> None:
    n, m = 12, 16
    shift = torch.randn(D_IMAGE, generator=_gen(11))
    shift *= 3 * D_IMAGE**0.25 / shift.norm()
    ood = shift + torch.randn(n, D_IMAGE, generator=_gen(12))
    reference = torch.randn(m, D_IMAGE, generator=_gen(13))
    separated = prior_diagnostics(ood, fit_prior(ood), reference)["separability"]
    assert separated["loo_accuracy"] > 0.95 and separated["loo_balanced_accuracy"] > 0.95
    # Sample means carry noise of squared norm D (1/n + 1/m) on top of the planted 3 D^(1/4) shift.
    expected = math.sqrt(9 * D_IMAGE**0.5 + D_IMAGE * (1 / n + 1 / m)) / D_IMAGE**0.25
    assert separated["mean_distance_over_d_quarter"] == pytest.approx(expected, rel=0.03)
    assert separated["mean_distance_over_ood_radius"] == pytest.approx(
        separated["mean_distance"] / separated["ood_radius"]
    )

    same = torch.randn(n, D_IMAGE, generator=_gen(14))
    mixed = prior_diagnostics(same, fit_prior(same), reference)["separability"]
    assert mixed["loo_balanced_accuracy"] < 0.75
    # Identical clouds: the means differ by sampling noise alone.
    assert mixed["mean_distance"] == pytest.approx(math.sqrt(D_IMAGE * (1 / n + 1 / m)), rel=0.05)
    json.dumps(mixed, allow_nan=False)


@pytest.mark.parametrize("kind", ["scalar", "ppca"])
def test_draws_of_one_reseeded_generator_give_the_samples_of_fresh_ones_bit_for_bit(kind: str) -> None:
    """The sampler's draw loop: one generator reseeded per candidate, each candidate's draw stacked and finished
    together (from_draws) gives row by row what sample(1, generator_from_seed(seed)) gives."""
    latents = torch.randn(12, 1, 64, 64, generator=_gen(4)) + 1.0
    prior = fit_prior(latents, kind)
    seeds = [3, -7, 2**62, 12345]
    generator = torch.Generator()
    batched = prior.from_draws(torch.cat([prior.draw(reseed(generator, seed)) for seed in seeds]))
    one_by_one = torch.cat([prior.sample(1, generator_from_seed(seed)) for seed in seeds])
    assert batched.dtype == one_by_one.dtype and torch.equal(batched, one_by_one)
    assert torch.equal(prior.sample_with_seeds(seeds), one_by_one)
