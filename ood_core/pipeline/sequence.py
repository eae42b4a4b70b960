"""The one stage sequence of a run. The Prefect flow, the CLI (through the flow), the benchmarks and the tests
all go through :func:`run_stages`; only *how* a stage executes differs (a Prefect task, or a plain call).

    prepare_run (ingest + create_run) -> run_stages: invert -> prior -> sample -> finish

A stage that raises marks the run "failed" (with the error) here, in one place, and the error propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ood_core.errors import ConfigurationError
from ood_core.method.model import FrozenDiffusionModel, cached_model
from ood_core.pipeline import sample_stage
from ood_core.pipeline.config import CHOOSABLE, DEFAULT_SLERP_RANGE, PipelineParameters, settled
from ood_core.pipeline.failures import classify_failure
from ood_core.pipeline.ingest import IngestResult, ingest
from ood_core.pipeline.sample_stage import ProgressHook, RunSource
from ood_core.pipeline.stages import (
    STAGE_FUNCTIONS,
    Judge,
    RunResult,
    create_run,
    finish_run,
    finish_sample,
)
from ood_core.store.errors import StoreError
from ood_core.store.opening import check_store_location
from ood_core.store.regions import RegionWriter
from ood_core.store.writer import RunWriter

log = logging.getLogger(__name__)

NETWORK_STAGES = ("invert", "prior", "sample")
"""Stages run by :func:`run_stages` before ``finish``, in this order."""

StageExecutor = Callable[[str, PipelineParameters, str], dict[str, Any]]
"""execute(stage, params, run_id) -> stage report; ``stage`` is one of NETWORK_STAGES or "finish"
(which must return the RunResult as a dict)."""


def run_stages(params: PipelineParameters, run_id: str, execute: StageExecutor) -> dict[str, Any]:
    """invert -> prior -> sample -> finish on the run ``run_id``, each through ``execute``; returns the result.

    Stages already complete in the store are skipped by the stages themselves, so this also resumes a run.
    On an exception the run is marked "failed" and the exception propagates.
    """
    try:
        for stage in NETWORK_STAGES:
            execute(stage, params, run_id)
        return execute("finish", params, run_id)
    except BaseException as exc:
        mark_failed(params.store, run_id, exc)
        raise


def mark_failed(store: str, run_id: str, error: BaseException) -> None:
    """Mark a run "failed" with its error and whether it can be resumed (:mod:`.failures`); a run already
    complete or failed, or held by another writer (this one lost its lease), is left alone."""
    try:
        writer = RunWriter.open(store, run_id)
    except StoreError:  # not "writing" any more, or not ours to write: nothing to mark
        return
    failure = classify_failure(error)
    writer.fail(error, resumable=failure.resumable, kind=failure.kind)
    if failure.resumable:
        log.warning("run %s failed (%s), resumable: ood run --resume %s --store %s", run_id, failure.kind, run_id,
                    store)


def resume_run(store: str, run_id: str, how: str = "resumed") -> None:
    """Take up a stale or resumably failed run in this process (claims its lease: RunLeasedError while another
    writer holds it; StoreError, with the reason, for a run that cannot be resumed); its stages go on from what
    it committed."""
    RunWriter.resume(store, run_id, how=how)


def execute_stage(
    stage: str, params: PipelineParameters, run_id: str, progress: ProgressHook | None = None, *,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Run one stage in this process (the model is loaded once per process); ``judge``: how "finish" judges the
    samples (the pipeline flow gives ``ood_core.evaluation.realism.realism_record``)."""
    writer = RunWriter.open(params.store, run_id)
    if stage == "finish":
        return finish_run(writer, judge).to_dict()
    return STAGE_FUNCTIONS[stage](params, stage_model(params, writer), writer, progress)


def stage_model(params: PipelineParameters, writer: RunSource) -> FrozenDiffusionModel:
    """The network a stage of this run uses: the parameters' dtype, or float32 once the invert stage recorded that
    reduced precision failed the reconstruction check (provenance ``precision``)."""
    precision = writer.provenance.get("precision")
    dtype: str = params.dtype
    if isinstance(precision, dict) and precision.get("fell_back"):
        dtype = str(precision["used"])
    return cached_model(params.model, params.device, dtype, compile=params.compile)


def prepare_sample_shards(params: PipelineParameters, run_id: str, writer_id: str | None = None) -> int:
    """Give a run's sample arrays to its shards (once; a completed sample stage has none); returns their number.
    ``writer_id``: the run's writer this process works for (a Dask worker), None in the writer's own process."""
    writer = RunWriter.open(params.store, run_id, for_writer=writer_id)
    if "sample" in writer.completed_stages():
        return 0
    if "prior" not in writer.completed_stages():
        raise StoreError(f"run {run_id}: stage 'prior' must complete before 'sample'")
    return len(sample_stage.prepare_shards(params, writer))


