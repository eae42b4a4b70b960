"""The evaluate flow: a run's samples and the baselines against real reference images (``ood evaluate``).

One GPU-tagged task (``tasks.evaluate.evaluate_task``) runs ``ood_core.evaluation.evaluate_run`` (reads the
store, runs the baselines through the run's frozen model, writes ``evaluation.json`` and PNGs under
``out_dir``); a report task attaches the summary, with the table and every PNG embedded, as one markdown
artifact. Only paths and small dicts cross task boundaries.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows.naming import run_name
from ood_core.evaluation import DEFAULT_BASELINES, format_table
from ood_core.evaluation.baselines import MAX_FINETUNE_STEPS, BaselineName
from tasks.evaluate import evaluate_task, evaluation_report_task


class EvaluateParameters(BaseModel):
    """What an evaluation compares, and how hard the baselines work; shown as the flow's form in the UI."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(min_length=1, description="zarr store URL holding the run")
    run_id: str | None = Field(default=None, description="run to evaluate (default: the latest complete run)")
    reference: list[str] = Field(
        min_length=1, description="real FITS images of the same domain that were NOT inputs (files, dirs, globs)"
    )
    out_dir: str = Field(default="out/evaluate", min_length=1, description="folder for evaluation.json and PNGs")
    baselines: list[BaselineName] = Field(
        default_factory=lambda: list(DEFAULT_BASELINES),
        description="baselines run beside the method through the same frozen model",
    )
    n_baseline_samples: int | None = Field(
        default=None, ge=2, le=4096, description="images per baseline (default: as many as the run's samples)"
    )
    finetune_steps: int = Field(
        default=200, ge=1, le=MAX_FINETUNE_STEPS, description="optimizer steps of the fine-tuning baseline"
    )
    finetune_batch_size: int = Field(default=8, ge=1, le=256, description="batch size of the fine-tuning baseline")
    finetune_learning_rate: float = Field(default=1e-4, gt=0, le=1e-2, description="AdamW learning rate (fine-tune)")
    sample_steps: int | None = Field(
        default=None, ge=2, le=1000, description="DDIM steps of N(0, I) baselines (default: the run's K)"
    )
    seed: int = Field(default=0, ge=0, le=2**62, description="seed of every baseline")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the network runs")
    batch_size: int = Field(default=16, ge=1, le=1024, description="images per network evaluation")

    @field_validator("reference")
    @classmethod
    def _no_blank_reference(cls, value: list[str]) -> list[str]:
        if any(not v.strip() for v in value):
            raise ValueError("reference paths must not be blank")
        return value

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, value: list[BaselineName]) -> list[BaselineName]:
        return list(dict.fromkeys(value))


@flow(name="evaluate", flow_run_name=run_name("evaluate", "run_id", "seed"), persist_result=False)
def evaluate_flow(params: EvaluateParameters) -> dict[str, Any]:
    """Evaluate a run against real reference images and baselines; returns the result (with ``table``)."""
    options = params.model_dump(exclude={"store", "reference", "run_id"})
    result = evaluate_task(params.store, params.reference, params.run_id, options)
    result["artifacts"] = evaluation_report_task(result)
    get_run_logger().info("evaluation of run %s:\n%s", result.get("run_id"), format_table(result, markdown=False))
    return result
