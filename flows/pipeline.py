"""The end-to-end pipeline flow: create the run (ingest) -> invert -> prior -> sample -> finish -> report.

The stage order lives in ``ood_core.pipeline.run_stages``; this flow runs each stage as a Prefect task (the
sample stage as shards on a Dask cluster when ``shards > 1``, :mod:`flows.sample_shards`) and attaches the
report artifacts. :func:`execute_run` is the composition the inbox flow shares.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.naming import run_name
from flows.sample_shards import sample_shards
from ood_core.pipeline import PipelineParameters, run_stages
from tasks.report import report_task
from tasks.run import create_run_task
from tasks.stages import execute_as_task

PIPELINE_RUN_NAME = run_name("pipeline", "seed", "samples", "t0", "steps")


def execute_stage_in_flow(stage: str, params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """A stage as its task; the sample stage of a sharded run as the sample-shards subflow on Dask."""
    if stage == "sample" and params.shards > 1:
        return sample_shards(params, run_id)
    return execute_as_task(stage, params, run_id)


def execute_run(params: PipelineParameters, run_id: str, key_prefix: str = "ood-run") -> dict[str, Any]:
    """The stages of a created run as tasks, then the report; returns the result plus artifact keys/paths."""
    result = run_stages(params, run_id, execute_stage_in_flow)
    report = report_task(result, key_prefix=key_prefix)
    result["artifacts"] = [*report["artifact_keys"], report["contact_sheet"]]
    result["contact_sheet"] = report["contact_sheet"]
    result["pictures"] = [report["contact_sheet"]]
    get_run_logger().info("run %s complete: %d samples in %s", result["run_id"], result["n_samples"], params.store)
    return result


@flow(name="pipeline", flow_run_name=PIPELINE_RUN_NAME, persist_result=True)
def pipeline_flow(params: PipelineParameters, resume_run_id: str | None = None) -> dict[str, Any]:
    """Few-shot OOD synthesis on FITS inputs; returns the RunResult as a plain dict plus artifact keys/paths.

    Raises NoUsableInputError, unchanged, when too few inputs are usable (nothing is written then).
    ``resume_run_id``: continue that "writing" run of ``params.store`` (e.g. a stale one whose process died)
    from its last completed stage instead of creating a new run.
    """
    return execute_run(params, resume_run_id or create_run_task(params))
