"""Inbox flow (scheduled): run the pipeline on the FITS files in an inbox folder, once per distinct input set.

Idempotent: the usable files' sha256s and the settings give an ``input_set_key``; when a complete run with that
key is already in the store, the flow reports it and starts no new run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from pydantic import BaseModel, ConfigDict, Field

from flows.naming import run_name
from flows.pipeline import prepare_run_logging, run_or_fail
from ood_core.method.model import cached_model
from ood_core.pipeline import PipelineParameters, RunSettings, input_identity, input_set_key, read_inputs
from ood_core.store.readers import run_entries


class _InboxTarget(BaseModel):
    """Where the files arrive and where the runs go (listed first in the form)."""

    model_config = ConfigDict(extra="forbid")

    inbox: str = Field(min_length=1, description="folder where new FITS files arrive")
    pattern: str = Field(default="*.fits*", min_length=1, description="glob of the files to take from the inbox")
    store: str = Field(min_length=1, description="zarr store URL the runs go to")


class InboxParameters(RunSettings, _InboxTarget):
    """An inbox folder, a store, and the settings of the runs made from it."""

    model_config = ConfigDict(extra="forbid")

    def pipeline_parameters(self) -> PipelineParameters:
        """The pipeline parameters of a run over this inbox."""
        settings = self.model_dump(exclude={"inbox", "pattern"})
        return PipelineParameters(inputs=[str(Path(self.inbox) / self.pattern)], **settings)


@task(name="find-processed-run", cache_policy=NO_CACHE)
def processed_run(params: PipelineParameters) -> dict[str, Any]:
    """The input-set key of the usable inbox files, and the complete run that already processed them, if any."""
    model = cached_model(params.model, params.device, params.dtype)
    images, _ = read_inputs(params, model.resolution)
    key = input_set_key([input_identity(image.sha256, image.plane) for image in images], params)
    # the store's run catalogue: one small entry a run, no run group opened
    done = [r for r in run_entries(params.store) if r.get("input_set_key") == key and r.get("status") == "complete"]
    return {"key": key, "run_id": str(done[-1]["run_id"]) if done else None, "usable": len(images)}


@flow(name="inbox", flow_run_name=run_name("inbox", "samples", "seed", where=True), persist_result=True)
def inbox_flow(params: InboxParameters) -> dict[str, Any] | State[Any]:
    """Process the inbox's current input set unless a complete run of it exists; returns what was done."""
    prepare_run_logging()
    logger = get_run_logger()
    if not any(p.is_file() for p in Path(params.inbox).glob(params.pattern)):
        logger.info("inbox %s: no files matching %s, nothing to do", params.inbox, params.pattern)
        return {"skipped": True, "reason": "inbox empty", "run_id": None, "store": params.store}
    pipeline_params = params.pipeline_parameters()
    found = processed_run(pipeline_params)
    if found["run_id"] is not None:
        logger.info("input set %s already processed by complete run %s: no new run", found["key"][:12],
                    found["run_id"])
        create_markdown_artifact(
            f"# inbox: nothing new\n\nThe {found['usable']} usable file(s) in `{params.inbox}` with these "
            f"settings (input set key `{found['key']}`) were already processed by run `{found['run_id']}` in "
            f"`{params.store}`.",
            key="ood-inbox-summary", description="inbox run skipped: input set already processed",
        )
        return {"skipped": True, "reason": "input set already processed", "run_id": found["run_id"],
                "store": params.store, "input_set_key": found["key"]}
    result = run_or_fail(pipeline_params, key_prefix="ood-inbox")
    if isinstance(result, State):  # expected failure: its reason and summary artifact are on this flow run
        return result
    return {**result, "skipped": False, "input_set_key": found["key"]}
