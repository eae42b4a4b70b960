"""Candidate latents and their geometric screening (DESIGN section 2, "Candidates", "Geometric acceptance").

Candidates are prior draws, or spherical interpolations (``slerp``) between an inverted OOD latent and a
prior draw or a second OOD latent. Each candidate is screened by three geometric criteria against the OOD
and reference latents and accepted inside a band derived from the OOD latents (:mod:`.acceptance`).

Randomness: candidate k of a run uses ``candidate_seed(seed, k)`` for all its draws (parent, lambda, prior
draw), so a sample is regenerated from its stored seed alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ood_core.errors import ConfigurationError
from ood_core.method.acceptance import (
    DEFAULT_MARGIN,
    DEFAULT_REFERENCE_GAP,
    BandSides,
    CriteriaGeometry,
    derive_acceptance_band,
)
from ood_core.method.prior import LatentPrior, flatten_latents, reseed

Strategy = Literal["prior", "slerp_ood_prior", "slerp_ood_ood"]

_UINT64 = 0xFFFF_FFFF_FFFF_FFFF
_GOLDEN_GAMMA = 0x9E37_79B9_7F4A_7C15  # splitmix64 increment (odd, so k * gamma is a bijection mod 2^64)


# ----------------------------------------------------------------------------------------------- slerp


def slerp(a: Tensor, b: Tensor, lam: float | Tensor) -> Tensor:
    """Spherical interpolation of direction, linear interpolation of norm; lam = weight of ``b``.

    a, b: (B, D) or (D,); lam: a float or (B,). Returns (1 - lam) |a| + lam |b| times the unit vector at
    fraction lam along the great circle from a/|a| to b/|b|. Parallel rows fall back to the normalized
    linear blend of the unit vectors; anti-parallel rows have no unique great circle and raise.
    """
    single = a.ndim == 1
    a2, b2 = (a[None], b[None]) if single else (a, b)
    if a2.shape != b2.shape or a2.ndim != 2:
        raise ConfigurationError(f"slerp needs a, b of equal shape (B, D) or (D,), got {a.shape}, {b.shape}")
    lam_t = torch.as_tensor(lam, dtype=torch.float64, device=a2.device).reshape(-1).expand(a2.shape[0])
    norm_a = torch.linalg.vector_norm(a2, dim=1).double()
    norm_b = torch.linalg.vector_norm(b2, dim=1).double()
    if bool((norm_a == 0).any()) or bool((norm_b == 0).any()):
        raise ConfigurationError("slerp of a zero vector has no direction")
    unit_a = a2 / norm_a[:, None].to(a2.dtype)
    unit_b = b2 / norm_b[:, None].to(b2.dtype)
    # 2 atan2(|ua - ub|, |ua + ub|) is accurate at every angle, unlike acos of the dot product near 0 or pi.
    chord_minus = torch.linalg.vector_norm(unit_a - unit_b, dim=1).double()
    chord_plus = torch.linalg.vector_norm(unit_a + unit_b, dim=1).double()
    theta = 2.0 * torch.atan2(chord_minus, chord_plus)
    sin_theta = torch.sin(theta)
    nearly_flat = sin_theta < 1e-6
    if bool((nearly_flat & (theta > 1.0)).any()):
        raise ConfigurationError("slerp between anti-parallel vectors is undefined (no unique great circle)")
    safe_sin = torch.where(nearly_flat, torch.ones_like(sin_theta), sin_theta)
    weight_a = torch.where(nearly_flat, 1.0 - lam_t, torch.sin((1.0 - lam_t) * theta) / safe_sin)
    weight_b = torch.where(nearly_flat, lam_t, torch.sin(lam_t * theta) / safe_sin)
    direction = weight_a[:, None].to(a2.dtype) * unit_a + weight_b[:, None].to(a2.dtype) * unit_b
    if bool(nearly_flat.any()):
        unit = direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True)
        direction = torch.where(nearly_flat[:, None], unit, direction)
    norm = (1.0 - lam_t) * norm_a + lam_t * norm_b
    out = direction * norm[:, None].to(a2.dtype)
    result: Tensor = out[0] if single else out
    return result


# ----------------------------------------------------------------------------------------------- sampler


def _mix64(x: int) -> int:
    """The splitmix64 finalizer: a bijection on 64-bit integers."""
    x = ((x ^ (x >> 30)) * 0xBF58_476D_1CE4_E5B9) & _UINT64
    x = ((x ^ (x >> 27)) * 0x94D0_49BB_1331_11EB) & _UINT64
    return x ^ (x >> 31)


def candidate_seed(seed: int, index: int) -> int:
    """int64 seed of candidate ``index`` in a run with ``seed`` (splitmix64 stream).

    For a fixed run seed, index -> seed is injective (an odd-step walk mod 2^64 through a bijection), so no
    two candidates of one run share a seed.
    """
    if index < 0:
        raise ConfigurationError(f"candidate index must be >= 0, got {index}")
    start = _mix64((int(seed) + _GOLDEN_GAMMA) & _UINT64)
    value = _mix64((start + (index + 1) * _GOLDEN_GAMMA) & _UINT64)
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class SamplerConfig:
    """How candidates are made and screened. lam (the weight of the prior draw or second latent) is drawn
    uniformly in ``slerp_range`` per candidate."""

    strategy: Strategy = "slerp_ood_prior"
    slerp_range: tuple[float, float] = (0.3, 0.7)
    candidate_batch: int = 256
    candidate_budget: int = 20_000
    quantiles: tuple[float, float] = (0.1, 0.9)
    margin: float = DEFAULT_MARGIN
    band_sides: BandSides = "reference_side"
    reference_gap: float = DEFAULT_REFERENCE_GAP

    def __post_init__(self) -> None:
        if self.strategy not in ("prior", "slerp_ood_prior", "slerp_ood_ood"):
            raise ConfigurationError(
                f"strategy must be 'prior', 'slerp_ood_prior' or 'slerp_ood_ood', got {self.strategy!r}"
            )
        low, high = self.slerp_range
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigurationError(f"slerp_range needs 0 <= low <= high <= 1, got {self.slerp_range}")
        if self.candidate_batch < 1 or self.candidate_budget < 1:
            raise ConfigurationError("candidate_batch and candidate_budget must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["slerp_range"] = list(self.slerp_range)
        values["quantiles"] = list(self.quantiles)
        return values


@dataclass(frozen=True, eq=False)
class AcceptedBatch:
    """Accepted candidates: latents (b, D) float32, criteria (b, 3) float64, seeds (b,) int64,
    parents (b,) int32 (the OOD latent slerped from, -1 for pure prior draws)."""

    latents: Tensor
    criteria: Tensor
    seeds: Tensor
    parents: Tensor

    def __len__(self) -> int:
        return int(self.latents.shape[0])


@dataclass(frozen=True, eq=False)
class ScreenedCandidates:
    """Screened candidates: latents (B, D) float32 and criteria (B, 3) float64 on the sampler's device, accepted
    (B,) bool on that device, parents (B,) int32 on the CPU."""

    latents: Tensor
    criteria: Tensor
    accepted: Tensor
    parents: Tensor


def slot_candidate_seed(seed: int, slot: int, attempt: int) -> int:
    """Seed of the ``attempt``-th candidate of sample slot ``slot`` in a run with ``seed``.

    Each slot has its own stream (index ``slot * SLOT_STRIDE + attempt`` of :func:`candidate_seed`), so a sample
    depends on its slot only, never on which process or batch handled the slots before it."""
    if not 0 <= attempt < SLOT_STRIDE:
        raise ConfigurationError(f"attempt must lie in 0..{SLOT_STRIDE - 1}, got {attempt}")
    return candidate_seed(seed, slot * SLOT_STRIDE + attempt)


SLOT_STRIDE = 1 << 24
"""Candidates a sample slot may try at most (streams of different slots never share a seed)."""


@dataclass(frozen=True)
class SamplerReport:
    """What a sampler run screened and accepted (JSON-safe via ``to_dict``)."""

    tried: int
    accepted: int
    delivered: int
    acceptance_rate: float
    budget_exhausted: bool
    seed: int
    band: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GeometricSampler:
    """Draws candidates, scores them, and yields the accepted ones in batches.

    Memory is bounded by one candidate batch plus one output batch, whatever ``n_samples`` is. Successive
    calls to ``batches`` continue the same candidate stream.
    """

    def __init__(
        self,
        prior: LatentPrior,
        ood_latents: Tensor,
        reference_latents: Tensor,
        config: SamplerConfig | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.prior = prior
        self.config = config or SamplerConfig()
        self.seed = int(seed)
        # ``device``: where the screening's matrix products run and accepted latents live (e.g. the GPU the
        # network runs on); candidates are still drawn on the CPU from their own seeds, then moved in one copy.
        self._ood = flatten_latents(ood_latents).float()
        if device is not None:
            self._ood = self._ood.to(device)
            reference_latents = reference_latents.to(device)
        if self._ood.shape[1] != prior.dim:
            raise ConfigurationError(f"OOD latents have D={self._ood.shape[1]}, the prior D={prior.dim}")
        if self.config.strategy == "slerp_ood_ood" and self._ood.shape[0] < 2:
            raise ConfigurationError("strategy 'slerp_ood_ood' needs at least 2 OOD latents")
        self._geometry = CriteriaGeometry(self._ood, reference_latents)
        self.band = derive_acceptance_band(
            self._ood, reference_latents, self.config.quantiles, self.config.margin, self.config.band_sides,
            self.config.reference_gap,
        )
        self._tried = 0
        self._accepted = 0
        self._delivered = 0
        self._budget_exhausted = False
        self._pending: list[AcceptedBatch] = []

    def _draw_candidates(self, seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Latents (B, D) and parents (B,) int32; each candidate's draws come from its own generator."""
        strategy = self.config.strategy
        n = self._ood.shape[0]
        low, high = self.config.slerp_range
        parents: list[int] = []
        lams: list[float] = []
        draws: list[Tensor] = []  # prior draws, on the CPU (the prior's own generator per candidate)
        seconds: list[int] = []  # the other OOD latent of slerp_ood_ood
        generator = torch.Generator()
        for seed in seeds:
            reseed(generator, seed)  # as generator_from_seed(seed); fixed draw order: parent, lam, then the other end
            if strategy == "prior":
                parents.append(-1)
                draws.append(self.prior.draw(generator)[0])
                continue
            parent = int(torch.randint(n, (1,), generator=generator).item())
            uniform = float(torch.rand((1,), generator=generator, dtype=torch.float64).item())
            lam = low + (high - low) * uniform
            if strategy == "slerp_ood_prior":
                draws.append(self.prior.draw(generator)[0])
            else:
                second = int(torch.randint(n - 1, (1,), generator=generator).item())
                seconds.append(second + (second >= parent))
            parents.append(parent)
            lams.append(lam)
        parent_index = torch.tensor(parents, dtype=torch.int32)
        device = self._ood.device
        if not seeds:
            return torch.empty((0, self._ood.shape[1]), device=device), parent_index
        if strategy == "slerp_ood_ood":
            others = self._ood[torch.tensor(seconds, dtype=torch.long, device=device)]
        else:
            others = self.prior.from_draws(torch.stack(draws)).to(device)  # one copy per candidate batch
        if strategy == "prior":
            return others, parent_index
        starts = self._ood[parent_index.to(device, torch.long)]
        return slerp(starts, others, torch.tensor(lams, dtype=torch.float64, device=device)), parent_index

    def screen(self, seeds: Sequence[int]) -> ScreenedCandidates:
        """Draw the candidates of ``seeds`` and score them against the band (no counters, no stream state): the
        building block of streams other than :meth:`batches`' own, e.g. one stream per sample slot."""
        latents, parents = self._draw_candidates(seeds)
        criteria = self._geometry.criteria(latents, chunk_size=self.config.candidate_batch)
        return ScreenedCandidates(latents, criteria, self.band.contains(criteria), parents)

    def regenerate_candidate(self, seed: int) -> Tensor:
        """The (D,) candidate latent that ``seed`` produces in this sampler's setting."""
        latents, _ = self._draw_candidates([seed])
        return latents[0]

    def _take(self, count: int) -> AcceptedBatch:
        """Pop the first ``count`` pending accepted candidates as one batch."""
        merged = AcceptedBatch(
            latents=torch.cat([b.latents for b in self._pending]),
            criteria=torch.cat([b.criteria for b in self._pending]),
            seeds=torch.cat([b.seeds for b in self._pending]),
            parents=torch.cat([b.parents for b in self._pending]),
        )
        head = AcceptedBatch(merged.latents[:count], merged.criteria[:count], merged.seeds[:count],
                             merged.parents[:count])
        rest = AcceptedBatch(merged.latents[count:], merged.criteria[count:], merged.seeds[count:],
                             merged.parents[count:])
        self._pending = [rest] if len(rest) else []
        self._delivered += count
        return head

    def batches(self, n_samples: int, batch_size: int = 64) -> Iterator[AcceptedBatch]:
        """Yield accepted candidates, ``batch_size`` at a time (the last may be smaller), until
        ``n_samples`` were yielded or the candidate budget is spent (then stop quietly; see ``report``)."""
        if n_samples < 0 or batch_size < 1:
            raise ConfigurationError(f"need n_samples >= 0, batch_size >= 1; got {n_samples}, {batch_size}")
        produced = 0
        while produced < n_samples:
            pending = sum(len(b) for b in self._pending)
            want = min(batch_size, n_samples - produced)
            if pending >= want:
                batch = self._take(want)
                produced += len(batch)
                yield batch
                continue
            if self._tried >= self.config.candidate_budget:
                self._budget_exhausted = True
                if pending:
                    batch = self._take(pending)
                    produced += len(batch)
                    yield batch
                return
            self._screen_next_candidates()

    def _screen_next_candidates(self) -> None:
        count = min(self.config.candidate_batch, self.config.candidate_budget - self._tried)
        seeds = [candidate_seed(self.seed, self._tried + i) for i in range(count)]
        latents, parents = self._draw_candidates(seeds)
        criteria = self._geometry.criteria(latents, chunk_size=self.config.candidate_batch)
        accepted = self.band.contains(criteria)
        self._tried += count
        n_accepted = int(accepted.sum())
        self._accepted += n_accepted
        if n_accepted:
            keep = accepted.nonzero().flatten()
            self._pending.append(AcceptedBatch(
                latents=latents[keep],
                criteria=criteria[keep],
                seeds=torch.tensor(seeds, dtype=torch.int64)[keep.cpu()],
                parents=parents[keep.cpu()],
            ))

    def report(self) -> SamplerReport:
        return SamplerReport(
            tried=self._tried,
            accepted=self._accepted,
            delivered=self._delivered,
            acceptance_rate=self._accepted / self._tried if self._tried else 0.0,
            budget_exhausted=self._budget_exhausted,
            seed=self.seed,
            band=self.band.to_dict(),
            config=self.config.to_dict(),
        )
