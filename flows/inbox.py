"""Inbox flow (scheduled): run the pipeline on the FITS files in an inbox folder, once per distinct input set.

Idempotent: the usable files' sha256s and the settings give an ``input_set_key``; when a complete run with that
key is already in the store, the flow reports it and starts no new run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.ingest import ingest_flow
from flows.naming import run_name
from flows.pipeline import ingest_parameters, run_after_ingest
from ood_core.pipeline import find_run_by_key
from ood_core.pipeline.config import PipelineParameters, default_model_path
from tasks.ingest import key_of, model_info


class InboxParameters(BaseModel):
    """An inbox folder, a store, and the settings of the runs made from it."""

    model_config = ConfigDict(extra="forbid")

    inbox: str = Field(min_length=1, description="folder where new FITS files arrive")
    pattern: str = Field(default="*.fits*", min_length=1, description="glob of the files to take from the inbox")
    store: str = Field(min_length=1, description="zarr store URL the runs go to")
    model: str = Field(default_factory=default_model_path, description="diffusers model folder or hub id")
    samples: int = Field(default=16, ge=1, le=100_000, description="accepted samples per run")
    seed: int = Field(default=0, ge=0, le=2**62, description="seed of each run")
    t0: int = Field(default=600, ge=1, le=999, description="inversion bandwidth: timestep of the latents")
    steps: int = Field(default=40, ge=2, le=1000, description="DDIM steps K between 0 and t0")
    eta: float = Field(default=0.0, ge=0.0, le=1.0, description="DDIM noise for generation")
    prior: Literal["scalar", "ppca"] = Field(default="scalar", description="OOD prior family")
    reference_count: int = Field(default=16, ge=2, le=4096, description="in-domain reference latents")
    batch_size: int = Field(default=16, ge=1, le=1024, description="images per network evaluation")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the network runs")

    def pipeline_parameters(self) -> PipelineParameters:
        """The pipeline parameters of a run over this inbox."""
        values = self.model_dump(exclude={"inbox", "pattern"})
        return PipelineParameters(inputs=[str(Path(self.inbox) / self.pattern)], **values)


@flow(name="inbox", flow_run_name=run_name("inbox", "samples", "seed"), persist_result=True)
def inbox_flow(params: InboxParameters) -> dict[str, Any]:
    """Process the inbox's current input set unless a complete run of it exists; returns what was done."""
    logger = get_run_logger()
    files = sorted(p for p in Path(params.inbox).glob(params.pattern) if p.is_file())
    if not files:
        logger.info("inbox %s: no files matching %s, nothing to do", params.inbox, params.pattern)
        return {"skipped": True, "reason": "inbox empty", "run_id": None, "store": params.store}
    pipeline_params = params.pipeline_parameters()
    info = model_info(pipeline_params.model, pipeline_params.device, pipeline_params.dtype)
    ingested = ingest_flow(ingest_parameters(pipeline_params, int(info["resolution"])))
    key = key_of(ingested["records"], pipeline_params)
    existing = find_run_by_key(params.store, key)
    if existing is not None:
        logger.info("input set %s already processed by complete run %s: no new run", key[:12], existing)
        create_markdown_artifact(
            f"# inbox: nothing new\n\nThe {len(ingested['usable'])} usable file(s) in `{params.inbox}` with these "
            f"settings (input set key `{key}`) were already processed by run `{existing}` in `{params.store}`.",
            key="ood-inbox-summary", description="inbox run skipped: input set already processed",
        )
        return {"skipped": True, "reason": "input set already processed", "run_id": existing,
                "store": params.store, "input_set_key": key}
    result = run_after_ingest(pipeline_params, ingested, key_prefix="ood-inbox")
    return {**result, "skipped": False, "input_set_key": key}
