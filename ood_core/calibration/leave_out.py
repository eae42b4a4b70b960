"""Leave-shots-out calibration: the run chooses the settings the user left empty from its own shots.

About a third of the normalized shots is held out (deterministically for the seed) as a pseudo-reference. For each
t0 of a small grid the kept shots are inverted once; every setting at that t0 (candidate strategy and its slerp
mixing range, prior family) reuses those latents, draws candidates through the run's own sampler
(:class:`ood_core.method.sampler.GeometricSampler`: the same draws and the same geometric screening, against a few
in-domain reference latents made at that t0), keeps the first ``per_setting`` accepted (the same candidate seeds for
every setting: common random numbers), denoises them with ``steps`` DDIM steps, and scores them against the
held-out shots in physical units (:mod:`ood_core.calibration.scores`: pixel W1, power spectrum, source counts and
the C2ST accuracy, whether a classifier on texture and source features tells them from the held-out shots; for
photon counts, :attr:`NormalizedBatch.counts`, the counts-per-pixel distribution, total counts, radial profile and
Li & Ma sources take the place of the first three), each twice unless ``noise`` is given:
as denoised and with background noise matching the kept shots' added (:mod:`ood_core.method.noise`; no network
evaluation). Settings are ranked by the sum
of their ranks over the fidelity scores; a setting that makes any near-copy of a kept shot, or whose candidates all
fail the screening (the run would make nothing), is disqualified. The
best one fills the settings the user did not give; given ones are kept as given (the table is then a report).

Cost is counted in network evaluations (one UNet forward of one image): the calibration is sized to cost at most
what a plain run of the same size costs (``budget``), by lowering its DDIM steps, then its samples per setting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ood_core.calibration import scores
from ood_core.method import ddim
from ood_core.method.counts_domain import poisson_draws
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.noise import NoiseModel, add_noise_to_stack, fit_noise_model
from ood_core.method.normalization import NormalizedBatch, model_to_physical
from ood_core.method.prior import fit_prior, generator_from_seed
from ood_core.method.sampler import GeometricSampler, SamplerConfig, Strategy
from ood_core.method.seeds import child_seed
from ood_core.pipeline.config import CALIBRATION_MIN_SHOTS, CHOOSABLE, DEFAULT_SLERP_RANGE, PipelineParameters
from ood_core.pipeline.ingest import IngestResult

log = logging.getLogger(__name__)

T0_GRID = (400, 600)
STRATEGY_GRID: tuple[tuple[str, tuple[float, float]], ...] = (
    ("prior", DEFAULT_SLERP_RANGE), ("slerp_ood_prior", (0.15, 0.35)), ("slerp_ood_prior", DEFAULT_SLERP_RANGE))
PRIOR_GRID = ("scalar", "ppca")
PER_SETTING = 6
REFERENCES = 8
SCREEN_TRIES = 64
"""Candidates screened per sample of a setting before the setting is said to make (almost) nothing."""
MAX_STEPS = 20
MIN_FORCED_SHOTS = 5
"""With --calibrate given, the fewest shots it runs on (2 held out, 3 kept: the prior and novelty need 3)."""


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    t0: int
    strategy: str
    slerp_range: tuple[float, float]
    prior: str
    noise: str = "off"
    """Matching background noise added to the samples (scored both ways at no network cost, see
    :func:`noise_values`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"t0": self.t0, "strategy": self.strategy, "slerp_range": list(self.slerp_range), "prior": self.prior,
                "noise": self.noise}


@dataclass(frozen=True)
class Plan:
    """The grid, the DDIM steps and samples per setting, and the budget (network evaluations)."""

    settings: tuple[Setting, ...]
    steps: int
    per_setting: int
    budget: int
    references: int = 0
    """In-domain reference latents per t0 for the run's geometric screening (0: candidates unscreened)."""

    def cost(self, kept: int) -> int:
        t0s = len({s.t0 for s in self.settings})
        return self.steps * (t0s * (kept + 2 * self.references) + len(self.settings) * self.per_setting)


