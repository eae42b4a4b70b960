"""The end-to-end run as plain functions, one per stage, that the flows, the CLI and the tests share.

Stages: ingest -> normalize -> invert (+ reconstruction) -> prior (+ in-domain reference, diagnostics)
-> sample (screen, denoise, novelty, stream to the store) -> complete. Nothing is written before the
inputs are known to be usable; from then on the run group says "writing" until every array is whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ood_core import ddim
from ood_core.config import PipelineParameters
from ood_core.errors import OODError
from ood_core.fits_io import (
    FitsImage,
    QuarantinedInput,
    expand_inputs,
    read_fits_batch,
    tile_cutouts,
    unmatched_inputs,
)
from ood_core.model import FrozenDiffusionModel, load_model
from ood_core.normalization import NormalizedBatch, channels_to_band, denormalize, prepare_batch
from ood_core.novelty import NoveltyRule
from ood_core.prior import fit_prior, prior_diagnostics
from ood_core.provenance import environment_info, utc_now_iso
from ood_core.sampler import CRITERION_NAMES, GeometricSampler, SamplerConfig
from ood_core.store import RunWriter

log = logging.getLogger(__name__)

ProgressHook = Callable[[str, int, int], None]
"""progress(stage, done, total): called during long stages."""


class NoUsableInputError(OODError):
    """No input survived validation; carries every file's reason. Nothing was written."""

    def __init__(self, quarantined: list[QuarantinedInput]) -> None:
        lines = "\n".join(f"  {q.path}: {q.reason}" for q in quarantined) or "  (no input files matched)"
        super().__init__(f"no usable input among {len(quarantined)} file(s):\n{lines}")
        self.quarantined = quarantined


@dataclass
class IngestResult:
    images: list[FitsImage]
    quarantined: list[QuarantinedInput]
    batch: NormalizedBatch


@dataclass
class RunResult:
    """What a finished run reports: where it is and the headline numbers."""

    store: str
    run_id: str
    n_inputs: int
    n_samples: int
    quarantined: list[dict[str, str]]
    median_psnr_db: float
    acceptance_rate: float
    t0: int
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 3)


def ingest(params: PipelineParameters, resolution: int, channels: int) -> IngestResult:
    """Read, validate, tile and normalize the inputs; raise NoUsableInputError when none is usable."""
    paths = expand_inputs(params.inputs)
    quarantined: list[QuarantinedInput] = list(unmatched_inputs(params.inputs))
    min_size = max(params.tile or 0, resolution)
    images, bad = read_fits_batch(paths, hdu=params.hdu, min_size=min_size)
    quarantined.extend(bad)
    if params.tile:
        images = [tile for image in images for tile in tile_cutouts(image, params.tile)]
    if not images:
        raise NoUsableInputError(quarantined)
    batch = prepare_batch(
        images, resolution=resolution, channels=channels, mode=params.normalization, stretch=params.stretch
    )
    return IngestResult(images, quarantined, batch)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _physical(samples: torch.Tensor, parents: npt.NDArray[np.int64], batch: NormalizedBatch) -> npt.NDArray[np.float32]:
    """Map model-space samples to the inputs' physical units (per-run params, or each parent's)."""
    band = channels_to_band(samples.numpy())
    if len(batch.params) == 1:
        return denormalize(band, batch.params[0]).astype(np.float32)
    out = np.empty(band.shape, dtype=np.float32)
    for i, parent in enumerate(parents):
        out[i] = denormalize(band[i], batch.params[int(parent)])
    return out


def run_pipeline(
    params: PipelineParameters,
    *,
    model: FrozenDiffusionModel | None = None,
    run_id: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    progress: ProgressHook | None = None,
) -> RunResult:
    """Run every stage in this process and return the finished run's summary."""
    timings: dict[str, float] = {}
    started = utc_now_iso()
    with _timed(timings, "load_model"):
        model = model or load_model(params.model, device=params.device, dtype=params.dtype)
    with _timed(timings, "ingest"):
        ingested = ingest(params, model.resolution, model.channels)
    batch = ingested.batch
    images = torch.from_numpy(batch.images)
    n_inputs = images.shape[0]
    provenance: dict[str, Any] = {
        "started": started,
        "parameters": params.model_dump(),
        "environment": environment_info(),
        "model": model.provenance(),
        "normalization": {
            "mode": params.normalization,
            "params": [p.to_dict() for p in batch.params],
        },
        "inputs": batch.sources,
        "quarantined": [q.to_dict() for q in ingested.quarantined],
        **(extra_provenance or {}),
    }
    units = batch.params[0].units if batch.params else ""
    writer = RunWriter.create(
        params.store,
        run_id=run_id,
        n_inputs=n_inputs,
        channels=model.channels,
        height=model.resolution,
        width=model.resolution,
        criterion_names=list(CRITERION_NAMES),
        provenance=provenance,
        units=units,
    )
    try:
        result = _run_stages(params, model, writer, batch, images, timings, progress)
        result.quarantined = provenance["quarantined"]
        return result
    except BaseException as exc:
        writer.update_provenance(timings=dict(timings))
        writer.fail(exc)
        raise


def _stage_progress(progress: ProgressHook | None, stage: str) -> ddim.StepProgress | None:
    if progress is None:
        return None
    hook = progress

    def report(done: int, total: int) -> None:
        hook(stage, done, total)

    return report


