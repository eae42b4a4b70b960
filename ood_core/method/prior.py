"""Gaussian priors over inverted OOD latents and the diagnostics that say whether they fit.

DESIGN section 2, "OOD prior". The n inverted latents (n << D) are modelled as one Gaussian cloud:

- ``ScalarGaussianPrior``: per-dimension mean, one pooled variance (the reference method).
- ``PPCAPrior``: probabilistic PCA (Tipping & Bishop 1999): mean, the top k principal directions with
  their variances, and one isotropic variance for the remaining D - k directions.

Both use the unbiased sample covariance S (divisor n - 1), so their total variance trace(S) is equal and
their pooled per-coordinate standard deviation ``sigma = sqrt(trace(S) / D)`` is the same number.
Every random draw comes from an explicit ``torch.Generator`` so that one draw can be regenerated from its
seed alone (``sample_with_seeds``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import stats
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from torch import Tensor

from ood_core.errors import ConfigurationError

PriorKind = Literal["scalar", "ppca"]

DEFAULT_EXPLAINED_VARIANCE = 0.9
"""PPCA default: the fewest components whose variances explain this fraction of trace(S)."""

MAX_KS_VALUES = 200_000
"""Standardized coordinates fed to the KS test at most; more are subsampled with a fixed seed."""

_UINT64_MASK = 0xFFFF_FFFF_FFFF_FFFF
_QUANTILE_NAMES = ("min", "q10", "median", "q90", "max")


def flatten_latents(latents: Tensor) -> Tensor:
    """(N, C, H, W) or (N, D) -> (N, D), a view where possible."""
    if latents.ndim < 2:
        raise ConfigurationError(
            f"latents must have shape (N, D) or (N, C, H, W), got {tuple(latents.shape)}"
        )
    return latents.reshape(latents.shape[0], -1)


def generator_from_seed(seed: int) -> torch.Generator:
    """A CPU torch.Generator for one int64 seed (negative seeds are read as their two's complement)."""
    return reseed(torch.Generator(), seed)


def reseed(generator: torch.Generator, seed: int) -> torch.Generator:
    """``generator`` in the state :func:`generator_from_seed` gives a new one (one generator for many seeds)."""
    generator.manual_seed(int(seed) & _UINT64_MASK)  # bijective on int64, unlike torch's own remapping
    return generator


def _on(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device`` (itself when already there)."""
    return tensor if tensor.device == device else tensor.to(device)


@runtime_checkable
class LatentPrior(Protocol):
    """A Gaussian over flattened latents (D,). Draws are float32 on the device of ``mean``."""

    @property
    def kind(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def n_fit(self) -> int: ...

    @property
    def mean(self) -> Tensor: ...

    @property
    def sigma(self) -> float:
        """Pooled per-coordinate standard deviation sqrt(trace(Cov) / D)."""
        ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, D) draws; all randomness from ``generator`` (a fresh unseeded one when None)."""
        ...

    def sample_with_seeds(self, seeds: Sequence[int]) -> Tensor:
        """(len(seeds), D): row i is ``sample(1, generator_from_seed(seeds[i]))``."""
        ...

    def draw(self, generator: torch.Generator) -> Tensor:
        """(1, ...) what one draw takes from ``generator``; :meth:`from_draws` of such rows stacked gives, row by
        row, ``sample(1, generator)`` bit for bit (the per-draw part is as small as that allows)."""
        ...

    def from_draws(self, draws: Tensor) -> Tensor:
        """(B, D) samples from B stacked :meth:`draw` rows."""
        ...

    def log_density(self, z: Tensor) -> Tensor:
        """(n,) normalized Gaussian log density in float64 (natural log, latent units)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no D-sized arrays)."""
        ...


def _gaussian_noise(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Standard normal float32 noise drawn on the generator's device (CPU by default)."""
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def _check_fit_input(latents: Tensor) -> Tensor:
    x = flatten_latents(latents)
    if x.shape[0] < 2:
        raise ConfigurationError(f"a prior needs at least 2 latents to estimate a variance, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ConfigurationError("latents contain NaN or inf; check the inversion that produced them")
    return x


@dataclass(frozen=True, eq=False)
class ScalarGaussianPrior:
    """N(mean, variance * I): per-dimension mean, one pooled variance (the reference method)."""

    mean: Tensor
    variance: float
    n_fit: int
    per_dimension_variance_quantiles: tuple[float, float, float, float, float]
    """Min, 10%, median, 90%, max of the per-dimension unbiased variances (isotropy check)."""

    kind = "scalar"

    @classmethod
    def fit(cls, latents: Tensor) -> ScalarGaussianPrior:
        """Mean per dimension; variance = mean over dimensions of the unbiased per-dimension variances."""
        x = _check_fit_input(latents).double()
        per_dimension = x.var(dim=0, unbiased=True)
        levels = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
        q = torch.quantile(per_dimension.cpu(), levels)
        variance = float(per_dimension.mean())
        if variance <= 0.0:
            raise ConfigurationError("latents are all identical: their pooled variance is 0")
        return cls(
            mean=x.mean(dim=0).float(),
            variance=variance,
            n_fit=int(x.shape[0]),
            per_dimension_variance_quantiles=(
                float(q[0]), float(q[1]), float(q[2]), float(q[3]), float(q[4])
            ),
        )

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def sigma(self) -> float:
        return math.sqrt(self.variance)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.from_draws(_gaussian_noise((n, self.dim), generator))

    def draw(self, generator: torch.Generator) -> Tensor:
        return _gaussian_noise((1, self.dim), generator)

    def from_draws(self, draws: Tensor) -> Tensor:
        return self.mean + self.sigma * _on(draws, self.mean.device)  # elementwise: batched, the same bits

    def sample_with_seeds(self, seeds: Sequence[int]) -> Tensor:
        return _sample_rows_from_seeds(self, seeds)

    def log_density(self, z: Tensor) -> Tensor:
        residual = flatten_latents(z).to(self.mean.device, torch.float64) - self.mean.double()
        squared = (residual * residual).sum(dim=1)
        return -0.5 * (squared / self.variance + self.dim * math.log(2.0 * math.pi * self.variance))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "n_fit": self.n_fit,
            "sigma": self.sigma,
            "variance": self.variance,
            "per_dimension_variance_quantiles": dict(
                zip(_QUANTILE_NAMES, self.per_dimension_variance_quantiles, strict=True)
            ),
            "mean_norm": float(torch.linalg.vector_norm(self.mean.double())),
        }


@dataclass(frozen=True, eq=False)
class PPCAPrior:
    """Probabilistic PCA: Cov = V_k diag(lambda) V_k^T + residual_variance * (I - V_k V_k^T).

    ``components`` (k, D) are orthonormal rows (the top right-singular vectors of the centred latents),
    ``component_variances`` (k,) their sample variances lambda_j, and ``residual_variance`` the ML estimate
    sum_{j>k} lambda_j / (D - k): the mean of the discarded eigenvalues, zeros included.

    With n << D all of trace(S) sits in the n - 1 directions spanned by the latents, so for an isotropic
    cloud the residual variance is about (1 - explained fraction) * trace(S) / (D - k): draws then stay near
    the span of the inputs. Prefer it when the latents have real low-rank structure.
    """

    mean: Tensor
    components: Tensor
    component_variances: Tensor
    residual_variance: float
    n_fit: int
    total_variance: float
    """trace(S), the sum of all eigenvalues of the unbiased sample covariance."""
    n_components_rule: str

    kind = "ppca"

    @classmethod
    def fit(cls, latents: Tensor, n_components: int | None = None) -> PPCAPrior:
        """Fit by SVD of the centred (n, D) matrix.

        Default k: the fewest components explaining ``DEFAULT_EXPLAINED_VARIANCE`` of trace(S), capped at
        min(n - 2, D - 1) so that at least one nonzero discarded eigenvalue estimates the residual.
        """
        x = _check_fit_input(latents).double()
        n, dim = x.shape
        mean = x.mean(dim=0)
        _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
        eigenvalues = singular**2 / (n - 1)
        total = float(eigenvalues.sum())
        if total <= 0.0:
            raise ConfigurationError("latents are all identical: their total variance is 0")
        max_components = min(n - 2, dim - 1)
        if n_components is None:
            cumulative = torch.cumsum(eigenvalues, 0) / total
            threshold = torch.tensor([DEFAULT_EXPLAINED_VARIANCE], dtype=cumulative.dtype)
            needed = int(torch.searchsorted(cumulative, threshold).item()) + 1
            k = max(0, min(needed, max_components))
            rule = (f"fewest components explaining {DEFAULT_EXPLAINED_VARIANCE:.0%} of the variance "
                    f"({needed}), capped at min(n - 2, D - 1) = {max_components}")
        else:
            if not 0 <= n_components <= max_components:
                raise ConfigurationError(
                    f"n_components={n_components} must lie in 0..{max_components} "
                    f"(min(n - 2, D - 1) for n={n}, D={dim}) so that the residual variance is "
                    "estimated from discarded eigenvalues"
                )
            k = n_components
            rule = f"fixed by the caller: {k}"
        kept = eigenvalues[:k]
        residual = (total - float(kept.sum())) / (dim - k)
        if residual <= 0.0:
            raise ConfigurationError(
                f"latents have rank <= {k}: no variance is left for the residual; pass fewer n_components"
            )
        return cls(
            mean=mean.float(),
            components=vh[:k].float().contiguous(),
            component_variances=kept.cpu(),
            residual_variance=residual,
            n_fit=n,
            total_variance=total,
            n_components_rule=rule,
        )

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def sigma(self) -> float:
        return math.sqrt(self.total_variance / self.dim)

    @cached_property
    def _scales(self) -> Tensor:
        return self.component_variances.sqrt().to(self.mean.device, torch.float32)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        # One draw per row in a fixed order: k component coefficients, then D residual coordinates.
        coefficients = _on(_gaussian_noise((n, self.n_components), generator), self.mean.device)
        noise = _on(_gaussian_noise((n, self.dim), generator), self.mean.device)
        in_span = (coefficients * self._scales) @ self.components
        off_span = noise - (noise @ self.components.T) @ self.components
        return self.mean + in_span + math.sqrt(self.residual_variance) * off_span

    def draw(self, generator: torch.Generator) -> Tensor:
        # whole samples: the matrix products of one row are not those of a batch, bit for bit
        return self.sample(1, generator)

    def from_draws(self, draws: Tensor) -> Tensor:
        return _on(draws, self.mean.device)

    def sample_with_seeds(self, seeds: Sequence[int]) -> Tensor:
        return _sample_rows_from_seeds(self, seeds)

    def log_density(self, z: Tensor) -> Tensor:
        residual = flatten_latents(z).to(self.mean.device, torch.float64) - self.mean.double()
        projected = residual @ self.components.double().T
        variances = self.component_variances.to(self.mean.device)
        squared = (residual * residual).sum(dim=1)
        in_span = (projected * projected).sum(dim=1)
        off_span = (squared - in_span) / self.residual_variance
        mahalanobis = (projected * projected / variances).sum(dim=1) + off_span
        residual_dims = self.dim - self.n_components
        log_det = float(torch.log(variances).sum()) + residual_dims * math.log(self.residual_variance)
        return -0.5 * (mahalanobis + log_det + self.dim * math.log(2.0 * math.pi))

    def to_dict(self) -> dict[str, Any]:
        ratios = (self.component_variances / self.total_variance).tolist()
        return {
            "kind": self.kind,
            "dim": self.dim,
            "n_fit": self.n_fit,
            "sigma": self.sigma,
            "n_components": self.n_components,
            "n_components_rule": self.n_components_rule,
            "component_variances": [float(v) for v in self.component_variances.tolist()],
            "explained_variance_ratio": [float(r) for r in ratios],
            "explained_variance_total": float(sum(ratios)),
            "residual_variance": self.residual_variance,
            "total_variance": self.total_variance,
            "mean_norm": float(torch.linalg.vector_norm(self.mean.double())),
        }


def _sample_rows_from_seeds(prior: LatentPrior, seeds: Sequence[int]) -> Tensor:
    if len(seeds) == 0:
        return torch.empty((0, prior.dim), dtype=torch.float32, device=prior.mean.device)
    return torch.cat([prior.sample(1, generator_from_seed(seed)) for seed in seeds])


def fit_prior(latents: Tensor, kind: PriorKind = "scalar", n_components: int | None = None) -> LatentPrior:
    """Fit the prior of the given kind to (n, ...) latents."""
    if kind == "scalar":
        if n_components is not None:
            raise ConfigurationError("n_components applies to kind='ppca' only")
        return ScalarGaussianPrior.fit(latents)
    if kind == "ppca":
        return PPCAPrior.fit(latents, n_components)
    raise ConfigurationError(f"unknown prior kind {kind!r}; use 'scalar' or 'ppca'")


# ----------------------------------------------------------------------------------------------- diagnostics


def _summary(values: Tensor) -> dict[str, float]:
    v = values.double()
    return {
        "mean": float(v.mean()),
        "std": float(v.std()) if v.numel() > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _pairwise_angles_deg(x: Tensor) -> Tensor:
    """Angles (degrees) between all pairs i < j of the rows of x (float64)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    cosines = (x @ x.T) / (norms[:, None] * norms[None, :])
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    return torch.rad2deg(torch.arccos(cosines[i, j].clamp(-1.0, 1.0)))


def _ks_of_standardized(standardized: Tensor) -> tuple[float, float, int]:
    values = standardized.reshape(-1).cpu().numpy()
    if values.size > MAX_KS_VALUES:
        values = np.random.default_rng(0).choice(values, size=MAX_KS_VALUES, replace=False)
    result = stats.kstest(values, "norm")
    return float(result.statistic), float(result.pvalue), int(values.size)


def leave_one_out_separability(ood: Tensor, reference: Tensor) -> dict[str, Any]:
    """Leave-one-out accuracy of a linear classifier telling OOD latents from reference latents.

    Classifier: PCA of the n + m - 1 training latents (all of their components; computed exactly from the
    Gram matrix, so D never enters the per-fold cost), then sklearn LinearDiscriminantAnalysis with
    Ledoit-Wolf shrinkage (solver 'lsqr'), which stays well posed with as many dimensions as samples.
    The held-out latent is projected onto the training PCA; nothing of it is seen during fitting.
    """
    x = torch.cat([flatten_latents(ood), flatten_latents(reference).to(ood.device)]).double()
    labels = np.r_[np.ones(ood.shape[0], dtype=int), np.zeros(reference.shape[0], dtype=int)]
    gram = (x @ x.T).cpu().numpy()
    total = x.shape[0]
    predictions = np.empty(total, dtype=int)
    for held_out in range(total):
        train = np.delete(np.arange(total), held_out)
        k_tt = gram[np.ix_(train, train)]
        row_means = k_tt.mean(axis=1)
        grand_mean = k_tt.mean()
        centred = k_tt - row_means[:, None] - row_means[None, :] + grand_mean
        k_q = gram[held_out, train]
        centred_q = k_q - k_q.mean() - row_means + grand_mean
        eigenvalues, eigenvectors = np.linalg.eigh(centred)
        keep = eigenvalues > eigenvalues.max() * 1e-10
        scale = np.sqrt(eigenvalues[keep])
        train_coords = eigenvectors[:, keep] * scale
        held_coords = (centred_q @ eigenvectors[:, keep]) / scale
        classifier = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
        classifier.fit(train_coords, labels[train])
        predictions[held_out] = int(classifier.predict(held_coords[None, :])[0])
    correct = predictions == labels
    return {
        "classifier": "training-fold PCA + LinearDiscriminantAnalysis(solver='lsqr', shrinkage='auto')",
        "loo_accuracy": float(correct.mean()),
        "loo_balanced_accuracy": float(0.5 * (correct[labels == 1].mean() + correct[labels == 0].mean())),
        "chance_accuracy": float(max(labels.mean(), 1.0 - labels.mean())),
    }


def prior_diagnostics(
    ood_latents: Tensor,
    prior: LatentPrior,
    reference_latents: Tensor | None = None,
    *,
    fitted_on_ood: bool = True,
) -> dict[str, Any]:
    """JSON-safe checks that the OOD latents look like the Gaussian cloud ``prior`` claims.

    ``fitted_on_ood``: the prior was fitted to these very latents. Their residuals z - mean are then
    shrunk by sqrt((n - 1) / n) (the mean was estimated from them); the expected norm ratio and centred
    angle below say so, and the KS test rescales by sqrt(n / (n - 1)) to undo it.
    """
    z = flatten_latents(ood_latents).to(prior.mean.device).double()
    n, dim = z.shape
    if dim != prior.dim:
        raise ConfigurationError(f"latents have D={dim} but the prior was fitted with D={prior.dim}")
    if n < 2:
        raise ConfigurationError("diagnostics need at least 2 OOD latents")
    mean = prior.mean.double()
    centred = z - mean
    radius = torch.linalg.vector_norm(centred, dim=1)
    norms = torch.linalg.vector_norm(z, dim=1)
    expected_radius = math.sqrt(dim) * prior.sigma
    shrink = math.sqrt((n - 1) / n) if fitted_on_ood else 1.0
    ks_statistic, ks_pvalue, ks_count = _ks_of_standardized(centred / (prior.sigma * shrink))
    result: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "prior_kind": prior.kind,
        "sigma": prior.sigma,
        "norm_concentration": {
            "radius_mean": float(radius.mean()),
            "radius_std": float(radius.std()),
            "sqrt_d_times_sigma": expected_radius,
            "ratio": float(radius.mean()) / expected_radius,
            "expected_ratio": shrink,
        },
        "norms": {
            "mean": float(norms.mean()),
            "std": float(norms.std()),
            "sqrt_d": math.sqrt(dim),
            "ratio": float(norms.mean()) / math.sqrt(dim),
        },
        "pairwise_angles_centred_deg": _summary(_pairwise_angles_deg(centred)),
        "pairwise_angles_raw_deg": _summary(_pairwise_angles_deg(z)),
        "expected_centred_angle_deg": math.degrees(math.acos(-1.0 / (n - 1))) if fitted_on_ood else 90.0,
        "ks_standardized": {"statistic": ks_statistic, "pvalue": ks_pvalue, "n_values": ks_count},
    }
    if reference_latents is not None:
        reference = flatten_latents(reference_latents).to(z.device).double()
        if reference.shape[1] != dim:
            raise ConfigurationError(f"reference latents have D={reference.shape[1]}, OOD latents D={dim}")
        ood_mean, reference_mean = z.mean(dim=0), reference.mean(dim=0)
        distance = float(torch.linalg.vector_norm(ood_mean - reference_mean))
        ood_radius = float(((z - ood_mean) ** 2).sum(dim=1).mean().sqrt())
        reference_radius = float(((reference - reference_mean) ** 2).sum(dim=1).mean().sqrt())
        separability: dict[str, Any] = {
            "m": int(reference.shape[0]),
            "mean_distance": distance,
            "ood_radius": ood_radius,
            "reference_radius": reference_radius,
            "mean_distance_over_ood_radius": distance / ood_radius,
            "mean_distance_over_reference_radius": distance / reference_radius,
            "mean_distance_over_d_quarter": distance / dim**0.25,
        }
        if reference.shape[0] >= 2:
            separability.update(leave_one_out_separability(z, reference))
        result["separability"] = separability
    return result