def default_grid(params: PipelineParameters) -> tuple[Setting, ...]:
    """The grid over the settings the user left empty; a given setting is the only value of its axis."""
    t0s = [params.t0] if params.t0 is not None else [t for t in T0_GRID if t >= params.steps] or [max(T0_GRID)]
    strategies = ([(params.strategy, DEFAULT_SLERP_RANGE)] if params.strategy is not None else list(STRATEGY_GRID))
    priors = [params.prior] if params.prior is not None else list(PRIOR_GRID)
    return tuple(Setting(t0, strategy, lam, prior) for t0 in t0s for strategy, lam in strategies for prior in priors)


def noise_values(params: PipelineParameters) -> tuple[str, ...]:
    """The noise settings every grid point is scored with: the given one, else without and with noise (the same
    denoised samples: noise costs no network evaluation)."""
    return (params.noise,) if params.noise is not None else ("off", "on")


def plain_run_evaluations(params: PipelineParameters, shots: int) -> int:
    """Network evaluations of a plain run: invert the shots, make the references and the samples."""
    return params.steps * (shots + params.reference_count + params.samples)


def plan_for(params: PipelineParameters, settings: tuple[Setting, ...], kept: int, shots: int) -> Plan:
    """Steps and samples per setting that fit the budget (a plain run's evaluations): fewer steps first (down to
    2), then fewer samples (down to 3)."""
    budget = plain_run_evaluations(params, shots)
    plan = Plan(settings, min(params.steps, MAX_STEPS), PER_SETTING, budget, min(params.reference_count, REFERENCES))
    while plan.cost(kept) > budget and plan.steps > 2:
        plan = replace(plan, steps=plan.steps - 1)
    while plan.cost(kept) > budget and plan.per_setting > 3:
        plan = replace(plan, per_setting=plan.per_setting - 1)
    return plan


def split_shots(n: int, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out): about a third held out (2 at least), chosen by the seed's "calibration" stream."""
    held_count = max(2, round(n / 3))
    order = torch.randperm(n, generator=generator_from_seed(child_seed(seed, "calibration"))).tolist()
    return sorted(order[held_count:]), sorted(order[:held_count])


def off(reason: str) -> dict[str, Any]:
    log.info("calibration off: %s", reason)
    return {"enabled": False, "reason": reason, "chosen": {}}


def calibrate(params: PipelineParameters, model: FrozenDiffusionModel, ingested: IngestResult) -> dict[str, Any]:
    """The calibration record of a run (provenance ``calibration``): on by default with enough shots."""
    n = int(ingested.batch.images.shape[0])
    if params.calibrate is False:
        return off("switched off (--no-calibrate)")
    if ingested.batch.per_band:
        return off("band groups: the calibration's fidelity scores are single-band; settings are the defaults "
                   "unless given")
    if params.calibrate is None and n < CALIBRATION_MIN_SHOTS:
        return off(f"{n} usable shots: the calibration needs {CALIBRATION_MIN_SHOTS} (a third held out)")
    if n < MIN_FORCED_SHOTS:
        return off(f"{n} usable shots: even with --calibrate it needs {MIN_FORCED_SHOTS}")
    kept, held = split_shots(n, params.seed)
    plan = plan_for(params, default_grid(params), len(kept), n)
    return run_calibration(params, model, ingested.batch, plan, (kept, held))


