"""The geometric screening of candidate latents (DESIGN section 2, "Geometric acceptance").

A candidate gets three criteria (``CRITERION_NAMES``):

1. mean Euclidean distance to the in-domain reference latents;
2. mean angle at the origin between the candidate and the OOD latents (degrees);
3. mean angle at the candidate subtended by pairs i < j of OOD latents, i.e. between z_i - c and z_j - c.

The acceptance band is derived from the OOD latents themselves: each OOD latent is scored as a candidate
against the other OOD latents and all references (leave-one-out), and the band is the [q_lo, q_hi]
quantile range of those values, widened by ``margin`` leave-one-out standard deviations per side.

Why the default band is one-sided (``sides="reference_side"``). With n << D every candidate built from the
inputs is measurably *inside* the OOD cloud: on synthetic clouds like the dev latents (D = 3x64x64, n = 12,
|mean| = 3 D^(1/4)) prior draws sit about (+6, -25, +6) leave-one-out standard deviations from the LOO
median on the three criteria, slerp candidates about (+3, -45, +19), while reference (in-domain) latents
sit on the other side, about (-7, +26, -5). A two-sided band tight enough to reject the references
therefore rejects every candidate too. So by default each criterion keeps only the bound that faces the
references' own median (measured, not assumed): a candidate may be more typical of the OOD cloud than the
inputs are of each other, but not closer to the in-domain mass ("mode interference"). Near-copies of the
inputs are policed separately by ``ood_core.method.novelty``. ``sides="both"`` gives the plain two-sided band.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ood_core.errors import ConfigurationError
from ood_core.method.prior import flatten_latents

CRITERION_NAMES = ("mean_distance_to_reference", "mean_angle_to_ood_deg", "mean_pair_angle_at_candidate_deg")

DEFAULT_REFERENCE_GAP = 0.5
"""Where the reference-side bound sits between the OOD band edge (0) and the references' median (1).
0.5 is the nearest-centroid decision boundary: accept what is closer to the OOD statistics than to the
in-domain ones. It matters because with few inputs (n ~ 5) the LOO spread is tiny and prior-derived
candidates differ systematically from the inputs (their radius is not shrunk by the fitted mean), so a
bound at the OOD edge rejects every candidate; measured on 5 GLIMPSE cutouts: 0 of 20,000 accepted."""

DEFAULT_MARGIN = 1.0
"""Band widening per side, in leave-one-out standard deviations: with n of 5..100 the sample quantiles
themselves are uncertain by about that much."""

BandSides = Literal["reference_side", "both"]


# ----------------------------------------------------------------------------------------------- criteria


class CriteriaGeometry:
    """OOD and reference latents with their Gram products precomputed, to score many candidates.

    Distances and angles at the candidate are translation invariant, so products are taken after shifting
    the origin to the OOD mean (smaller numbers, less float32 cancellation); the angle at the origin is
    recovered exactly from the shifted products. One float32 matrix product per chunk of candidates; the
    small (chunk, n (n - 1) / 2) pair terms are formed in float64. No (B, n, D) tensor is ever built.
    Agreement with a float64 per-candidate loop is ~1e-5 relative; a distance far below ~1e-3 of the latent
    norms (a candidate on top of a reference) is not resolved by float32 products.
    """

    def __init__(self, ood: Tensor, reference: Tensor) -> None:
        z = flatten_latents(ood).float()
        r = flatten_latents(reference).to(z.device).float()
        if z.shape[0] < 2:
            raise ConfigurationError(f"the criteria need at least 2 OOD latents, got {z.shape[0]}")
        if r.shape[0] < 1:
            raise ConfigurationError("the criteria need at least 1 reference latent")
        if r.shape[1] != z.shape[1]:
            raise ConfigurationError(f"reference latents have D={r.shape[1]}, OOD latents D={z.shape[1]}")
        self.n_ood, self.dim = int(z.shape[0]), int(z.shape[1])
        self.n_reference = int(r.shape[0])
        self.device = z.device
        z64 = z.double()
        shift64 = z64.mean(dim=0)
        self._shift = shift64.float()
        shifted_ood = (z64 - shift64).float()
        shifted_reference = r - self._shift
        self._basis = torch.cat([shifted_ood, shifted_reference, self._shift[None]]).contiguous()
        shifted_ood64 = z64 - shift64
        self._ood_gram = shifted_ood64 @ shifted_ood64.T
        self._ood_sq = torch.diagonal(self._ood_gram).clone()
        self._ood_dot_shift = shifted_ood64 @ shift64
        self._shift_sq = float(shift64 @ shift64)
        self._ood_norm = torch.linalg.vector_norm(z64, dim=1)
        self._reference_sq = (shifted_reference.double() ** 2).sum(dim=1)
        self._pair_i, self._pair_j = torch.triu_indices(self.n_ood, self.n_ood, offset=1, device=self.device)
        self._pair_gram = self._ood_gram[self._pair_i, self._pair_j]

    def criteria(
        self,
        candidates: Tensor,
        *,
        ood_exclude: Tensor | None = None,
        reference_exclude: Tensor | None = None,
        chunk_size: int = 256,
    ) -> Tensor:
        """(B, 3) float64 criteria of (B, ...) candidates, in the order of ``CRITERION_NAMES``.

        ``ood_exclude`` / ``reference_exclude``: (B,) index of one OOD / reference latent left out of that
        candidate's means (-1: none), for leave-one-out scoring. An OOD latent that coincides with the
        candidate is left out of criterion 3 (its angle is undefined); a candidate with no pair left gets NaN.
        """
        c_all = flatten_latents(candidates)
        if c_all.shape[1] != self.dim:
            raise ConfigurationError(f"candidates have D={c_all.shape[1]}, the latents D={self.dim}")
        if chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be >= 1, got {chunk_size}")
        count = c_all.shape[0]
        none = torch.full((count,), -1, dtype=torch.long, device=self.device)
        ood_ex = none if ood_exclude is None else ood_exclude.to(self.device, torch.long).reshape(count)
        ref_ex = none if reference_exclude is None else reference_exclude.to(self.device, torch.long)
        ref_ex = ref_ex.reshape(count)
        out = torch.empty((count, 3), dtype=torch.float64, device=self.device)
        for start in range(0, count, chunk_size):
            stop = min(start + chunk_size, count)
            out[start:stop] = self._chunk(c_all[start:stop], ood_ex[start:stop], ref_ex[start:stop])
        return out

    def _chunk(self, chunk: Tensor, ood_ex: Tensor, ref_ex: Tensor) -> Tensor:
        n, m = self.n_ood, self.n_reference
        shifted = chunk.to(self.device, torch.float32) - self._shift
        products = (shifted @ self._basis.T).double()  # (b, n + m + 1): the one big product
        c_dot_z, c_dot_r, c_dot_shift = products[:, :n], products[:, n : n + m], products[:, n + m]
        c_sq = torch.linalg.vector_norm(shifted, dim=1).double() ** 2

        # (1) mean distance to the references: |c - r|^2 = |c|^2 - 2 c.r + |r|^2 in shifted coordinates.
        reference_valid = torch.arange(m, device=self.device)[None, :] != ref_ex[:, None]
        distance = (c_sq[:, None] - 2.0 * c_dot_r + self._reference_sq[None, :]).clamp_min(0.0).sqrt()
        mean_distance = (distance * reference_valid).sum(dim=1) / reference_valid.sum(dim=1)

        # (2) mean angle at the origin, with the raw dot products rebuilt from the shifted ones.
        ood_valid = torch.arange(n, device=self.device)[None, :] != ood_ex[:, None]
        raw_dot = c_dot_z + c_dot_shift[:, None] + self._ood_dot_shift[None, :] + self._shift_sq
        raw_norm = (c_sq + 2.0 * c_dot_shift + self._shift_sq).clamp_min(0.0).sqrt()
        cos_origin = raw_dot / (raw_norm[:, None] * self._ood_norm[None, :])
        angle_origin = torch.rad2deg(torch.arccos(cos_origin.clamp(-1.0, 1.0)))
        mean_angle = (angle_origin * ood_valid).sum(dim=1) / ood_valid.sum(dim=1)

        # (3) mean angle at c between z_i - c and z_j - c: (z_i-c).(z_j-c) = z_i.z_j - c.z_i - c.z_j + c.c.
        to_ood_sq = self._ood_sq[None, :] - 2.0 * c_dot_z + c_sq[:, None]
        coincident = to_ood_sq <= 1e-12 * (self._ood_sq.mean() + c_sq[:, None])
        usable = ood_valid & ~coincident
        i, j = self._pair_i, self._pair_j  # only the n (n - 1) / 2 pairs i < j: (b, P) tensors
        numerator = self._pair_gram[None, :] - c_dot_z[:, i] - c_dot_z[:, j] + c_sq[:, None]
        lengths = to_ood_sq.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
        cos_pair = numerator / (lengths[:, i] * lengths[:, j])
        angle_pair = torch.rad2deg(torch.arccos(cos_pair.clamp(-1.0, 1.0)))
        weights = usable[:, i] & usable[:, j]
        mean_pair = (angle_pair * weights).sum(dim=1) / weights.sum(dim=1)
        return torch.stack([mean_distance, mean_angle, mean_pair], dim=1)


def compute_criteria(
    candidates: Tensor,
    ood: Tensor,
    reference: Tensor,
    *,
    exclude_self: bool = False,
    chunk_size: int = 256,
) -> Tensor:
    """(B, 3) float64 criteria (``CRITERION_NAMES``) of candidates against OOD and reference latents.

    ``exclude_self``: the candidates are the OOD latents themselves (B == n); candidate k is scored against
    the other n - 1 OOD latents (leave-one-out) and all references.
    """
    geometry = CriteriaGeometry(ood, reference)
    ood_exclude = None
    if exclude_self:
        if candidates.shape[0] != geometry.n_ood:
            raise ConfigurationError("exclude_self=True needs the OOD latents themselves as candidates")
        if geometry.n_ood < 3:
            raise ConfigurationError("leave-one-out criteria need at least 3 OOD latents (one pair left)")
        ood_exclude = torch.arange(geometry.n_ood)
    return geometry.criteria(candidates, ood_exclude=ood_exclude, chunk_size=chunk_size)


# ----------------------------------------------------------------------------------------------- band


def _finite_or_none(value: float) -> float | None:
    return value if abs(value) != float("inf") else None


@dataclass(frozen=True, eq=False)
class AcceptanceBand:
    """Per-criterion [low, high] acceptance bounds (infinite where a side is open) and their origin."""

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    loo_values: Tensor
    """(n, 3) leave-one-out criteria of the OOD latents the band was derived from."""
    reference_values: Tensor
    """(m, 3) criteria of the reference latents (each left out of its own criterion 1)."""
    quantiles: tuple[float, float]
    margin: float
    sides: str
    reference_side: tuple[str, ...]
    """Per criterion, "low" or "high": on which side of the OOD values the references' median lies."""
    reference_gap: float = 0.0

    def contains(self, criteria: Tensor) -> Tensor:
        """(B,) bool: every criterion within its bounds (NaN never is)."""
        low = torch.tensor(self.low, dtype=criteria.dtype, device=criteria.device)
        high = torch.tensor(self.high, dtype=criteria.dtype, device=criteria.device)
        return ((criteria >= low) & (criteria <= high)).all(dim=1)

    def to_dict(self) -> dict[str, Any]:
        loo_inside = self.contains(self.loo_values)
        reference_inside = self.contains(self.reference_values)
        return {
            "names": list(self.names),
            "low": [_finite_or_none(v) for v in self.low],
            "high": [_finite_or_none(v) for v in self.high],
            "quantiles": list(self.quantiles),
            "margin": self.margin,
            "margin_unit": "leave-one-out standard deviation of each criterion",
            "sides": self.sides,
            "reference_side": list(self.reference_side),
            "reference_gap": self.reference_gap,
            "loo_median": [float(v) for v in self.loo_values.median(dim=0).values],
            "loo_std": [float(v) for v in self.loo_values.std(dim=0)],
            "loo_values": [[float(v) for v in row] for row in self.loo_values.tolist()],
            "reference_median": [float(v) for v in self.reference_values.median(dim=0).values],
            "loo_inside_fraction": float(loo_inside.double().mean()),
            "reference_rejected_fraction": float((~reference_inside).double().mean()),
        }


