"""Ingest tasks: validate FITS files (one task per file, Dask-friendly) and create the run with its inputs."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ood_core.errors import InvalidInputError
from ood_core.io.fits import QuarantinedInput, expand_inputs, read_fits_image, unmatched_inputs
from ood_core.pipeline import create_run, find_run_by_flow_run, ingest, input_set_key
from ood_core.pipeline.config import PipelineParameters
from tasks.common import cached_model, retry_on_io_error, run_logger


def expand(specs: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Files matched by paths/directories/globs, and the specs that matched nothing (as quarantine records)."""
    return [str(p) for p in expand_inputs(specs)], [q.to_dict() for q in unmatched_inputs(specs)]


@task(name="validate-fits", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error,
      cache_policy=NO_CACHE, task_run_name="validate-{path}")
def validate_fits(path: str, hdu: int | None = None, min_size: int = 1) -> dict[str, Any]:
    """Read and validate one FITS file; returns a small record (ok + sha256, or the quarantine reason)."""
    try:
        image = read_fits_image(path, hdu=hdu, min_size=min_size)
    except InvalidInputError as exc:
        run_logger().warning("quarantined %s", exc)
        return {"path": str(path), "ok": False, **QuarantinedInput.from_error(exc).to_dict()}
    return {"path": str(path), "ok": True, "sha256": image.sha256, "shape": list(image.shape),
            "hdu": image.hdu_index, "BUNIT": image.header.get("BUNIT")}


@task(name="model-info", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error,
      cache_policy=NO_CACHE)
def model_info(model: str, device: str = "auto", dtype: str = "float32") -> dict[str, Any]:
    """Resolution, channels and checksum of the model (loaded once per process)."""
    loaded = cached_model(model, device, dtype)
    return {"resolution": loaded.resolution, "channels": loaded.channels, "weights_sha256": loaded.weights_sha256,
            "device": str(loaded.device)}


def key_of(records: list[dict[str, Any]], params: PipelineParameters) -> str:
    """The idempotence key of the usable files among validation records."""
    return input_set_key([str(r["sha256"]) for r in records if r.get("ok")], params)


@task(name="create-run", cache_policy=NO_CACHE)
def create_run_task(params: PipelineParameters, usable: list[str], quarantined: list[dict[str, str]]) -> str:
    """Normalize the usable files and create the "writing" run with its inputs; returns the run id.

    A retried flow run finds the run it started before and returns it, so completed stages are not redone.
    """
    flow_run_id = flow_run.get_id()
    if flow_run_id:
        existing = find_run_by_flow_run(params.store, str(flow_run_id))
        if existing:
            run_logger().info("resuming run %s of this flow run", existing)
            return existing
    model = cached_model(params.model, params.device, params.dtype)
    ingested = ingest(params.model_copy(update={"inputs": usable}), model.resolution, model.channels)
    prefect_info = {"flow_run_id": str(flow_run_id) if flow_run_id else None,
                    "flow_run_name": flow_run.get_name(),
                    "deployment_name": _deployment_name()}
    writer = create_run(
        params, model, ingested, extra_provenance={"prefect": prefect_info},
        extra_quarantined=[QuarantinedInput(q["path"], q["reason"], q.get("error", "")) for q in quarantined],
    )
    run_logger().info("created run %s in %s with %d inputs", writer.run_id, params.store,
                          ingested.batch.images.shape[0])
    return writer.run_id


def _deployment_name() -> str | None:
    from prefect.runtime import deployment

    name = deployment.get_name()
    return str(name) if name else None
