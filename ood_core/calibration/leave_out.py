"""Leave-shots-out calibration: the run chooses the settings the user left empty from its own shots.

About a third of the normalized shots is held out (deterministically for the seed) as a pseudo-reference. For each
t0 of a small grid the kept shots are inverted once; every setting at that t0 (candidate strategy and its slerp
mixing range, prior family) reuses those latents, draws ``per_setting`` candidates (the same candidate seeds for
every setting: common random numbers), *unscreened* (the run's geometric band needs in-domain reference latents,
which would cost more than the rest of the calibration), denoises them with ``steps`` DDIM steps, and scores them
against the held-out shots in physical units (:mod:`ood_core.calibration.scores`). Settings are ranked by the sum
of their ranks over the fidelity scores; a setting that makes any near-copy of a kept shot is disqualified. The
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
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.normalization import NormalizedBatch, model_to_physical
from ood_core.method.prior import fit_prior, generator_from_seed
from ood_core.method.sampler import slerp
from ood_core.method.seeds import child_seed
from ood_core.pipeline.config import CALIBRATION_MIN_SHOTS, CHOOSABLE, DEFAULT_SLERP_RANGE, PipelineParameters
from ood_core.pipeline.ingest import IngestResult

log = logging.getLogger(__name__)

T0_GRID = (400, 600)
STRATEGY_GRID: tuple[tuple[str, tuple[float, float]], ...] = (
    ("prior", DEFAULT_SLERP_RANGE), ("slerp_ood_prior", (0.15, 0.35)), ("slerp_ood_prior", DEFAULT_SLERP_RANGE))
PRIOR_GRID = ("scalar", "ppca")
PER_SETTING = 6
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

    def to_dict(self) -> dict[str, Any]:
        return {"t0": self.t0, "strategy": self.strategy, "slerp_range": list(self.slerp_range), "prior": self.prior}


@dataclass(frozen=True)
class Plan:
    """The grid, the DDIM steps and samples per setting, and the budget (network evaluations)."""

    settings: tuple[Setting, ...]
    steps: int
    per_setting: int
    budget: int

    def cost(self, kept: int) -> int:
        t0s = len({s.t0 for s in self.settings})
        return self.steps * (t0s * kept + len(self.settings) * self.per_setting)


def default_grid(params: PipelineParameters) -> tuple[Setting, ...]:
    """The grid over the settings the user left empty; a given setting is the only value of its axis."""
    t0s = [params.t0] if params.t0 is not None else [t for t in T0_GRID if t >= params.steps] or [max(T0_GRID)]
    strategies = ([(params.strategy, DEFAULT_SLERP_RANGE)] if params.strategy is not None else list(STRATEGY_GRID))
    priors = [params.prior] if params.prior is not None else list(PRIOR_GRID)
    return tuple(Setting(t0, strategy, lam, prior) for t0 in t0s for strategy, lam in strategies for prior in priors)


def plain_run_evaluations(params: PipelineParameters, shots: int) -> int:
    """Network evaluations of a plain run: invert the shots, make the references and the samples."""
    return params.steps * (shots + params.reference_count + params.samples)


def plan_for(params: PipelineParameters, settings: tuple[Setting, ...], kept: int, shots: int) -> Plan:
    """Steps and samples per setting that fit the budget (a plain run's evaluations): fewer steps first (down to
    2), then fewer samples (down to 3)."""
    budget = plain_run_evaluations(params, shots)
    plan = Plan(settings, min(params.steps, MAX_STEPS), PER_SETTING, budget)
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
    held_stats = scores.HeldOut.of(model_to_physical(batch.images[held], batch.params, np.array(held)))
    rows, spent = [], 0
    for t0 in sorted({s.t0 for s in plan.settings}):
        grid = ddim.timestep_grid(t0, min(plan.steps, t0), model.num_train_timesteps)
        latents = ddim.ddim_invert(model, images[kept], grid, batch_size=params.batch_size or 16)
        spent += len(kept) * (len(grid) - 1)
        for setting in (s for s in plan.settings if s.t0 == t0):
            samples = _generate(params, model, latents, grid, setting, plan.per_setting)
            spent += plan.per_setting * (len(grid) - 1)
            rows.append(_score(params, batch, samples, images[kept], kept, held_stats, setting))
    record = choose(rows, params)
    augmented = scores.fidelity(scores.augmentation(model_to_physical(batch.images[kept], batch.params,
                                                                      np.array(kept)), plan.per_setting), held_stats)
    best = record["table"][record["best"]]["scores"]
    names = [str(batch.sources[i].get("path", i)) for i in held]
    record.update(enabled=True, held_out=names, held_out_index=held, kept_index=kept, steps=plan.steps,
                  samples_per_setting=plan.per_setting, budget_evaluations=plan.budget, evaluations_spent=spent,
                  screening="unscreened: candidates as drawn (the geometric band needs in-domain reference "
                            "latents, which would double the cost)",
                  augmentation=augmented, verdict=scores.verdict(best, augmented),
                  seconds=round(time.perf_counter() - started, 3))
    log.info("calibration: %d settings, %d network evaluations (budget %d), chose %s", len(rows), spent,
             plan.budget, record["chosen"])
    return record


def _generate(params: PipelineParameters, model: FrozenDiffusionModel, latents: torch.Tensor, grid: list[int],
              setting: Setting, count: int) -> torch.Tensor:
    """``count`` unscreened candidates of ``setting`` denoised; candidate k uses the same seed in every setting."""
    flat = latents.reshape(latents.shape[0], -1).double().cpu()
    prior = fit_prior(flat, "ppca" if setting.prior == "ppca" else "scalar")
    seeds = [child_seed(params.seed, f"calibration/{k}") for k in range(count)]
    low, high = setting.slerp_range
    out = []
    for seed in seeds:
        generator = generator_from_seed(seed)
        if setting.strategy == "prior":
            out.append(prior.sample(1, generator)[0])
            continue
        parent = int(torch.randint(flat.shape[0], (1,), generator=generator).item())
        lam = low + (high - low) * float(torch.rand((1,), generator=generator, dtype=torch.float64).item())
        if setting.strategy == "slerp_ood_ood":
            second = int(torch.randint(flat.shape[0] - 1, (1,), generator=generator).item())
            other = flat[second + (second >= parent)]
        else:
            other = prior.sample(1, generator)[0].double()
        out.append(slerp(flat[parent], other, lam))
    candidates = torch.stack(out).float().reshape(count, *latents.shape[1:])
    return ddim.ddim_generate(model, candidates, grid, eta=params.eta, seeds=seeds,
                              batch_size=params.batch_size or 16)


def _score(params: PipelineParameters, batch: NormalizedBatch, samples: torch.Tensor, kept_images: torch.Tensor,
           kept: list[int], held: scores.HeldOut, setting: Setting) -> dict[str, Any]:
    novelty = scores.novelty(samples.float().cpu(), kept_images, params.novelty_factor)
    nearest = ((samples.reshape(len(samples), 1, -1) - kept_images.reshape(1, len(kept), -1)) ** 2).sum(-1).argmin(1)
    owners = np.array([kept[int(i)] for i in nearest])
    physical = model_to_physical(samples.numpy(), batch.params, owners)
    return {"setting": setting.to_dict(), "scores": {**scores.fidelity(physical, held), **novelty}}


def choose(rows: list[dict[str, Any]], params: PipelineParameters) -> dict[str, Any]:
    """Rank the rows, pick the best without near-copies (fewest near-copies when every row has some)."""
    ranks = scores.rank_sum(rows)
    for row, rank in zip(rows, ranks, strict=True):
        row["rank_sum"] = rank
        row["near_copies"] = row["scores"]["near_copy_fraction"] > 0
    clean = [i for i, row in enumerate(rows) if not row["near_copies"]]
    pool = clean or sorted(range(len(rows)), key=lambda i: rows[i]["scores"]["near_copy_fraction"])[:1]
    best = min(pool, key=lambda i: (ranks[i], i))
    given = params.given()
    setting = rows[best]["setting"]
    chosen = {name: setting[name] for name in CHOOSABLE if name not in given}
    if "strategy" not in given:
        chosen["slerp_range"] = setting["slerp_range"]
    note = None if clean else "every setting made near-copies: the one with the fewest was taken"
    return {"table": rows, "best": best, "chosen": chosen, "given": sorted(given), "note": note,
            "ranking": "sum of ranks over " + ", ".join(scores.FIDELITY) + "; near-copies disqualify"}
