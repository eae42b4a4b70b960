"""Discover flow: invert the run's inputs to t0, fit the OOD prior, record its diagnostics."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.naming import run_name
from ood_core.pipeline.config import PipelineParameters
from tasks.stages import invert_task, prior_task


@flow(name="discover", flow_run_name=run_name("discover", "t0", "steps", "prior"))
def discover_flow(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Inversion (+ reconstruction PSNR) and prior (+ diagnostics) of an existing "writing" run."""
    inversion = invert_task(params, run_id)
    prior = prior_task(params, run_id)
    return {"run_id": run_id, "inversion": inversion, "prior": prior}
