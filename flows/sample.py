"""Sample flow: screened sampling of a discovered run, then the run is completed."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.naming import run_name
from ood_core.pipeline.config import PipelineParameters
from tasks.stages import finish_task, sample_task


@flow(name="sample", flow_run_name=run_name("sample", "samples", "seed", "strategy"))
def sample_flow(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Generate ``params.samples`` accepted samples into the run and flip it to "complete"; returns the result."""
    sample_task(params, run_id)
    return finish_task(params, run_id)
