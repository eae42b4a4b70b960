"""The stages of one run, as plain functions over a :class:`RunWriter`.

create_run (normalized inputs) -> invert (latents at t0, reconstructions) -> prior (in-domain reference
latents, prior diagnostics) -> sample (screen, denoise, novelty, stream samples) -> finish ("complete").

Data flow one way: every stage reads what the previous ones stored in the run group and nothing else, records
its provenance and wall time, and marks itself complete. Called again on a run where it is complete, a stage
does nothing, and the sample stage continues after the last committed sample. That lets Prefect tasks run the
stages in other processes and lets a retried or resumed run skip finished work. The order in which stages run
is not decided here but in :mod:`ood_core.pipeline.sequence`.
"""

from __future__ import annotations

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

from ood_core.errors import QuarantinedInput
from ood_core.method import ddim
from ood_core.method.acceptance import CRITERION_NAMES
from ood_core.method.model import FrozenDiffusionModel, auto_batch_size
from ood_core.method.normalization import NormalizationParams, model_to_physical
from ood_core.method.precision import guarded_reconstruction
from ood_core.method.prior import LatentPrior, PriorKind, fit_prior, flatten_latents, prior_diagnostics
from ood_core.method.seeds import child_seed
from ood_core.pipeline import sample_stage
from ood_core.pipeline.config import DEFAULT_PRIOR, DEFAULT_T0, PipelineParameters, settled
from ood_core.pipeline.ingest import IngestResult, input_identity, input_set_key
from ood_core.pipeline.sample_stage import ProgressHook
from ood_core.store.errors import StoreError
from ood_core.store.provenance import environment_info, utc_now_iso
from ood_core.store.regions import RegionWriter
from ood_core.store.writer import RunWriter

log = logging.getLogger(__name__)

ACCEPTED_PER_SAMPLE = sample_stage.ACCEPTED_PER_SAMPLE


@contextmanager
def _stage(writer: RunWriter, name: str) -> Iterator[None]:
    """Time a stage into the provenance ``timings`` and mark it complete when its body returns."""
    started = time.perf_counter()
    yield
    writer.record_timing(name, time.perf_counter() - started)
    writer.mark_stage_complete(name)


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


def batch_size(params: PipelineParameters, model: FrozenDiffusionModel, writer: RunWriter) -> int:
    """Images per network evaluation for this run: the parameter, or chosen once (free GPU memory on CUDA, 16
    on the CPU) and recorded in provenance ``compute``, so every stage and a resumed stage use the same."""
    record = writer.provenance.get("compute")
    if isinstance(record, dict) and isinstance(record.get("batch_size"), int):
        model.reserve_batch(int(record["batch_size"]))
        return int(record["batch_size"])
    chosen = params.batch_size or auto_batch_size(model)
    model.reserve_batch(chosen)  # a compiled network is compiled once, for this batch size
    source = "parameter" if params.batch_size else ("free GPU memory" if model.device.type == "cuda" else "CPU default")
    writer.update_provenance(compute={"device": str(model.device), "batch_size": chosen, "batch_size_from": source,
                                      "channels_last": model.channels_last, "compiled": model.compiled,
                                      "torch_threads": torch.get_num_threads()})
    return chosen


def _tensor(writer: RunWriter, name: str) -> torch.Tensor:
    return torch.from_numpy(writer.read(name))


# --------------------------------------------------------------------------------------------- create


def create_run(
    params: PipelineParameters,
    model: FrozenDiffusionModel,
    ingested: IngestResult,
    *,
    run_id: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    extra_quarantined: Sequence[QuarantinedInput] = (),
    ingest_seconds: float | None = None,
) -> RunWriter:
    """Create the run group ("writing"), write the normalized inputs and their mask, record stage "ingest"."""
    batch = ingested.batch
    provenance: dict[str, Any] = {
        "started": utc_now_iso(),
        "parameters": params.model_dump(),
        "input_set_key": input_set_key([input_identity(str(s["sha256"]), s.get("plane")) for s in batch.sources],
                                       params),
        "environment": environment_info(),
        "model": model.provenance(),
        "bands": ingested.bands,
        "normalization": {"mode": params.normalization, "params": [p.to_dict() for p in batch.params],
                          "per_band": batch.per_band, "resampling": [r.record() for r in batch.resampling],
                          "counts_domain": batch.counts.record()},
        "inputs": batch.sources,
        "frames": ingested.frames,
        "input_warnings": ingested.warnings,
        "quarantined": [q.to_dict() for q in [*extra_quarantined, *ingested.quarantined]],
        "timings": {} if ingest_seconds is None else {"ingest": round(ingest_seconds, 3)},
        **(extra_provenance or {}),
    }
    writer = RunWriter.create(
        params.store, run_id=run_id, n_inputs=batch.images.shape[0], channels=model.channels,
        height=model.resolution, width=model.resolution, criterion_names=list(CRITERION_NAMES),
        provenance=provenance, units=batch.params[0].units if batch.params else "",
        expected_samples=params.samples, physical_bands=batch.per_band,
    )
    writer.write_normalized_inputs(batch.images.astype(np.float32), batch.mask.astype(bool))
    writer.mark_stage_complete("ingest")
    return writer


