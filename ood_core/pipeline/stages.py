"""The end-to-end run as plain functions, one per stage, that the flows, the CLI and the tests share.

Stages: ingest -> create the run (inputs written) -> invert (+ reconstruction) -> prior (+ in-domain reference,
diagnostics) -> sample (screen, denoise, novelty, stream to the store) -> complete. Nothing is written before
the inputs are known to be usable; from then on the run group says "writing" until every array is whole.

Every stage after ``create_run`` takes only the parameters, the model and a :class:`RunWriter`, reads what the
previous stage left in the store and records itself with ``mark_stage_complete``. Called again on a resumed
writer (:func:`resume_run`), a completed stage reads its outputs back instead of recomputing them, and the
sample stage continues after the last committed sample. That is what lets Prefect tasks run the stages
separately, in other processes, and lets a retried run skip finished work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import zarr
import zarr.errors

from ood_core.errors import OODError
from ood_core.io.fits import (
    FitsImage,
    QuarantinedInput,
    expand_inputs,
    read_fits_batch,
    tile_cutouts,
    unmatched_inputs,
)
from ood_core.method import ddim
from ood_core.method.model import FrozenDiffusionModel, load_model
from ood_core.method.normalization import NormalizationParams, NormalizedBatch, model_to_physical, prepare_batch
from ood_core.method.novelty import NoveltyRule
from ood_core.method.prior import LatentPrior, fit_prior, prior_diagnostics
from ood_core.method.sampler import CRITERION_NAMES, GeometricSampler, SamplerConfig
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import RUN_ATTR, RUNS_GROUP, RunWriter, StoreError, zarr_store
from ood_core.store.provenance import environment_info, utc_now_iso

log = logging.getLogger(__name__)

ProgressHook = Callable[[str, int, int], None]
"""progress(stage, done, total): called during long stages."""

STAGES = ("ingest", "invert", "prior", "sample")
"""Stages recorded with ``mark_stage_complete``, in order."""

REFERENCE_ARRAY = "reference_latents"
"""Extra array of a run group (dims reference, channel, y, x): the in-domain reference latents at t0."""

# Parameters that do not change what a run computes from the same input files (the idempotence key ignores them).
_KEY_IGNORED_PARAMETERS = ("inputs", "store", "batch_size")


class NoUsableInputError(OODError):
    """No input survived validation; carries every file's reason. Nothing was written."""

    def __init__(self, quarantined: list[QuarantinedInput]) -> None:
        lines = "\n".join(f"  {q.path}: {q.reason}" for q in quarantined) or "  (no input files matched)"
        super().__init__(f"no usable input among {len(quarantined)} file(s):\n{lines}")
        self.quarantined = quarantined

    def __reduce__(self) -> tuple[type[NoUsableInputError], tuple[list[QuarantinedInput]]]:
        # Keeps the constructor when pickled (Prefect and Dask move exceptions between processes).
        return (type(self), (self.quarantined,))


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

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (JSON types only) for flows and artifacts."""
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self), default=float))
        return plain


@dataclass
class InversionOutcome:
    """What the invert stage produced (read back from the store when the stage was already complete)."""

    images: torch.Tensor
    latents: torch.Tensor
    psnr_db: torch.Tensor
    t0: int
    steps: int
    grid: list[int]
    summary: dict[str, Any]


@dataclass
class PriorOutcome:
    """The fitted OOD prior, the flattened OOD and reference latents, and the stored diagnostics."""

    prior: LatentPrior
    ood_flat: torch.Tensor
    reference_flat: torch.Tensor
    diagnostics: dict[str, Any]


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 3)


def _record_timing(writer: RunWriter, stage: str, seconds: float) -> None:
    timings = dict(writer.provenance.get("timings") or {})
    timings[stage] = round(seconds, 3)
    writer.update_provenance(timings=timings)


# --------------------------------------------------------------------------------------------- ingest


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


def input_set_key(input_sha256s: Sequence[str], params: PipelineParameters) -> str:
    """Idempotence key of a run: sha256 of the sorted distinct input-file hashes and the parameters.

    File paths, the store and the batch size are left out: the same files with the same settings give the same
    key wherever they lie, so a scheduled flow can tell that it already processed them.
    """
    settings = params.model_dump(mode="json", exclude=set(_KEY_IGNORED_PARAMETERS))
    payload = json.dumps({"inputs": sorted(set(input_sha256s)), "parameters": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _run_records(store_url: str) -> list[dict[str, Any]]:
    """Provenance of every run in the store (empty when there is no store yet)."""
    try:
        root = zarr.open_group(zarr_store(store_url, read_only=True), mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        return []
    if RUNS_GROUP not in root:
        return []
    runs = root[RUNS_GROUP]
    if not isinstance(runs, zarr.Group):
        raise StoreError(f"{store_url}: {RUNS_GROUP} is not a group")
    records = []
    for _, group in runs.groups():
        record = group.attrs.get(RUN_ATTR)
        if isinstance(record, dict):
            records.append(dict(record))
    return sorted(records, key=lambda r: str(r.get("run_id")))


def find_run_by_key(store_url: str, key: str, status: str = "complete") -> str | None:
    """Id of the newest run with this ``input_set_key`` and status, or None."""
    matches = [r for r in _run_records(store_url) if r.get("input_set_key") == key and r.get("status") == status]
    return str(matches[-1]["run_id"]) if matches else None


def find_run_by_flow_run(store_url: str, flow_run_id: str) -> str | None:
    """Id of a "writing" run started by this Prefect flow run (a retried flow run resumes it), or None."""
    for record in reversed(_run_records(store_url)):
        prefect_info = record.get("prefect")
        if (record.get("status") == "writing" and isinstance(prefect_info, dict)
                and prefect_info.get("flow_run_id") == flow_run_id):
            return str(record["run_id"])
    return None


def create_run(
    params: PipelineParameters,
    model: FrozenDiffusionModel,
    ingested: IngestResult,
    *,
    run_id: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    extra_quarantined: Sequence[QuarantinedInput] = (),
) -> RunWriter:
    """Create the run group ("writing"), write the normalized inputs and their mask, record stage "ingest"."""
    batch = ingested.batch
    quarantined = [*extra_quarantined, *ingested.quarantined]
    key = input_set_key([str(s["sha256"]) for s in batch.sources], params)
    provenance: dict[str, Any] = {
        "started": utc_now_iso(),
        "parameters": params.model_dump(),
        "input_set_key": key,
        "environment": environment_info(),
        "model": model.provenance(),
        "normalization": {"mode": params.normalization, "params": [p.to_dict() for p in batch.params]},
        "inputs": batch.sources,
        "quarantined": [q.to_dict() for q in quarantined],
        "timings": {},
        **(extra_provenance or {}),
    }
    units = batch.params[0].units if batch.params else ""
    writer = RunWriter.create(
        params.store,
        run_id=run_id,
        n_inputs=batch.images.shape[0],
        channels=model.channels,
        height=model.resolution,
        width=model.resolution,
        criterion_names=list(CRITERION_NAMES),
        provenance=provenance,
        units=units,
    )
    writer.group["inputs"][...] = batch.images.astype(np.float32)  # type: ignore[index]
    writer.group["input_mask"][...] = batch.mask.astype(bool)  # type: ignore[index]
    writer.mark_stage_complete("ingest")
    return writer


def resume_run(store_url: str, run_id: str) -> RunWriter:
    """Reopen a "writing" run to carry on from its last completed stage."""
    return RunWriter.open(store_url, run_id)


def _stored(writer: RunWriter, name: str) -> npt.NDArray[Any]:
    return np.asarray(writer.group[name][...])  # type: ignore[index]


def _normalization_params(writer: RunWriter) -> list[NormalizationParams]:
    record = writer.provenance.get("normalization") or {}
    return [NormalizationParams.from_dict(p) for p in record.get("params", [])]


def _require(writer: RunWriter, stage: str, needed_by: str) -> None:
    if stage not in writer.completed_stages():
        raise StoreError(f"run {writer.run_id}: stage {stage!r} must complete before {needed_by!r} "
                         f"(completed: {writer.completed_stages()})")


def _stage_progress(progress: ProgressHook | None, stage: str) -> ddim.StepProgress | None:
    if progress is None:
        return None
    hook = progress

    def report(done: int, total: int) -> None:
        hook(stage, done, total)

    return report


# --------------------------------------------------------------------------------------------- invert


def stage_invert(
    params: PipelineParameters, model: FrozenDiffusionModel, writer: RunWriter, progress: ProgressHook | None = None
) -> InversionOutcome:
    """Bandwidth scan (if asked), DDIM inversion to t0 and reconstruction; read back when already complete."""
    _require(writer, "ingest", "invert")
    images = torch.from_numpy(_stored(writer, "inputs"))
    if "invert" in writer.completed_stages():
        record = writer.provenance["inversion"]
        return InversionOutcome(
            images=images,
            latents=torch.from_numpy(_stored(writer, "input_latents")),
            psnr_db=torch.from_numpy(_stored(writer, "reconstruction_psnr")),
            t0=int(record["t0"]), steps=int(record["steps"]), grid=[int(t) for t in record["grid"]],
            summary={k: record[k] for k in ("t0", "steps", "median_psnr_db", "min_psnr_db", "max_psnr_db")},
        )
    started = time.perf_counter()
    t0 = params.t0
    scan_record: dict[str, Any] | None = None
    if params.auto_t0:
        scan = ddim.scan_bandwidth(
            model, images, params.t0_scan, params.steps, threshold_db=params.psnr_threshold_db,
            batch_size=params.batch_size, progress=_stage_progress(progress, "bandwidth_scan"),
        )
        t0, scan_record = scan.chosen_t0, scan.to_dict()
    steps = min(params.steps, t0)
    recon = ddim.invert_and_reconstruct(
        model, images, t0, steps, batch_size=params.batch_size, progress=_stage_progress(progress, "invert")
    )
    writer.write_inputs(
        inputs=images.numpy(),
        input_mask=_stored(writer, "input_mask"),
        input_latents=recon.latents.numpy(),
        reconstructions=recon.reconstructions.numpy(),
        reconstruction_psnr=recon.psnr_db.numpy().astype(np.float32),
    )
    summary = recon.summary()
    writer.update_provenance(
        inversion={"t0": t0, "steps": steps, "eta_inversion": 0.0, "grid": recon.grid,
                   "bandwidth_scan": scan_record, **summary},
    )
    _record_timing(writer, "invert", time.perf_counter() - started)
    writer.mark_stage_complete("invert")
    return InversionOutcome(images, recon.latents, recon.psnr_db.float(), t0, steps, recon.grid, summary)


# --------------------------------------------------------------------------------------------- prior


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _write_reference(writer: RunWriter, latents: torch.Tensor) -> None:
    writer.group.create_array(
        REFERENCE_ARRAY, shape=tuple(latents.shape), dtype="float32", chunks=tuple(latents.shape),
        dimension_names=("reference", "channel", "y", "x"), overwrite=True,
    )[...] = latents.numpy().astype(np.float32)


def stage_prior(
    params: PipelineParameters,
    model: FrozenDiffusionModel,
    writer: RunWriter,
    progress: ProgressHook | None = None,
    inversion: InversionOutcome | None = None,
) -> PriorOutcome:
    """In-domain reference latents, the OOD prior and its diagnostics; reuses stored latents when complete."""
    _require(writer, "invert", "prior")
    inv = inversion or stage_invert(params, model, writer)
    ood_flat = _flat(inv.latents)
    if "prior" in writer.completed_stages():
        reference = torch.from_numpy(_stored(writer, REFERENCE_ARRAY))
        prior = fit_prior(ood_flat, params.prior)  # deterministic and cheap: refit from the stored latents
        return PriorOutcome(prior, ood_flat, _flat(reference), dict(writer.provenance["prior"]["diagnostics"]))
    started = time.perf_counter()
    _, reference = ddim.in_domain_reference_latents(
        model, params.reference_count, inv.t0, inv.steps, seed=params.seed + 1, batch_size=params.batch_size,
        progress=_stage_progress(progress, "reference"),
    )
    _write_reference(writer, reference)
    ref_flat = _flat(reference)
    prior = fit_prior(ood_flat, params.prior)
    diagnostics = prior_diagnostics(ood_flat, prior, reference_latents=ref_flat)
    writer.update_provenance(prior={**prior.to_dict(), "diagnostics": diagnostics,
                                    "reference": {"count": params.reference_count, "seed": params.seed + 1,
                                                  "array": REFERENCE_ARRAY,
                                                  "source": "DDIM samples of the frozen model from N(0, I)"}})
    _record_timing(writer, "prior", time.perf_counter() - started)
    writer.mark_stage_complete("prior")
    stored = writer.provenance["prior"]["diagnostics"]  # the JSON-safe form, as a resumed stage returns it
    return PriorOutcome(prior, ood_flat, ref_flat, dict(stored))


# --------------------------------------------------------------------------------------------- sample


def stage_sample(
    params: PipelineParameters,
    model: FrozenDiffusionModel,
    writer: RunWriter,
    progress: ProgressHook | None = None,
    inversion: InversionOutcome | None = None,
    prior_outcome: PriorOutcome | None = None,
) -> dict[str, Any]:
    """Screen candidates, denoise, reject near-copies and stream samples to the store; returns the sampler report.

    Resumable: the candidate stream is deterministic, so a resumed stage skips every accepted candidate up to
    the last committed sample (by its seed) and denoises only what is missing.
    """
    _require(writer, "prior", "sample")
    if "sample" in writer.completed_stages():
        return dict(writer.provenance["sampler"])
    started = time.perf_counter()
    inv = inversion or stage_invert(params, model, writer)
    pri = prior_outcome or stage_prior(params, model, writer, inversion=inv)
    images = inv.images
    norm_params = _normalization_params(writer)
    config = SamplerConfig(strategy=params.strategy, candidate_budget=params.candidate_budget)
    sampler = GeometricSampler(pri.prior, pri.ood_flat, pri.reference_flat, config, seed=params.seed)
    rule = NoveltyRule(factor=params.novelty_factor)
    written = writer.n_samples
    state = dict(writer.provenance.get("sample_progress") or {})
    near_copies = int(state.get("near_copies_rejected", 0))
    skip_through: int | None = int(_stored(writer, "sample_seed")[-1]) if written else None
    if written:
        log.info("run %s: resuming sampling after %d committed samples", writer.run_id, written)
    stream = sampler.batches(params.samples * 4, params.batch_size) if written < params.samples else iter(())
    for accepted in stream:
        seeds_all = accepted.seeds.numpy()
        start = 0
        if skip_through is not None:
            hits = np.nonzero(seeds_all == skip_through)[0]
            if hits.size == 0:
                continue  # this whole batch was handled before the interruption
            start, skip_through = int(hits[0]) + 1, None
            if start >= len(seeds_all):
                continue
        sel = slice(start, None)
        latents = accepted.latents[sel].reshape(-1, *images.shape[1:]).float()
        seeds = [int(s) for s in seeds_all[sel]]
        samples = ddim.ddim_generate(model, latents, inv.grid, eta=params.eta, seeds=seeds,
                                     batch_size=params.batch_size)
        novelty = rule.evaluate(samples, images)
        keep = ~novelty.is_near_copy
        near_copies += int((~keep).sum())
        keep_idx = torch.nonzero(keep).flatten()[: params.samples - written]
        if keep_idx.numel() == 0:
            continue
        k = keep_idx.numpy()
        parents = accepted.parents[sel].numpy()[k].astype(np.int64)
        phys_parents = parents if len(norm_params) == 1 else np.where(parents >= 0, parents, novelty.index.numpy()[k])
        writer.append_samples(
            samples=samples[keep_idx].numpy(),
            samples_physical=model_to_physical(samples[keep_idx].numpy(), norm_params, phys_parents),
            sample_latents=latents[keep_idx].numpy(),
            sample_seed=seeds_all[sel][k].astype(np.int64),
            sample_parent=parents.astype(np.int32),
            sample_criteria=accepted.criteria[sel].numpy()[k].astype(np.float32),
            sample_nearest_input_distance=novelty.distance.numpy()[k].astype(np.float32),
        )
        written = writer.n_samples
        writer.update_provenance(sample_progress={"committed": written, "near_copies_rejected": near_copies})
        if progress is not None:
            progress("sample", written, params.samples)
        if written >= params.samples:
            break
    report = sampler.report()
    writer.update_provenance(
        sampler={**report.to_dict(), "seed": params.seed, "requested": params.samples, "written": written},
        novelty={**rule.to_dict(), "threshold": float(rule.threshold(images)), "near_copies_rejected": near_copies},
        generation={"eta": params.eta, "steps": inv.steps, "t0": inv.t0,
                    "physical_params_from": "run" if len(norm_params) == 1 else "parent input (nearest if none)"},
    )
    _record_timing(writer, "sample", time.perf_counter() - started)
    writer.mark_stage_complete("sample")
    return dict(writer.provenance["sampler"])


# --------------------------------------------------------------------------------------------- finish


def result_from_record(store_url: str, record: dict[str, Any], n_inputs: int, n_samples: int) -> RunResult:
    """The RunResult of a run from its provenance record."""
    inversion = record.get("inversion") or {}
    sampler = record.get("sampler") or {}
    prior = record.get("prior") or {}
    return RunResult(
        store=store_url,
        run_id=str(record["run_id"]),
        n_inputs=n_inputs,
        n_samples=n_samples,
        quarantined=list(record.get("quarantined") or []),
        median_psnr_db=float(inversion.get("median_psnr_db") or 0.0),
        acceptance_rate=float(sampler.get("acceptance_rate") or 0.0),
        t0=int(inversion.get("t0") or 0),
        timings=dict(record.get("timings") or {}),
        summary={
            "reconstruction": {k: inversion.get(k) for k in ("t0", "steps", "median_psnr_db", "min_psnr_db",
                                                               "max_psnr_db")},
            "prior_diagnostics": prior.get("diagnostics"),
            "sampler": sampler,
        },
    )


def finish_run(writer: RunWriter, timings: dict[str, float] | None = None) -> RunResult:
    """Flip a run whose stages are all complete to "complete" and return its result."""
    for stage in STAGES:
        _require(writer, stage, "complete")
    merged = {**(writer.provenance.get("timings") or {}), **(timings or {})}
    writer.update_provenance(timings=merged, ended=utc_now_iso())
    writer.complete()
    n_inputs = int(writer.group["inputs"].shape[0])  # type: ignore[union-attr]
    return result_from_record(writer.store_url, writer.provenance, n_inputs, writer.n_samples)


def run_stages(
    params: PipelineParameters,
    model: FrozenDiffusionModel,
    writer: RunWriter,
    progress: ProgressHook | None = None,
    timings: dict[str, float] | None = None,
) -> RunResult:
    """Every stage after ``create_run`` on one writer (skipping completed ones), then complete the run.

    On an exception the run is marked "failed" and the exception propagates.
    """
    try:
        inv = stage_invert(params, model, writer, progress)
        pri = stage_prior(params, model, writer, progress, inversion=inv)
        stage_sample(params, model, writer, progress, inversion=inv, prior_outcome=pri)
        return finish_run(writer, timings)
    except BaseException as exc:
        writer.fail(exc)
        raise


def run_pipeline(
    params: PipelineParameters,
    *,
    model: FrozenDiffusionModel | None = None,
    run_id: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    progress: ProgressHook | None = None,
    resume: str | None = None,
) -> RunResult:
    """Run every stage in this process and return the finished run's summary.

    ``resume``: id of a "writing" run in ``params.store`` to continue instead of starting a new one.
    """
    timings: dict[str, float] = {}
    with _timed(timings, "load_model"):
        model = model or load_model(params.model, device=params.device, dtype=params.dtype)
    if resume is not None:
        return run_stages(params, model, resume_run(params.store, resume), progress, timings)
    with _timed(timings, "ingest"):
        ingested = ingest(params, model.resolution, model.channels)
    writer = create_run(params, model, ingested, run_id=run_id, extra_provenance=extra_provenance)
    return run_stages(params, model, writer, progress, timings)
