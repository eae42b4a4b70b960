"""Geometric sampler on synthetic latent clouds shaped like the dev latents (DESIGN section 2).

OOD cloud N(mu, I) with |mu| = 3 D^(1/4), reference (in-domain) cloud N(0, I), D = 3x64x64, n = 12, m = 16.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from ood_core.errors import ConfigurationError
from ood_core.method.acceptance import CRITERION_NAMES, compute_criteria, derive_acceptance_band
from ood_core.method.prior import fit_prior
from ood_core.method.sampler import GeometricSampler, SamplerConfig, candidate_seed, slerp

D = 3 * 64 * 64
N_OOD, N_REF = 12, 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def clouds() -> dict[str, torch.Tensor]:
    mu = torch.randn(D, generator=_gen(0))
    mu *= 3 * D**0.25 / mu.norm()
    return {
        "ood": mu + torch.randn(N_OOD, D, generator=_gen(1)),
        "reference": torch.randn(N_REF, D, generator=_gen(2)),
        "fresh_reference": torch.randn(20, D, generator=_gen(3)),
    }


def naive_criteria(candidate: torch.Tensor, ood: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """The three criteria for one candidate, by the definitions, in float64 with plain loops."""
    c, z, r = candidate.double(), ood.double(), reference.double()
    distance = sum(float(torch.linalg.norm(c - r_j)) for r_j in r) / len(r)
    angles = [math.degrees(math.acos(max(-1.0, min(1.0, float(c @ z_j / (c.norm() * z_j.norm()))))))
              for z_j in z]
    pair_angles = []
    for i, j in itertools.combinations(range(len(z)), 2):
        u, v = z[i] - c, z[j] - c
        pair_angles.append(math.degrees(math.acos(max(-1.0, min(1.0, float(u @ v / (u.norm() * v.norm())))))))
    return [distance, sum(angles) / len(angles), sum(pair_angles) / len(pair_angles)]


def test_criteria_match_the_naive_definition(clouds: dict[str, torch.Tensor]) -> None:
    ood, reference = clouds["ood"], clouds["reference"]
    prior = fit_prior(ood)
    draws = prior.sample(3, _gen(4))
    slerped = slerp(ood[:3], draws, torch.tensor([0.3, 0.5, 0.7]))
    candidates = torch.cat([draws, slerped, clouds["fresh_reference"][:2]])
    fast = compute_criteria(candidates.reshape(-1, 3, 64, 64), ood, reference, chunk_size=3)
    naive = torch.tensor([naive_criteria(c, ood, reference) for c in candidates], dtype=torch.float64)
    assert fast.shape == (candidates.shape[0], 3) and fast.dtype == torch.float64
    assert torch.allclose(fast, naive, rtol=1e-5, atol=1e-4)
    # Chunking changes only float32 rounding in the products.
    assert torch.allclose(fast, compute_criteria(candidates, ood, reference), rtol=1e-6, atol=0)

    loo = compute_criteria(ood, ood, reference, exclude_self=True)
    for k in (0, 5, N_OOD - 1):
        others = torch.cat([ood[:k], ood[k + 1 :]])
        expected = torch.tensor(naive_criteria(ood[k], others, reference), dtype=torch.float64)
        assert torch.allclose(loo[k], expected, rtol=1e-5, atol=1e-4)


def test_criteria_of_typical_cloud_members(clouds: dict[str, torch.Tensor]) -> None:
    """High-dimensional geometry: a member sees pairs of its cloud at 60 degrees (equilateral triangles)."""
    loo = compute_criteria(clouds["ood"], clouds["ood"], clouds["reference"], exclude_self=True)
    assert float(loo[:, 2].mean()) == pytest.approx(60.0, abs=0.5)
    outsider = compute_criteria(clouds["fresh_reference"], clouds["ood"], clouds["reference"])
    assert float(outsider[:, 1].mean()) == pytest.approx(90.0, abs=0.5)  # no shared direction with mu


def test_slerp_endpoints_norms_and_angles() -> None:
    a = torch.randn(5, 300, generator=_gen(5), dtype=torch.float64)
    b = 2.0 * torch.randn(5, 300, generator=_gen(6), dtype=torch.float64)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-12)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-12)
    lam = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    out = slerp(a, b, lam)
    assert torch.allclose(out.norm(dim=1), (1 - lam) * a.norm(dim=1) + lam * b.norm(dim=1), rtol=1e-12)

    def angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.arccos((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)))

    theta = angle(a, b)
    assert torch.allclose(angle(a, out), lam * theta, atol=1e-9)
    assert torch.allclose(angle(out, b), (1 - lam) * theta, atol=1e-9)
    assert torch.equal(slerp(a[1], b[1], lam[1].item()), slerp(a[1:2], b[1:2], lam[1:2])[0])  # (D,) input


def test_slerp_parallel_and_antiparallel() -> None:
    a = torch.randn(1, 50, generator=_gen(7), dtype=torch.float64)
    out = slerp(a, 3.0 * a, 0.25)
    assert torch.allclose(out, 1.5 * a, rtol=1e-12)
    with pytest.raises(ConfigurationError, match="anti-parallel"):
        slerp(a, -a, 0.5)
    with pytest.raises(ConfigurationError):
        slerp(a, torch.zeros_like(a), 0.5)


def test_band_contains_the_leave_one_out_values(clouds: dict[str, torch.Tensor]) -> None:
    ood, reference = clouds["ood"], clouds["reference"]
    plain = derive_acceptance_band(ood, reference, quantiles=(0.1, 0.9), margin=0.0, sides="both", reference_gap=0.0)
    loo = compute_criteria(ood, ood, reference, exclude_self=True).cpu()
    q = torch.quantile(loo, torch.tensor([0.1, 0.9], dtype=torch.float64), dim=0)
    assert torch.allclose(torch.tensor(plain.low, dtype=torch.float64), q[0])
    assert torch.allclose(torch.tensor(plain.high, dtype=torch.float64), q[1])
    low, high = torch.tensor(plain.low, dtype=torch.float64), torch.tensor(plain.high, dtype=torch.float64)
    inside_each = ((loo >= low) & (loo <= high)).double().mean(dim=0)
    assert bool((inside_each >= 8 / 12).all())  # linear 10%..90% quantiles of 12 values keep 8 of them

    widened = derive_acceptance_band(ood, reference, sides="both", reference_gap=0.0)  # margin: one LOO std
    assert all(lw < lp for lw, lp in zip(widened.low, plain.low, strict=True))
    assert float(widened.contains(loo).double().mean()) > float(plain.contains(loo).double().mean())
    assert float(widened.contains(loo).double().mean()) >= 0.75

    # The references sit below the OOD values on criteria 1 and 3 and above them on 2; the default band
    # keeps just those bounds, and every reference latent -- even unseen ones -- falls outside it.
    band = derive_acceptance_band(ood, reference)
    assert band.reference_side == ("low", "high", "low")
    assert math.isinf(band.high[0]) and math.isinf(band.low[1]) and math.isinf(band.high[2])
    summary = band.to_dict()
    json.dumps(summary, allow_nan=False)
    assert summary["names"] == list(CRITERION_NAMES) and summary["high"][0] is None
    assert summary["reference_rejected_fraction"] == 1.0 and summary["loo_inside_fraction"] >= 0.9
    unseen = compute_criteria(clouds["fresh_reference"], ood, reference)
    assert not band.contains(unseen).any()
    # The reference-facing bound sits half-way between the OOD edge and the references' median.
    edge_only = derive_acceptance_band(ood, reference, reference_gap=0.0)
    ref_median = band.reference_values.median(dim=0).values.tolist()
    assert band.low[0] == pytest.approx(edge_only.low[0] + 0.5 * (ref_median[0] - edge_only.low[0]))
    assert band.high[1] == pytest.approx(edge_only.high[1] + 0.5 * (ref_median[1] - edge_only.high[1]))


def test_slerp_candidates_pass_and_in_domain_draws_do_not(clouds: dict[str, torch.Tensor]) -> None:
    ood, reference = clouds["ood"], clouds["reference"]
    config = SamplerConfig(strategy="slerp_ood_prior", candidate_batch=64, candidate_budget=64)
    sampler = GeometricSampler(fit_prior(ood), ood, reference, config, seed=1)
    accepted = sum(len(b) for b in sampler.batches(64, batch_size=64))
    report = sampler.report()
    assert report.tried == 64 and 0 < report.acceptance_rate <= 1.0 and accepted == report.accepted

    # Mode interference by construction: candidates drawn from a prior fitted to the in-domain latents.
    in_domain = GeometricSampler(fit_prior(clouds["fresh_reference"]), ood, reference,
                                 SamplerConfig(strategy="prior", candidate_batch=64, candidate_budget=64))
    assert sum(len(b) for b in in_domain.batches(10)) == 0
    assert in_domain.report().acceptance_rate == 0.0 and in_domain.report().budget_exhausted


def test_sampler_stops_at_the_budget(clouds: dict[str, torch.Tensor]) -> None:
    ood, reference = clouds["ood"], clouds["reference"]
    strict = SamplerConfig(strategy="prior", candidate_batch=16, candidate_budget=40, margin=0.0,
                           band_sides="both")
    sampler = GeometricSampler(fit_prior(ood), ood, reference, strict, seed=2)
    assert list(sampler.batches(100, batch_size=8)) == []  # prior draws are off the two-sided band
    report = sampler.report()
    assert (report.tried, report.accepted, report.budget_exhausted) == (40, 0, True)
    json.dumps(report.to_dict(), allow_nan=False)

    lenient = SamplerConfig(strategy="slerp_ood_ood", candidate_batch=16, candidate_budget=40)
    sampler = GeometricSampler(fit_prior(ood), ood, reference, lenient, seed=2)
    sizes = [len(b) for b in sampler.batches(1000, batch_size=16)]
    report = sampler.report()
    assert report.budget_exhausted and report.tried == 40
    assert sum(sizes) == report.delivered == report.accepted and all(s <= 16 for s in sizes)


def test_batches_have_the_requested_sizes(clouds: dict[str, torch.Tensor]) -> None:
    ood, reference = clouds["ood"], clouds["reference"]
    sampler = GeometricSampler(fit_prior(ood), ood, reference, SamplerConfig(candidate_batch=32), seed=3)
    batches = list(sampler.batches(50, batch_size=16))
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    first = batches[0]
    assert first.latents.shape == (16, D) and first.latents.dtype == torch.float32
    assert first.criteria.shape == (16, 3) and first.seeds.dtype == torch.int64
    assert first.parents.dtype == torch.int32 and bool(((first.parents >= 0) & (first.parents < N_OOD)).all())
    assert bool(sampler.band.contains(first.criteria).all())
    assert not sampler.report().budget_exhausted and sampler.report().delivered == 50


@pytest.mark.parametrize("strategy", ["prior", "slerp_ood_prior", "slerp_ood_ood"])
def test_same_seed_same_samples_and_regeneration(clouds: dict[str, torch.Tensor], strategy: str) -> None:
    ood, reference = clouds["ood"], clouds["reference"]
    prior = fit_prior(ood, "ppca")
    config = SamplerConfig(strategy=strategy, candidate_batch=8)  # type: ignore[arg-type]
    one = list(GeometricSampler(prior, ood, reference, config, seed=7).batches(12, batch_size=5))
    two = list(GeometricSampler(prior, ood, reference, config, seed=7).batches(12, batch_size=5))
    other = list(GeometricSampler(prior, ood, reference, config, seed=8).batches(12, batch_size=5))
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.seeds, b.seeds)
        assert torch.equal(a.criteria, b.criteria) and torch.equal(a.parents, b.parents)
    assert not torch.equal(one[0].latents, other[0].latents)

    regenerator = GeometricSampler(prior, ood, reference, config, seed=12345)  # the run seed does not matter
    batch = one[-1]
    for k in range(len(batch)):
        assert torch.equal(regenerator.regenerate_candidate(int(batch.seeds[k])), batch.latents[k])
    if strategy == "prior":
        assert bool((batch.parents == -1).all())


def test_candidate_seeds_are_distinct_int64() -> None:
    seeds = [candidate_seed(42, k) for k in range(20_000)]
    assert len(set(seeds)) == len(seeds)
    assert all(-(2**63) <= s < 2**63 for s in seeds)
    assert seeds[:5] == [candidate_seed(42, k) for k in range(5)]
    assert candidate_seed(43, 0) != seeds[0]
    assert any(s < 0 for s in seeds)  # the full int64 range is used


def test_config_validation_and_json() -> None:
    json.dumps(SamplerConfig().to_dict(), allow_nan=False)
    assert SamplerConfig().to_dict()["strategy"] == "slerp_ood_prior"
    with pytest.raises(ConfigurationError):
        SamplerConfig(strategy="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        SamplerConfig(slerp_range=(0.8, 0.2))
    with pytest.raises(ConfigurationError):
        derive_acceptance_band(torch.randn(2, 10), torch.randn(4, 10))
    with pytest.raises(ConfigurationError):
        derive_acceptance_band(torch.randn(5, 10), torch.randn(4, 10), quantiles=(0.9, 0.1))
