"""Baselines the method is judged against (DESIGN section 7), all through the same frozen model and code.

- ``in_domain``: plain DDIM sampling from N(0, I) at the last timestep: what the base model makes by itself.
- ``prior_unscreened``: the method without its geometric screening: draws from the OOD prior fitted to the
  run's own inverted latents, denoised with the run's DDIM grid (isolates what the screening adds).
- ``augmentation``: the inputs under the seven non-identity flips and right-angle rotations.
- ``finetune``: the paper's tuning baseline: a short, bounded fine-tune of a *copy* of the base model on
  the inputs with the DDPM noise-prediction loss (as in ``ood_core.base_model.training``), then sampling from N(0, I).
  The frozen model itself is never modified.

``REGISTRY`` maps each name to a function ``(BaselineContext, n) -> BaselineDraw`` that makes n images of that
baseline from what the run provides; ``ood_core.evaluation.evaluate`` only looks names up in it.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ood_core.errors import ConfigurationError
from ood_core.method import ddim
from ood_core.method.dihedral import dihedral
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.prior import PriorKind, fit_prior
from ood_core.method.sampler import candidate_seed

BaselineName = Literal["in_domain", "prior_unscreened", "augmentation", "finetune"]
BASELINE_NAMES: tuple[str, ...] = get_args(BaselineName)
MAX_FINETUNE_STEPS = 2000
"""Upper bound on the fine-tuning baseline's optimizer steps (CPU-feasible, and a baseline, not a method)."""

ProgressHook = Callable[[int, int, float], None]
"""progress(step, total, loss) during fine-tuning."""


def check_baselines(names: Sequence[str]) -> list[str]:
    """Validate baseline names (order kept, duplicates dropped); raise with the valid choices."""
    unknown = [name for name in names if name not in BASELINE_NAMES]
    if unknown:
        raise ConfigurationError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINE_NAMES)}")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------------------
# Sampling baselines


def in_domain_samples(
    model: FrozenDiffusionModel, n: int, steps: int, *, seed: int = 0, batch_size: int = 16
) -> torch.Tensor:
    """n images (n, C, H, W) of the base model from N(0, I) noise at the last timestep, K = ``steps``."""
    if n < 1:
        raise ConfigurationError(f"need at least one sample, got n={n}")
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((n, model.channels, model.resolution, model.resolution), generator=generator)
    last = model.num_train_timesteps - 1
    grid = ddim.timestep_grid(last, min(steps, last), model.num_train_timesteps)
    return ddim.ddim_generate(model, noise, grid, batch_size=batch_size)


