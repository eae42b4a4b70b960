"""The network stages as tasks: invert, prior, sample, finish. They take the parameters and a run id, read
what they need from the store and write what they make back to it; a stage already complete is skipped."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ood_core.pipeline import finish_run, stage_invert, stage_prior, stage_sample
from ood_core.pipeline.config import PipelineParameters
from ood_core.store import RunWriter
from tasks.common import GPU_TAG, cached_model, progress_hook, retry_on_io_error, run_logger

_COMMON: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_on_io_error,
                           "cache_policy": NO_CACHE}


def _open(params: PipelineParameters, run_id: str) -> RunWriter:
    return RunWriter.open(params.store, run_id)


@task(name="invert", tags=[GPU_TAG], task_run_name="invert-{run_id}", **_COMMON)
def invert_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """DDIM inversion to t0 and reconstruction PSNR (bandwidth scan first when auto_t0)."""
    writer = _open(params, run_id)
    skipped = "invert" in writer.completed_stages()
    model = cached_model(params.model, params.device, params.dtype)
    outcome = stage_invert(params, model, writer, progress_hook(run_id))
    run_logger().info("invert %s: t0=%d, median PSNR %.2f dB", "reused" if skipped else "done", outcome.t0,
                          outcome.summary["median_psnr_db"])
    return {**outcome.summary, "skipped": skipped}


@task(name="prior", tags=[GPU_TAG], task_run_name="prior-{run_id}", **_COMMON)
def prior_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """In-domain reference latents, the OOD prior and its diagnostics."""
    writer = _open(params, run_id)
    skipped = "prior" in writer.completed_stages()
    model = cached_model(params.model, params.device, params.dtype)
    outcome = stage_prior(params, model, writer, progress_hook(run_id))
    return {"diagnostics": outcome.diagnostics, "skipped": skipped}


@task(name="sample", tags=[GPU_TAG], task_run_name="sample-{run_id}", **_COMMON)
def sample_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Geometric screening, DDIM generation, novelty check, samples streamed to the store."""
    writer = _open(params, run_id)
    skipped = "sample" in writer.completed_stages()
    model = cached_model(params.model, params.device, params.dtype)
    report = stage_sample(params, model, writer, progress_hook(run_id))
    return {**report, "skipped": skipped}


@task(name="finish-run", **_COMMON)
def finish_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Flip the run to "complete" and return its result as a plain dict."""
    return finish_run(_open(params, run_id)).to_dict()


@task(name="fail-run", cache_policy=NO_CACHE)
def fail_task(store: str, run_id: str, error: str) -> None:
    """Mark a run "failed" with the error (readers skip it)."""
    RunWriter.open(store, run_id).fail(error)
