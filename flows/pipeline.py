"""The end-to-end pipeline flow: ingest -> create run -> discover -> sample -> report (artifacts)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.discover import discover_flow
from flows.ingest import IngestParameters, ingest_flow
from flows.naming import run_name
from flows.sample import sample_flow
from ood_core.pipeline.config import PipelineParameters
from tasks.ingest import create_run_task, model_info
from tasks.report import report_task
from tasks.stages import fail_task

PIPELINE_RUN_NAME = run_name("pipeline", "seed", "samples", "t0", "steps")


def ingest_parameters(params: PipelineParameters, resolution: int, use_dask: bool = False) -> IngestParameters:
    """Validation settings matching what ood_core.pipeline.ingest accepts for this model."""
    return IngestParameters(inputs=params.inputs, hdu=params.hdu, min_size=max(params.tile or 0, resolution),
                            use_dask=use_dask)


def run_after_ingest(
    params: PipelineParameters, ingested: dict[str, Any], key_prefix: str = "ood-run"
) -> dict[str, Any]:
    """Create the run from validated inputs, discover, sample, report; marks the run failed on an error."""
    run_id = create_run_task(params, ingested["usable"], ingested["quarantined"])
    try:
        discover_flow(params, run_id)
        result = sample_flow(params, run_id)
    except BaseException as exc:
        fail_task(params.store, run_id, f"{type(exc).__name__}: {exc}")
        raise
    report = report_task(result, key_prefix=key_prefix)
    result["artifacts"] = [*report["artifact_keys"], report["contact_sheet"]]
    result["contact_sheet"] = report["contact_sheet"]
    result["pictures"] = [report["contact_sheet"]]
    get_run_logger().info("run %s complete: %d samples in %s", result["run_id"], result["n_samples"], params.store)
    return result


@flow(name="pipeline", flow_run_name=PIPELINE_RUN_NAME, persist_result=True)
def pipeline_flow(params: PipelineParameters) -> dict[str, Any]:
    """Few-shot OOD synthesis on FITS inputs; returns the RunResult as a plain dict plus artifact keys/paths.

    Raises NoUsableInputError, unchanged, when no input is usable (nothing is written then).
    """
    info = model_info(params.model, params.device, params.dtype)
    ingested = ingest_flow(ingest_parameters(params, int(info["resolution"])))
    return run_after_ingest(params, ingested)