def derive_acceptance_band(
    ood: Tensor,
    reference: Tensor,
    quantiles: tuple[float, float] = (0.1, 0.9),
    margin: float = DEFAULT_MARGIN,
    sides: BandSides = "reference_side",
    reference_gap: float = DEFAULT_REFERENCE_GAP,
) -> AcceptanceBand:
    """Band from the OOD latents' leave-one-out criteria: [q_lo - margin s, q_hi + margin s] per criterion.

    s is the leave-one-out standard deviation of the criterion. With ``sides="reference_side"`` only the
    bound facing the references' median is kept (see the module docstring for why); "both" keeps both.
    The bound facing the references is then moved ``reference_gap`` of the way from the band edge to the
    references' median (when that median lies beyond the edge), so references stay rejected.
    """
    if not 0.0 <= reference_gap < 1.0:
        raise ConfigurationError(f"reference_gap must lie in [0, 1), got {reference_gap}")
    q_lo, q_hi = quantiles
    if not 0.0 <= q_lo < q_hi <= 1.0:
        raise ConfigurationError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    if margin < 0.0:
        raise ConfigurationError(f"margin must be >= 0 (in leave-one-out standard deviations), got {margin}")
    if sides not in ("reference_side", "both"):
        raise ConfigurationError(f"sides must be 'reference_side' or 'both', got {sides!r}")
    geometry = CriteriaGeometry(ood, reference)
    n, m = geometry.n_ood, geometry.n_reference
    if n < 3:
        raise ConfigurationError(f"a band needs at least 3 OOD latents (leave-one-out pairs), got {n}")
    if m < 2:
        raise ConfigurationError(f"deriving a band needs at least 2 reference latents, got {m}")
    loo = geometry.criteria(ood, ood_exclude=torch.arange(n)).cpu()
    reference_values = geometry.criteria(reference, reference_exclude=torch.arange(m)).cpu()
    bounds = torch.quantile(loo, torch.tensor([q_lo, q_hi], dtype=torch.float64), dim=0)
    spread = loo.std(dim=0)
    low = (bounds[0] - margin * spread).tolist()
    high = (bounds[1] + margin * spread).tolist()
    reference_below = reference_values.median(dim=0).values < loo.median(dim=0).values
    reference_side = tuple("low" if below else "high" for below in reference_below.tolist())
    reference_median = reference_values.median(dim=0).values.tolist()
    for k, side in enumerate(reference_side):
        if side == "low" and reference_median[k] < low[k]:
            low[k] += reference_gap * (reference_median[k] - low[k])
        elif side == "high" and reference_median[k] > high[k]:
            high[k] += reference_gap * (reference_median[k] - high[k])
    if sides == "reference_side":
        for k, side in enumerate(reference_side):
            if side == "low":
                high[k] = float("inf")
            else:
                low[k] = float("-inf")
    return AcceptanceBand(
        names=CRITERION_NAMES,
        low=tuple(float(v) for v in low),
        high=tuple(float(v) for v in high),
        loo_values=loo,
        reference_values=reference_values,
        quantiles=(float(q_lo), float(q_hi)),
        margin=float(margin),
        sides=sides,
        reference_side=reference_side,
        reference_gap=float(reference_gap),
    )