def execute_shard(
    params: PipelineParameters, run_id: str, index: int, progress: ProgressHook | None = None,
    writer_id: str | None = None,
) -> dict[str, Any]:
    """One shard of a sharded sample stage in this process (a Dask task of the pipeline flow), from its last
    committed block, for the run's writer ``writer_id`` (None: this process is the writer)."""
    shard = RegionWriter(params.store, run_id, index, writer_id=writer_id)
    return sample_stage.run_shard(params, stage_model(params, shard), shard, progress)


def finish_sample_shards(params: PipelineParameters, run_id: str, writer_id: str | None = None) -> dict[str, Any]:
    """Merge the shards of a run's sample stage (every one must be done) and complete the stage."""
    writer = RunWriter.open(params.store, run_id, for_writer=writer_id)
    return finish_sample(params, stage_model(params, writer), writer)


def _same_model(named: str, source: str) -> bool:
    """Whether two model references (folders or hub ids) name the same model."""
    if Path(named).exists() or Path(source).exists():
        return Path(named).resolve() == Path(source).resolve()
    return named == source


SettingsChooser = Callable[[PipelineParameters, FrozenDiffusionModel, IngestResult], dict[str, Any]]
"""choose(params, model, ingested) -> the calibration record; its ``chosen`` entry ({t0, strategy, prior,
slerp_range}) fills the settings the user left empty (``ood_core.calibration.calibrate`` is one)."""


def settings_record(params: PipelineParameters, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Provenance ``settings``: the run's t0, strategy, prior and slerp range, and where each came from."""
    chosen = (calibration or {}).get("chosen") or {}
    given = params.given()
    resolved = settled(params, {"settings": chosen})
    record: dict[str, Any] = {name: getattr(resolved, name) for name in CHOOSABLE}
    record["slerp_range"] = list(chosen.get("slerp_range") or DEFAULT_SLERP_RANGE)
    record["from"] = {name: "given" if name in given else ("calibration" if name in chosen else "default")
                      for name in (*CHOOSABLE, "slerp_range")}
    if "t0" in given and params.auto_t0:
        record["t0"], record["from"]["t0"] = None, "auto_t0 scan"
    return record


def prepare_run(
    params: PipelineParameters,
    model: FrozenDiffusionModel,
    *,
    run_id: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    choose: SettingsChooser | None = None,
) -> str:
    """Ingest the inputs, calibrate the settings left empty (``choose``), create the "writing" run with them,
    return its id (NoUsableInputError: nothing written).

    ``model`` must be the model ``params.model`` names: the later stages load that one.
    """
    if not _same_model(params.model, model.source):
        raise ConfigurationError(f"prepare_run was given the model {model.source} but the parameters name "
                                 f"{params.model}, which the later stages load: pass the model the parameters name")
    check_store_location(params.store)  # a store that cannot be written (no package for its protocol) stops here
    started = time.perf_counter()
    ingested = ingest(params, model.resolution, model.channels)
    ingest_seconds = time.perf_counter() - started
    calibration = choose(params, model, ingested) if choose is not None else None
    extra = {**(extra_provenance or {}), "settings": settings_record(params, calibration)}
    if calibration is not None:
        extra["calibration"] = calibration
        extra["timings"] = {"ingest": round(ingest_seconds, 3),
                            "calibrate": round(time.perf_counter() - started - ingest_seconds, 3)}
    writer = create_run(params, model, ingested, run_id=run_id, extra_provenance=extra, ingest_seconds=ingest_seconds)
    log.info("created run %s in %s with %d inputs", writer.run_id, params.store, writer.n_inputs)
    return writer.run_id


def run_in_process(
    params: PipelineParameters,
    *,
    resume: str | None = None,
    progress: ProgressHook | None = None,
    choose: SettingsChooser | None = None,
    judge: Judge | None = None,
) -> RunResult:
    """A whole run in this process, without Prefect (benchmarks, notebooks): prepare, then :func:`run_stages`.

    ``resume``: id of a stale or resumably failed run in ``params.store`` to continue instead of starting a new one;
    ``choose``: the calibration (none here by default: the pipeline flow passes ``ood_core.calibration``'s);
    ``judge``: how the end of the run judges its samples (none by default; the flow passes
    ``ood_core.evaluation.realism.realism_record``).
    """
    model = cached_model(params.model, params.device, params.dtype, compile=params.compile)
    if resume:
        resume_run(params.store, resume)
    run_id = resume or prepare_run(params, model, choose=choose)

    def execute(stage: str, p: PipelineParameters, rid: str) -> dict[str, Any]:
        return execute_stage(stage, p, rid, progress, judge=judge)

    result = run_stages(params, run_id, execute)
    return RunResult(**result)
