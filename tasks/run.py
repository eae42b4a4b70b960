"""Run tasks: what the model needs, and creating the run (ingest + normalized inputs written to the store)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from ood_core.calibration import calibrate
from ood_core.method.model import cached_model
from ood_core.pipeline.config import PipelineParameters
from ood_core.pipeline.sequence import prepare_run, resume_run
from ood_core.store.readers import run_entries
from tasks.common import retry_on_io_error, run_logger


@task(name="model-info", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error,
      cache_policy=NO_CACHE)
def model_info(model: str, device: str = "auto", dtype: str = "float32") -> dict[str, Any]:
    """Resolution, channels and checksum of the model (loaded once per process)."""
    loaded = cached_model(model, device, dtype)
    return {"resolution": loaded.resolution, "channels": loaded.channels, "weights_sha256": loaded.weights_sha256,
            "device": str(loaded.device)}


def prefect_origin() -> dict[str, Any]:
    """The Prefect flow run (and deployment) a run is created by, as recorded in its provenance."""
    flow_run_id = flow_run.get_id()
    name = deployment.get_name()
    return {"flow_run_id": str(flow_run_id) if flow_run_id else None, "flow_run_name": flow_run.get_name(),
            "deployment_name": str(name) if name else None}


def run_of_flow_run(store: str, flow_run_id: str) -> str | None:
    """Id of a run this flow run created before and that can go on (a retried flow run resumes it): "writing",
    or failed for a reason of the infrastructure's; None otherwise."""
    for entry in reversed(run_entries(store)):  # the run catalogue; a writing run's entry is made from its record
        if entry.get("flow_run_id") == flow_run_id and (
                entry.get("status") == "writing" or (entry.get("status") == "failed" and entry.get("resumable"))):
            return str(entry["run_id"])
    return None


@task(name="create-run", cache_policy=NO_CACHE)
def create_run_task(params: PipelineParameters) -> str:
    """Ingest the inputs, calibrate the settings left empty (leave-shots-out, ``ood_core.calibration``) and
    create the "writing" run with them; returns the run id.

    A retried flow run finds the run it started before (writing, or failed for a reason of the infrastructure's),
    takes it up and returns it, so completed stages and committed samples are not redone.
    Raises NoUsableInputError (nothing written) when too few inputs are usable.
    """
    origin = prefect_origin()
    if origin["flow_run_id"]:
        existing = run_of_flow_run(params.store, origin["flow_run_id"])
        if existing:
            resume_run(params.store, existing, how="retried")  # claims its lease; a failed run is writing again
            run_logger().info("resuming run %s of this flow run", existing)
            return existing
    model = cached_model(params.model, params.device, params.dtype, compile=params.compile)
    run_id = prepare_run(params, model, extra_provenance={"prefect": origin}, choose=calibrate)
    run_logger().info("created run %s in %s", run_id, params.store)
    return run_id