def run_calibration(params: PipelineParameters, model: FrozenDiffusionModel, batch: NormalizedBatch, plan: Plan,
                    split: tuple[list[int], list[int]]) -> dict[str, Any]:
    """Score every setting of ``plan`` and choose; the record with the table, the split, budget and cost."""
    started = time.perf_counter()
    kept, held = split
    images = torch.from_numpy(batch.images)
    held_stats = scores.HeldOut.of(model_to_physical(batch.images[held], batch.params, np.array(held)),
                                   counts=batch.counts.counts)
    noise = fit_noise_model(model_to_physical(batch.images[kept], batch.params, np.array(kept)))
    rows: list[dict[str, Any]] = []
    made: dict[int, np.ndarray[Any, Any]] = {}
    """Each scored row's physical samples (the verdict tests the chosen row's against every shot)."""
    spent = 0
    for t0 in sorted({s.t0 for s in plan.settings}):
        grid = ddim.timestep_grid(t0, min(plan.steps, t0), model.num_train_timesteps)
        latents = ddim.ddim_invert(model, images[kept], grid, batch_size=params.batch_size or 16)
        references = _references(params, model, plan, t0, len(grid) - 1)
        spent += (len(kept) + 2 * plan.references) * (len(grid) - 1)
        for setting in (s for s in plan.settings if s.t0 == t0):
            candidates, acceptance = _candidates(params, latents, references, setting, plan.per_setting)
            if candidates is None:
                rows.extend(_empty(replace(setting, noise=value), acceptance) for value in noise_values(params))
                continue
            samples = ddim.ddim_generate(model, candidates, grid, eta=params.eta,
                                         seeds=[child_seed(params.seed, f"calibration/{k}")
                                                for k in range(len(candidates))],
                                         batch_size=params.batch_size or 16)
            spent += len(candidates) * (len(grid) - 1)
            for row, physical in _score(params, batch, samples, (images[kept], kept), held_stats, setting, noise):
                row["scores"]["acceptance"] = acceptance
                rows.append(row)
                made[len(rows) - 1] = physical
    record = choose(rows, params, held_stats.names)
    augmented = scores.fidelity(scores.augmentation(model_to_physical(batch.images[kept], batch.params,
                                                                      np.array(kept)), plan.per_setting), held_stats)
    best = record["table"][record["best"]]["scores"]
    shots = model_to_physical(batch.images, batch.params, np.arange(len(batch.images)))
    realism = scores.realism_test(shots, made.get(record["best"]))
    names = [str(batch.sources[i].get("path", i)) for i in held]
    record.update(enabled=True, held_out=names, held_out_index=held, kept_index=kept, steps=plan.steps,
                  samples_per_setting=plan.per_setting, budget_evaluations=plan.budget, evaluations_spent=spent,
                  screening=(f"the run's geometric screening against {plan.references} in-domain reference "
                             f"latents per t0" if plan.references else "unscreened: candidates as drawn"),
                  references=plan.references,
                  augmentation=augmented, verdict=scores.verdict(best, augmented, realism, held_stats.names),
                  noise={"level_kept_shots": noise.level, "seed_stream": "child_seed(seed, 'calibration/noise/<k>')",
                         "scored": list(noise_values(params))},
                  seconds=round(time.perf_counter() - started, 3))
    log.info("calibration: %d settings, %d network evaluations (budget %d), chose %s", len(rows), spent,
             plan.budget, record["chosen"])
    return record


def _references(params: PipelineParameters, model: FrozenDiffusionModel, plan: Plan, t0: int,
                steps: int) -> torch.Tensor | None:
    """In-domain reference latents at t0 (the run's "reference" stream), or None when the plan does not screen."""
    if plan.references < 1:
        return None
    _, latents = ddim.in_domain_reference_latents(model, plan.references, t0, steps,
                                                  seed=child_seed(params.seed, "reference"),
                                                  batch_size=params.batch_size or 16)
    return latents.reshape(plan.references, -1).float().cpu()


def _candidates(params: PipelineParameters, latents: torch.Tensor, references: torch.Tensor | None,
                setting: Setting, count: int) -> tuple[torch.Tensor | None, float]:
    """Up to ``count`` candidates of ``setting`` and the acceptance rate: through the run's own candidate draws and
    geometric screening when there are references (the first accepted of ``SCREEN_TRIES`` x count seeds), else
    the first ``count`` draws unscreened. None when nothing passes."""
    flat = latents.reshape(latents.shape[0], -1).float().cpu()
    prior = fit_prior(flat, "ppca" if setting.prior == "ppca" else "scalar")
    strategy: Strategy = ("prior" if setting.strategy == "prior" else
                          "slerp_ood_ood" if setting.strategy == "slerp_ood_ood" else "slerp_ood_prior")
    config = SamplerConfig(strategy=strategy, slerp_range=setting.slerp_range)
    # unscreened: the sampler only draws (its band, from two stand-in references, is not applied)
    reference = references if references is not None else flat[:2]
    sampler = GeometricSampler(prior, flat, reference, config, seed=params.seed)
    seeds = [child_seed(params.seed, f"calibration/candidate/{k}")
             for k in range(count * (SCREEN_TRIES if references is not None else 1))]
    screened = sampler.screen(seeds)
    if references is None:
        return screened.latents.reshape(count, *latents.shape[1:]), 1.0
    accepted = screened.accepted.cpu()
    chosen = screened.latents[accepted][:count]
    acceptance = float(accepted.double().mean())
    return (chosen.reshape(-1, *latents.shape[1:]) if len(chosen) else None), acceptance