# --------------------------------------------------------------------------------------------- invert


def stage_invert(
    params: PipelineParameters, model: FrozenDiffusionModel, writer: RunWriter, progress: ProgressHook | None = None
) -> dict[str, Any]:
    """Bandwidth scan (if asked), DDIM inversion of the stored inputs to t0, reconstruction and its PSNR."""
    _require(writer, "ingest", "invert")
    if "invert" in writer.completed_stages():
        return dict(writer.provenance["inversion"])
    with _stage(writer, "invert"):
        params = settled(params, writer.provenance)
        images = _tensor(writer, "inputs")
        batch = batch_size(params, model, writer)
        t0, scan_record = int(params.t0 or DEFAULT_T0), None
        if params.auto_t0:
            scan = ddim.scan_bandwidth(
                model, images, params.t0_scan, params.steps, threshold_db=params.psnr_threshold_db,
                batch_size=batch, progress=_stage_progress(progress, "bandwidth_scan"),
            )
            t0, scan_record = scan.chosen_t0, scan.to_dict()
        steps = min(params.steps, t0)
        # reduced precision only if it reconstructs the inputs as well as float32 (the later stages load the
        # model in the dtype recorded here: ood_core.pipeline.sequence.stage_model)
        _, recon, precision = guarded_reconstruction(
            model, images, t0, steps, batch_size=batch, progress=_stage_progress(progress, "invert")
        )
        if precision.fell_back:
            log.warning("run %s: %s reconstructs %.2f dB below float32 (median); the run uses float32",
                        writer.run_id, precision.requested,
                        precision.median_psnr_db["float32"] - precision.median_psnr_db[precision.requested])
        writer.write_inversion(recon.latents.numpy(), recon.reconstructions.numpy(),
                               recon.psnr_db.numpy().astype(np.float32))
        writer.update_provenance(inversion={"t0": t0, "steps": steps, "eta_inversion": 0.0, "grid": recon.grid,
                                            "bandwidth_scan": scan_record, **recon.summary()},
                                 precision=precision.to_dict())
    return dict(writer.provenance["inversion"])


# --------------------------------------------------------------------------------------------- prior


def stored_prior(writer: RunWriter, kind: PriorKind) -> tuple[LatentPrior, torch.Tensor, torch.Tensor]:
    """The OOD prior and the flattened OOD and reference latents of a run whose prior stage is complete.

    The prior is a deterministic function of the stored latents, refitted in milliseconds, so only its
    diagnostics are stored, not its D-sized parameters.
    """
    _require(writer, "prior", "reading the prior")
    return sample_stage.prior_from(writer, kind)


def stage_prior(
    params: PipelineParameters, model: FrozenDiffusionModel, writer: RunWriter, progress: ProgressHook | None = None
) -> dict[str, Any]:
    """In-domain reference latents at t0 (the model's own samples), the OOD prior fit and its diagnostics."""
    _require(writer, "invert", "prior")
    if "prior" in writer.completed_stages():
        return dict(writer.provenance["prior"]["diagnostics"])
    with _stage(writer, "prior"):
        inversion = writer.provenance["inversion"]
        seed = child_seed(params.seed, "reference")
        _, reference = ddim.in_domain_reference_latents(
            model, params.reference_count, int(inversion["t0"]), int(inversion["steps"]), seed=seed,
            batch_size=batch_size(params, model, writer), progress=_stage_progress(progress, "reference"),
        )
        writer.write_reference_latents(reference.numpy())
        if progress is not None:
            progress("prior_fit", 0, 2)
        ood_flat = flatten_latents(_tensor(writer, "input_latents"))
        prior = fit_prior(ood_flat, settled(params, writer.provenance).prior or DEFAULT_PRIOR)
        if progress is not None:
            progress("prior_fit", 1, 2)
        diagnostics = prior_diagnostics(ood_flat, prior, reference_latents=flatten_latents(reference))
        if progress is not None:
            progress("prior_fit", 2, 2)
        writer.update_provenance(prior={
            **prior.to_dict(), "diagnostics": diagnostics,
            "reference": {"count": params.reference_count, "seed": seed, "seed_stream": "reference",
                          "array": "reference_latents", "source": "DDIM samples of the frozen model from N(0, I)"},
        })
    return dict(writer.provenance["prior"]["diagnostics"])


