"""The network stages as tasks (invert, prior, sample) and finish. Each takes the parameters and a run id,
reads what it needs from the store and writes what it makes back; a stage already complete is skipped.
:func:`execute_as_task` is the executor the pipeline flow gives to ``ood_core.pipeline.run_stages``."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ood_core.evaluation.realism import realism_record
from ood_core.pipeline.config import PipelineParameters
from ood_core.pipeline.sequence import execute_shard, execute_stage, finish_sample_shards, prepare_sample_shards
from tasks.common import GPU_TAG, progress_hook, retry_on_io_error, run_logger

_COMMON: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_on_io_error,
                           "cache_policy": NO_CACHE}


@task(name="invert", tags=[GPU_TAG], task_run_name="invert-{run_id}", **_COMMON)
def invert_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """DDIM inversion to t0 and reconstruction PSNR (bandwidth scan first when auto_t0)."""
    record = execute_stage("invert", params, run_id, progress_hook(run_id))
    run_logger().info("invert: t0=%d, median reconstruction PSNR %.2f dB", record["t0"], record["median_psnr_db"])
    return record


@task(name="prior", tags=[GPU_TAG], task_run_name="prior-{run_id}", **_COMMON)
def prior_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """In-domain reference latents, the OOD prior and its diagnostics."""
    return execute_stage("prior", params, run_id, progress_hook(run_id))


@task(name="sample", tags=[GPU_TAG], task_run_name="sample-{run_id}", **_COMMON)
def sample_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Geometric screening, DDIM generation, novelty check, samples streamed to the store."""
    report = execute_stage("sample", params, run_id, progress_hook(run_id))
    run_logger().info("sample: %s written, acceptance rate %.4f", report.get("written"),
                      report.get("acceptance_rate") or 0.0)
    return report


@task(name="finish-run", **_COMMON)
def finish_task(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Judge the samples against the shots (C2ST, provenance ``realism``), flip the run to "complete", return its
    result as a plain dict."""
    return execute_stage("finish", params, run_id, judge=realism_record)


@task(name="prepare-shards", task_run_name="prepare-shards-{run_id}", **_COMMON)
def prepare_shards_task(params: PipelineParameters, run_id: str, writer_id: str | None = None) -> int:
    """Give the run's sample arrays to its shards (regions of whole blocks); returns how many (0: stage done)."""
    return prepare_sample_shards(params, run_id, writer_id)


@task(name="sample-shard", tags=[GPU_TAG], task_run_name="sample-{run_id}-shard-{index}", retries=3,
      retry_delay_seconds=2, cache_policy=NO_CACHE)
def sample_shard_task(params: PipelineParameters, run_id: str, index: int,
                      writer_id: str | None = None) -> dict[str, Any]:
    """One shard of the sample stage: its blocks of sample slots, into its own region of the run's arrays.

    Retried on any error (a lost worker, a store hiccup): a retry redoes only the blocks this shard had not
    committed, and makes the same samples. ``writer_id``: the run's writer (its lease) this shard writes for."""
    report = execute_shard(params, run_id, index, progress_hook(f"{run_id}-shard-{index}"), writer_id)
    run_logger().info("shard %d: %d samples%s", index, report["rows"], " (already done)" if report["skipped"] else "")
    return report


@task(name="finish-shards", task_run_name="finish-shards-{run_id}", **_COMMON)
def finish_shards_task(params: PipelineParameters, run_id: str, writer_id: str | None = None) -> dict[str, Any]:
    """Move the shards' samples together and complete the sample stage (every shard must be done)."""
    return finish_sample_shards(params, run_id, writer_id)


STAGE_TASKS = {"invert": invert_task, "prior": prior_task, "sample": sample_task, "finish": finish_task}


def execute_as_task(stage: str, params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Run one stage as its Prefect task (the StageExecutor of the pipeline flow)."""
    result: dict[str, Any] = STAGE_TASKS[stage](params, run_id)
    return result