def _empty(setting: Setting, acceptance: float) -> dict[str, Any]:
    """A setting whose candidates all fail the screening: it would make no samples (disqualified)."""
    nan = float("nan")
    empty = dict.fromkeys((*scores.FIDELITY, *scores.COUNTS_FIDELITY, "source_count_mean", "c2st_ci_low",
                           "c2st_ci_high", "near_copy_fraction", "nearest_ratio"), nan)
    return {"setting": setting.to_dict(), "scores": {**empty, "acceptance": acceptance}}


def _score(params: PipelineParameters, batch: NormalizedBatch, samples: torch.Tensor,
           kept_shots: tuple[torch.Tensor, list[int]], held: scores.HeldOut, setting: Setting,
           noise: NoiseModel) -> list[tuple[dict[str, Any], np.ndarray[Any, Any]]]:
    """One row per noise value (with its physical samples): the same samples scored as denoised, and with matching
    noise added. Novelty is judged on the denoised samples, as in the run."""
    kept_images, kept = kept_shots
    novelty = scores.novelty(samples.float().cpu(), kept_images, params.novelty_factor)
    nearest = ((samples.reshape(len(samples), 1, -1) - kept_images.reshape(1, len(kept), -1)) ** 2).sum(-1).argmin(1)
    owners = np.array([kept[int(i)] for i in nearest])
    physical = model_to_physical(samples.numpy(), batch.params, owners)
    rows = []
    for value in noise_values(params):
        images = physical if value == "off" else _noisy(params, batch, physical, noise, nearest)
        rows.append(({"setting": replace(setting, noise=value).to_dict(),
                      "scores": {**scores.fidelity(images, held), **novelty}}, images))
    return rows


def _noisy(params: PipelineParameters, batch: NormalizedBatch, physical: np.ndarray[Any, Any], noise: NoiseModel,
           nearest: torch.Tensor) -> np.ndarray[Any, Any]:
    """Physical samples with matching noise, as the run's ``samples_physical`` (not clipped); per-image
    normalization: the nearest kept shot's level."""
    seeds = [child_seed(params.seed, f"calibration/noise/{k}") for k in range(len(physical))]
    if batch.counts.counts:  # photon counts: the noise is the Poisson draw, as in the run
        return poisson_draws(physical, seeds)
    owners = [int(i) for i in nearest] if len(batch.params) > 1 else None
    return add_noise_to_stack(physical, noise, seeds, owners)[0]


def choose(rows: list[dict[str, Any]], params: PipelineParameters,
           names: tuple[str, ...] = scores.FIDELITY) -> dict[str, Any]:
    """Rank the rows on the ``names`` scores, pick the best without near-copies (fewest near-copies when every row
    has some)."""
    ranks = scores.rank_sum(rows, names)
    for row, rank in zip(rows, ranks, strict=True):
        row["rank_sum"] = rank
        fraction = row["scores"]["near_copy_fraction"]
        row["near_copies"] = bool(fraction > 0)
        row["disqualified"] = "near-copies" if fraction > 0 else ("nothing passes the screening"
                                                                  if not np.isfinite(fraction) else None)
    clean = [i for i, row in enumerate(rows) if row["disqualified"] is None]
    usable = [i for i, row in enumerate(rows) if np.isfinite(row["scores"]["near_copy_fraction"])] or [0]
    pool = clean or sorted(usable, key=lambda i: rows[i]["scores"]["near_copy_fraction"])[:1]
    best = min(pool, key=lambda i: (ranks[i], i))
    given = params.given()
    setting = rows[best]["setting"]
    chosen = {name: setting[name] for name in CHOOSABLE if name not in given}
    if "strategy" not in given:
        chosen["slerp_range"] = setting["slerp_range"]
    note = None if clean else "every setting made near-copies or nothing: the one with the fewest copies was taken"
    return {"table": rows, "best": best, "chosen": chosen, "given": sorted(given), "note": note,
            "ranking": "sum of ranks over " + ", ".join(names) + "; near-copies disqualify"}