# --------------------------------------------------------------------------------------------- sample


def stage_sample(
    params: PipelineParameters, model: FrozenDiffusionModel, writer: RunWriter, progress: ProgressHook | None = None
) -> dict[str, Any]:
    """Fill the run's sample slots (screen, denoise, drop near-copies) and stream them to the store; returns the
    sampler record (:mod:`ood_core.pipeline.sample_stage` says how slots, blocks and shards work).

    One shard: here, through the run's writer, resuming after the last committed block. Several: here, one after
    another (``run_in_process``); the pipeline flow runs :func:`sample_stage.run_shard` as Dask tasks instead and
    calls :func:`finish_sample` when they are done.
    """
    _require(writer, "prior", "sample")
    if "sample" in writer.completed_stages():
        return dict(writer.provenance["sampler"])
    batch_size(params, model, writer)
    if params.shards > 1 or writer.sample_regions:
        sample_stage.prepare_shards(params, writer)
        for index in range(len(writer.sample_regions)):
            sample_stage.run_shard(params, model, RegionWriter(params.store, writer.run_id, index), progress)
        return finish_sample(params, model, writer)
    with _stage(writer, "sample"):
        sample_stage.match_recorded_threads(writer, model)
        ctx = sample_stage.SampleContext(params, writer, model)
        if writer.n_samples:
            log.info("run %s: resuming sampling after %d committed samples", writer.run_id, writer.n_samples)
        if progress is not None:
            progress("sample", writer.n_samples, params.samples)
        counters = sample_stage.run_blocks(ctx, model, sample_stage.appender_of(writer), range(ctx.plan.blocks),
                                       writer.sample_checkpoint, progress, writer.n_samples)
        writer.flush()
        _record_sampling(params, ctx, writer, counters, shards=1)
    return dict(writer.provenance["sampler"])


def finish_sample(params: PipelineParameters, model: FrozenDiffusionModel, writer: RunWriter) -> dict[str, Any]:
    """After every shard is done: move their samples together, record the sampler provenance and the stage's wall
    time (from the shards' start), mark the stage complete; returns the sampler record."""
    if "sample" in writer.completed_stages():
        return dict(writer.provenance["sampler"])
    shards = len(writer.sample_regions)
    counters = sample_stage.merge_shards(writer)
    _record_sampling(params, sample_stage.SampleContext(params, writer, model), writer, counters, shards=shards)
    started = (writer.provenance.get("sharding") or {}).get("started_unix")
    if isinstance(started, (int, float)):
        writer.record_timing("sample", time.time() - started)
    writer.mark_stage_complete("sample")
    return dict(writer.provenance["sampler"])


def _noise_origin(params: PipelineParameters, provenance: dict[str, Any]) -> str:
    """Where the run's noise setting came from: given, the calibration (provenance ``settings``), or the default."""
    if params.noise is not None:
        return "given"
    origin = ((provenance.get("settings") or {}).get("from") or {}).get("noise")
    return str(origin) if origin else "default"


def _record_sampling(params: PipelineParameters, ctx: sample_stage.SampleContext, writer: RunWriter,
                     counters: sample_stage.Counters, shards: int) -> None:
    if writer.n_samples < params.samples:
        log.warning("run %s: %d of %d samples (%d slots found no candidate within their budget or made only "
                    "near-copies)", writer.run_id, writer.n_samples, params.samples, counters.failed_slots)
    writer.update_provenance(
        sampler=sample_stage.sampler_record(params, ctx, counters, writer.n_samples, shards),
        novelty={**ctx.rule.to_dict(), "threshold": float(ctx.rule.threshold(ctx.images)),
                 "near_copies_rejected": counters.near_copies},
        noise=ctx.noise_record(_noise_origin(params, writer.provenance)),
        generation={"eta": params.eta, "steps": ctx.steps, "t0": ctx.t0,
                    "physical_params_from": "run" if len(ctx.norm_params) == 1 else "parent input (nearest if none)"},
    )