def _run_stages(
    params: PipelineParameters,
    model: FrozenDiffusionModel,
    writer: RunWriter,
    batch: NormalizedBatch,
    images: torch.Tensor,
    timings: dict[str, float],
    progress: ProgressHook | None,
) -> RunResult:
    t0 = params.t0
    scan_record: dict[str, Any] | None = None
    if params.auto_t0:
        with _timed(timings, "bandwidth_scan"):
            scan = ddim.scan_bandwidth(
                model, images, params.t0_scan, params.steps, threshold_db=params.psnr_threshold_db,
                batch_size=params.batch_size, progress=_stage_progress(progress, "bandwidth_scan"),
            )
        t0, scan_record = scan.chosen_t0, scan.to_dict()
    steps = min(params.steps, t0)
    with _timed(timings, "invert"):
        recon = ddim.invert_and_reconstruct(
            model, images, t0, steps, batch_size=params.batch_size, progress=_stage_progress(progress, "invert")
        )
    writer.write_inputs(
        inputs=batch.images,
        input_mask=batch.mask,
        input_latents=recon.latents.numpy(),
        reconstructions=recon.reconstructions.numpy(),
        reconstruction_psnr=recon.psnr_db.numpy().astype(np.float32),
    )
    writer.update_provenance(
        inversion={"t0": t0, "steps": steps, "eta_inversion": 0.0, "grid": recon.grid,
                   "bandwidth_scan": scan_record, **recon.summary()},
    )
    writer.mark_stage_complete("invert")

    with _timed(timings, "reference"):
        _, reference = ddim.in_domain_reference_latents(
            model, params.reference_count, t0, steps, seed=params.seed + 1, batch_size=params.batch_size,
            progress=_stage_progress(progress, "reference"),
        )
    with _timed(timings, "prior"):
        ood_flat, ref_flat = _flat(recon.latents), _flat(reference)
        prior = fit_prior(ood_flat, params.prior)
        diagnostics = prior_diagnostics(ood_flat, prior, reference_latents=ref_flat)
    writer.update_provenance(prior={**prior.to_dict(), "diagnostics": diagnostics,
                                    "reference": {"count": params.reference_count, "seed": params.seed + 1,
                                                  "source": "DDIM samples of the frozen model from N(0, I)"}})
    writer.mark_stage_complete("prior")

    config = SamplerConfig(strategy=params.strategy, candidate_budget=params.candidate_budget)
    sampler = GeometricSampler(prior, ood_flat, ref_flat, config, seed=params.seed)
    rule = NoveltyRule(factor=params.novelty_factor)
    grid = recon.grid
    written = near_copies = 0
    with _timed(timings, "sample"):
        for accepted in sampler.batches(params.samples * 4, params.batch_size):
            latents = accepted.latents.reshape(-1, *images.shape[1:]).float()
            seeds = [int(s) for s in accepted.seeds]
            samples = ddim.ddim_generate(model, latents, grid, eta=params.eta, seeds=seeds,
                                         batch_size=params.batch_size)
            novelty = rule.evaluate(samples, images)
            keep = ~novelty.is_near_copy
            near_copies += int((~keep).sum())
            keep_idx = torch.nonzero(keep).flatten()[: params.samples - written]
            if keep_idx.numel() == 0:
                continue
            parents = accepted.parents.numpy()[keep_idx.numpy()].astype(np.int64)
            phys_parents = parents if len(batch.params) == 1 else np.where(
                parents >= 0, parents, novelty.index.numpy()[keep_idx.numpy()])
            writer.append_samples(
                samples=samples[keep_idx].numpy(),
                samples_physical=_physical(samples[keep_idx], phys_parents, batch),
                sample_latents=latents[keep_idx].numpy(),
                sample_seed=accepted.seeds.numpy()[keep_idx.numpy()].astype(np.int64),
                sample_parent=parents.astype(np.int32),
                sample_criteria=accepted.criteria.numpy()[keep_idx.numpy()].astype(np.float32),
                sample_nearest_input_distance=novelty.distance.numpy()[keep_idx.numpy()].astype(np.float32),
            )
            written += int(keep_idx.numel())
            if progress is not None:
                progress("sample", written, params.samples)
            if written >= params.samples:
                break
    report = sampler.report()
    writer.update_provenance(
        sampler={**report.to_dict(), "seed": params.seed, "requested": params.samples, "written": written},
        novelty={**rule.to_dict(), "threshold": float(rule.threshold(images)), "near_copies_rejected": near_copies},
        generation={"eta": params.eta, "steps": steps, "t0": t0,
                    "physical_params_from": "run" if len(batch.params) == 1 else "parent input (nearest if none)"},
        timings=dict(timings),
        ended=utc_now_iso(),
    )
    writer.mark_stage_complete("sample")
    writer.complete()
    summary = recon.summary()
    return RunResult(
        store=params.store,
        run_id=writer.run_id,
        n_inputs=images.shape[0],
        n_samples=written,
        quarantined=[],
        median_psnr_db=float(summary["median_psnr_db"]),
        acceptance_rate=float(report.acceptance_rate),
        t0=t0,
        timings=dict(timings),
        summary={"reconstruction": summary, "prior_diagnostics": diagnostics, "sampler": report.to_dict()},
    )
