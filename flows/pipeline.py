"""The end-to-end pipeline flow: create the run (ingest) -> invert -> prior -> sample -> finish -> report.

The stage order lives in ``ood_core.pipeline.run_stages``; this flow runs each stage as a Prefect task (the
sample stage as shards on a Dask cluster when ``shards > 1``, :mod:`flows.sample_shards`) and attaches the
report artifacts. :func:`run_or_fail` is the composition the inbox flow shares: a run that cannot go on for a
reason the user can fix (no usable input, bad parameters) ends the flow run Failed with that one reason and a
summary artifact saying what to change (``tasks.failure``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State

from flows.naming import pipeline_run_name
from flows.sample_shards import sample_shards
from ood_core.pipeline import PipelineParameters, resume_run, run_stages
from tasks.common import send_library_logs_to_runs
from tasks.failure import failed_run, failure_artifact, is_expected, quiet_expected_failures
from tasks.report import report_task
from tasks.run import create_run_task
from tasks.stages import execute_as_task


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


def prepare_run_logging() -> None:
    """ood_core's warnings into the flow run's logs; expected failures logged without a traceback."""
    send_library_logs_to_runs()
    quiet_expected_failures()


def run_or_fail(params: PipelineParameters, key_prefix: str = "ood-run",
                resume_run_id: str | None = None) -> dict[str, Any] | State[Any]:
    """Create the run (or take up ``resume_run_id``) and execute it; an expected failure becomes a Failed state.

    Unexpected errors (bugs, outages) get the artifact too and propagate with their traceback.
    """
    run_id: str | None = None
    try:
        if resume_run_id:
            resume_run(params.store, resume_run_id)  # claims the run's lease (RunLeasedError: another writer has it)
        run_id = resume_run_id or create_run_task(params)
        return execute_run(params, run_id, key_prefix)
    except Exception as exc:
        if not is_expected(exc):
            failure_artifact(exc, params, run_id, key_prefix)
            raise
        return failed_run(exc, params, run_id, key_prefix)


prepare_run_logging()  # also here: a flow run whose parameters fail validation never enters the flow body


@flow(name="pipeline", flow_run_name=pipeline_run_name, persist_result=True)
def pipeline_flow(params: PipelineParameters, resume_run_id: str | None = None) -> dict[str, Any] | State[Any]:
    """Few-shot OOD synthesis on FITS inputs; returns the RunResult as a plain dict plus artifact keys/paths.

    Called in Python it raises NoUsableInputError (or another OODError) unchanged when the run cannot go on;
    as a deployment run it ends Failed with that reason and the ``ood-run-summary`` artifact says what to change.
    ``resume_run_id``: continue that run of ``params.store`` (a stale one whose process died, or one that failed
    for a reason of the infrastructure's) from what it committed instead of creating a new run.
    """
    prepare_run_logging()
    return run_or_fail(params, resume_run_id=resume_run_id)