# --------------------------------------------------------------------------------------------- finish


@dataclass
class RunResult:
    """What a finished run reports: where it is and the headline numbers."""

    store: str
    run_id: str
    n_inputs: int
    n_samples: int
    quarantined: list[dict[str, str]]
    """The input files set aside, as provenance records them (file and reason)."""
    median_psnr_db: float
    acceptance_rate: float
    t0: int
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (JSON types only) for flows and artifacts."""
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self), default=float))
        return plain

    @classmethod
    def from_record(cls, store_url: str, record: dict[str, Any], n_inputs: int, n_samples: int) -> RunResult:
        """The result of a run from its provenance record."""
        inversion = record.get("inversion") or {}
        sampler = record.get("sampler") or {}
        return cls(
            store=store_url, run_id=str(record["run_id"]), n_inputs=n_inputs, n_samples=n_samples,
            quarantined=list(record.get("quarantined") or []),
            median_psnr_db=float(inversion.get("median_psnr_db") or 0.0),
            acceptance_rate=float(sampler.get("acceptance_rate") or 0.0),
            t0=int(inversion.get("t0") or 0),
            timings=dict(record.get("timings") or {}),
            summary={
                "reconstruction": {k: inversion.get(k) for k in RECONSTRUCTION_SUMMARY_KEYS},
                "prior_diagnostics": (record.get("prior") or {}).get("diagnostics"),
                "sampler": sampler,
                "settings": record.get("settings"),
                "resampling": (record.get("normalization") or {}).get("resampling"),
                "frames": record.get("frames") or [],
                "input_warnings": record.get("input_warnings") or [],
                "calibration": record.get("calibration"),
                "realism": record.get("realism"),
            },
        )


RECONSTRUCTION_SUMMARY_KEYS = ("t0", "steps", "median_psnr_db", "min_psnr_db", "max_psnr_db")


Judge = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]], dict[str, Any]]
"""(physical shots, physical samples) -> a JSON-ready record: how the end of a run judges its samples
(``ood_core.evaluation.realism.realism_record``, given by the layer that runs the stages)."""
JUDGED_SAMPLES = 64
"""Samples read back for the judge (the first ones)."""


def judge_samples(writer: RunWriter, judge: Judge) -> dict[str, Any]:
    """The judge's record of a run's first JUDGED_SAMPLES samples against its shots, both in physical units."""
    record = writer.provenance
    if (record.get("normalization") or {}).get("per_band"):
        return {"distinguishable": None, "line": "not tested: band-group runs (the test is single-band)"}
    params = [NormalizationParams.from_dict(p) for p in record["normalization"]["params"]]
    inputs = writer.read("inputs")
    shots = model_to_physical(inputs, params, np.arange(inputs.shape[0]))
    samples = np.asarray(writer.read("samples_physical", limit=JUDGED_SAMPLES), dtype=np.float32)
    return judge(shots, samples)


def finish_run(writer: RunWriter, judge: Judge | None = None) -> RunResult:
    """Flip a run whose stages are all complete to "complete" and return its result; with ``judge``, its samples
    are judged against its shots first (provenance ``realism``)."""
    for stage in STAGES:
        _require(writer, stage, "complete")
    if judge is not None:
        started = time.perf_counter()
        writer.update_provenance(realism=judge_samples(writer, judge))
        writer.record_timing("judge", time.perf_counter() - started)
    writer.update_provenance(ended=utc_now_iso())
    writer.complete()
    return RunResult.from_record(writer.store_url, writer.provenance, writer.n_inputs, writer.n_samples)


STAGES = ("ingest", "invert", "prior", "sample")
"""Stages a run records with ``mark_stage_complete``, in order ("ingest" is done by :func:`create_run`)."""

STAGE_FUNCTIONS: dict[str, Callable[[PipelineParameters, FrozenDiffusionModel, RunWriter, ProgressHook | None],
                                    dict[str, Any]]] = {
    "invert": stage_invert,
    "prior": stage_prior,
    "sample": stage_sample,
}
"""The network stages after create_run, by name."""