def unscreened_prior_samples(
    model: FrozenDiffusionModel,
    input_latents: torch.Tensor,
    grid: Sequence[int],
    n: int,
    *,
    prior_kind: PriorKind = "scalar",
    seed: int = 0,
    eta: float = 0.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """n images denoised from raw draws of the OOD prior fitted to ``input_latents`` (no screening)."""
    if n < 1:
        raise ConfigurationError(f"need at least one sample, got n={n}")
    flat = input_latents.reshape(input_latents.shape[0], -1).float()
    prior = fit_prior(flat, prior_kind)
    seeds = [candidate_seed(seed, i) for i in range(n)]
    latents = prior.sample_with_seeds(seeds).reshape(n, *input_latents.shape[1:]).float()
    return ddim.ddim_generate(model, latents, list(grid), eta=eta, seeds=seeds, batch_size=batch_size)


def augmentation_samples(
    inputs: torch.Tensor, n: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n augmented inputs: (images, parent input index, transform index 1..7), drawn without replacement
    from the 7 x N non-identity (input, transform) pairs, and with replacement beyond that."""
    count = inputs.shape[0]
    if count < 1 or n < 1:
        raise ConfigurationError(f"augmentation needs inputs and n >= 1, got {count} inputs, n={n}")
    generator = torch.Generator().manual_seed(int(seed))
    pairs = 7 * count
    order = torch.randperm(pairs, generator=generator)
    if n > pairs:
        order = torch.cat([order, torch.randint(pairs, (n - pairs,), generator=generator)])
    order = order[:n]
    parents, transforms = order % count, order // count + 1
    images = torch.stack([dihedral(inputs[int(p)][None], int(t))[0] for p, t in zip(parents, transforms,
                                                                                       strict=True)])
    return images, parents, transforms


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning baseline


@dataclass(frozen=True)
class FinetuneConfig:
    """A short fine-tune of the base model on the few-shot inputs (DDPM loss, AdamW, random symmetries)."""

    steps: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-4
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_FINETUNE_STEPS:
            raise ConfigurationError(f"finetune steps must be 1..{MAX_FINETUNE_STEPS}, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigurationError(f"finetune batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConfigurationError(f"finetune learning_rate must be > 0, got {self.learning_rate}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FinetuneReport:
    """What the fine-tune did: the loss of every step and its wall time."""

    config: FinetuneConfig
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        tail = self.losses[-max(1, len(self.losses) // 10):] if self.losses else []
        return {
            **self.config.to_dict(),
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss_mean_last_10pct": sum(tail) / len(tail) if tail else None,
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(self.seconds / max(len(self.losses), 1), 4),
        }


def finetune_model(
    model: FrozenDiffusionModel,
    inputs: torch.Tensor,
    config: FinetuneConfig,
    *,
    progress: ProgressHook | None = None,
) -> tuple[FrozenDiffusionModel, FinetuneReport]:
    """A fine-tuned copy of ``model`` on inputs (N, C, H, W) in [-1, 1]; ``model`` is left untouched.

    Loss (DDPM, Ho et al. 2020; as in ``ood_core.base_model.training``): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with
    t uniform over the schedule, minimize ||eps_theta(x_t, t) - eps||^2.
    """
    if inputs.ndim != 4 or inputs.shape[1] != model.channels:
        raise ConfigurationError(f"inputs must be (N, {model.channels}, H, W), got {tuple(inputs.shape)}")
    generator = torch.Generator().manual_seed(config.seed)
    unet = copy.deepcopy(model.unet).to(model.device, torch.float32)
    unet.requires_grad_(True)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
    alphas = model.alphas_cumprod.to(torch.float32).cpu()
    data = inputs.float().cpu()
    report = FinetuneReport(config)
    started = time.perf_counter()
    for step in range(config.steps):
        picks = torch.randint(data.shape[0], (config.batch_size,), generator=generator)
        batch = data[picks]
        if config.augment:
            ks = torch.randint(8, (config.batch_size,), generator=generator)
            batch = torch.stack([dihedral(batch[i][None], int(k))[0] for i, k in enumerate(ks)])
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(model.num_train_timesteps, (config.batch_size,), generator=generator)
        a_t = alphas[timesteps].view(-1, 1, 1, 1)
        noisy = a_t.sqrt() * batch + (1 - a_t).sqrt() * noise
        prediction = unet(noisy.to(model.device), timesteps.to(model.device)).sample[:, : model.channels]
        loss = F.mse_loss(prediction, noise.to(model.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's backward() is unannotated
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        report.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, config.steps, report.losses[-1])
    report.seconds = time.perf_counter() - started
    unet.requires_grad_(False)
    unet.eval()
    unet.to(model.device, model.dtype)
    tuned = dataclasses.replace(
        model,
        unet=unet,
        source=f"{model.source} (fine-tuned {config.steps} steps on {data.shape[0]} inputs)",
        weights_sha256=f"finetuned-from:{model.weights_sha256}",
    )
    return tuned, report


def finetune_samples(
    model: FrozenDiffusionModel,
    inputs: torch.Tensor,
    n: int,
    steps: int,
    config: FinetuneConfig,
    *,
    seed: int = 0,
    batch_size: int = 16,
    progress: ProgressHook | None = None,
) -> tuple[torch.Tensor, FinetuneReport]:
    """Fine-tune a copy of the model on the inputs, then draw n images from N(0, I) with K = ``steps``."""
    tuned, report = finetune_model(model, inputs, config, progress=progress)
    return in_domain_samples(tuned, n, steps, seed=seed, batch_size=batch_size), report


# ---------------------------------------------------------------------------------------------------------
# The registry: name -> function that makes a baseline's images from what the run provides


@dataclass(frozen=True)
class BaselineContext:
    """What every baseline may draw on: the run's frozen model, inputs, inverted latents and DDIM grid."""

    model: FrozenDiffusionModel
    inputs: torch.Tensor
    input_latents: torch.Tensor
    grid: Sequence[int]
    steps: int
    """K of the baselines that sample from N(0, I)."""
    eta: float = 0.0
    prior_kind: str = "scalar"
    seed: int = 0
    batch_size: int = 16
    finetune_steps: int = 200
    finetune_batch_size: int = 8
    finetune_learning_rate: float = 1e-4


@dataclass
class BaselineDraw:
    """n images of one baseline (model space), how they were made, and (if known) the input each derives from."""

    images: torch.Tensor
    info: dict[str, Any]
    parents: npt.NDArray[np.int64] | None = None


BaselineFunction = Callable[[BaselineContext, int], BaselineDraw]


def _in_domain(ctx: BaselineContext, n: int) -> BaselineDraw:
    images = in_domain_samples(ctx.model, n, ctx.steps, seed=ctx.seed, batch_size=ctx.batch_size)
    return BaselineDraw(images, {"noise": "N(0, I) at the last timestep", "steps": ctx.steps, "seed": ctx.seed})


def _prior_unscreened(ctx: BaselineContext, n: int) -> BaselineDraw:
    images = unscreened_prior_samples(ctx.model, ctx.input_latents, ctx.grid, n,
                                      prior_kind=cast(PriorKind, ctx.prior_kind), seed=ctx.seed, eta=ctx.eta,
                                      batch_size=ctx.batch_size)
    info = {"prior": ctx.prior_kind, "t0": ctx.grid[-1], "steps": len(ctx.grid) - 1, "eta": ctx.eta,
            "seed": ctx.seed}
    return BaselineDraw(images, info)


def _augmentation(ctx: BaselineContext, n: int) -> BaselineDraw:
    images, parents, transforms = augmentation_samples(ctx.inputs, n, seed=ctx.seed)
    info = {"transforms": "7 non-identity flips/rotations", "parents": parents.tolist(),
            "transform_index": transforms.tolist()}
    return BaselineDraw(images, info, parents.numpy().astype(np.int64))


def _finetune(ctx: BaselineContext, n: int) -> BaselineDraw:
    config = FinetuneConfig(steps=ctx.finetune_steps, batch_size=ctx.finetune_batch_size,
                            learning_rate=ctx.finetune_learning_rate, seed=ctx.seed)
    images, report = finetune_samples(ctx.model, ctx.inputs, n, ctx.steps, config, seed=ctx.seed,
                                      batch_size=ctx.batch_size)
    return BaselineDraw(images, {**report.to_dict(), "sample_steps": ctx.steps})


REGISTRY: dict[str, BaselineFunction] = {
    "in_domain": _in_domain,
    "prior_unscreened": _prior_unscreened,
    "augmentation": _augmentation,
    "finetune": _finetune,
}
"""Every baseline by name, in the order of ``BASELINE_NAMES``."""


def draw_baseline(name: str, ctx: BaselineContext, n: int) -> BaselineDraw:
    """n images of the named baseline (names are checked with :func:`check_baselines`)."""
    return REGISTRY[check_baselines([name])[0]](ctx, n)
