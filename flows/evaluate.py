"""The evaluate flow: a run's samples and the baselines against real reference images (``ood evaluate``).

One GPU-tagged task runs ``ood_core.evaluation.evaluate_run`` (reads the store, runs the baselines through
the run's frozen model, writes ``evaluation.json`` and PNGs under ``out_dir``); a report task attaches the
table as a markdown artifact and each PNG as an image artifact. Only paths and small dicts cross task
boundaries.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ood_core.evaluation import DEFAULT_BASELINES, evaluate_run, format_table
from ood_core.evaluation.baselines import MAX_FINETUNE_STEPS
from ood_core.evaluation.metrics import METRIC_DOCS

GPU_TAG = "gpu"
"""Same tag as the pipeline's network tasks: one concurrency limit holds all network work on a GPU."""
MAX_EMBEDDED_PNG_BYTES = 1_500_000
"""PNGs above this size are linked by path in the markdown instead of embedded."""

BaselineChoice = Literal["in_domain", "prior_unscreened", "augmentation", "finetune"]


class EvaluateParameters(BaseModel):
    """What an evaluation compares, and how hard the baselines work; shown as the flow's form in the UI."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(min_length=1, description="zarr store URL holding the run")
    run_id: str | None = Field(default=None, description="run to evaluate (default: the latest complete run)")
    reference: list[str] = Field(
        min_length=1, description="real FITS images of the same domain that were NOT inputs (files, dirs, globs)"
    )
    out_dir: str = Field(default="out/evaluate", min_length=1, description="folder for evaluation.json and PNGs")
    baselines: list[BaselineChoice] = Field(
        default_factory=lambda: list(DEFAULT_BASELINES),  # type: ignore[arg-type]  # str names, checked by the Literal at validation
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
    def _unique_baselines(cls, value: list[BaselineChoice]) -> list[BaselineChoice]:
        return list(dict.fromkeys(value))


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = (flow_run.parameters or {}).get("params")

    def get(key: str) -> Any:
        return params.get(key) if isinstance(params, dict) else getattr(params, key, None)

    return f"evaluate-{get('run_id') or 'latest'}-seed={get('seed')}"


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100]


@task(name="evaluate", tags=[GPU_TAG], cache_policy=NO_CACHE)
def evaluate_task(params: EvaluateParameters) -> dict[str, Any]:
    """Metrics of the run and the baselines against the reference; writes JSON and PNGs, returns the result."""
    logger = get_run_logger()
    return evaluate_run(
        params.store, params.reference, params.run_id, out_dir=params.out_dir, baselines=list(params.baselines),
        n_baseline_samples=params.n_baseline_samples, finetune_steps=params.finetune_steps,
        finetune_batch_size=params.finetune_batch_size, finetune_learning_rate=params.finetune_learning_rate,
        sample_steps=params.sample_steps, seed=params.seed, device=params.device, batch_size=params.batch_size,
        progress=logger.info,
    )


def evaluation_markdown(result: dict[str, Any], embedded: dict[str, str]) -> str:
    """The evaluation summary a person reads in the Prefect UI: table, what each metric means, the plots."""
    reference = result.get("reference", {})
    lines = [
        f"# Evaluation of run `{result.get('run_id')}`",
        "",
        f"- **store**: `{result.get('store')}`",
        f"- **reference**: {reference.get('n')} real images; excluded as inputs: {len(reference.get('excluded', []))}; "
        f"quarantined: {len(reference.get('quarantined', []))}",
        f"- **units**: {result.get('units') or 'none'}",
        f"- **JSON**: `{result.get('json')}`",
        "",
        "## Method vs baselines (each row against the reference)",
        "",
        format_table(result),
        "",
        "`inputs` is the few-shot set itself: the value a metric reaches with real images of the domain.",
        "",
        "## Metrics",
        "",
        "| metric | meaning |",
        "|---|---|",
        *[f"| {name} | {doc} |" for name, doc in METRIC_DOCS.items()],
        "",
        "## Plots",
        "",
    ]
    for name, path in result.get("plots", {}).items():
        lines.append(f"### {name.replace('_', ' ')}")
        lines.append("")
        lines.append(f"`{path}`")
        if name in embedded:
            lines += ["", f"![{name}](data:image/png;base64,{embedded[name]})"]
        lines.append("")
    return "\n".join(lines)


@task(name="evaluation-report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def report_task(result: dict[str, Any], key_prefix: str = "ood-evaluation") -> list[str]:
    """Attach the markdown summary and every PNG as artifacts; returns the artifact keys."""
    prefix = artifact_key(f"{key_prefix}-{result.get('run_id', '')}")
    embedded: dict[str, str] = {}
    keys = []
    for name, path in result.get("plots", {}).items():
        data = Path(path).read_bytes()
        if len(data) <= MAX_EMBEDDED_PNG_BYTES:
            embedded[name] = base64.b64encode(data).decode()
            key = artifact_key(f"{prefix}-{name}")
            create_image_artifact(f"data:image/png;base64,{embedded[name]}", key=key,
                                  description=f"{name} of the evaluation of run {result.get('run_id')} ({path})")
            keys.append(key)
    summary_key = f"{prefix}-summary"
    create_markdown_artifact(evaluation_markdown(result, embedded), key=summary_key,
                             description=f"evaluation of run {result.get('run_id')}")
    return [summary_key, *keys]


@flow(name="evaluate", flow_run_name=_run_name, persist_result=False)
def evaluate_flow(params: EvaluateParameters) -> dict[str, Any]:
    """Evaluate a run against real reference images and baselines; returns the result (with ``table``)."""
    result = evaluate_task(params)
    result["artifacts"] = report_task(result)
    get_run_logger().info("evaluation of run %s:\n%s", result.get("run_id"), format_table(result, markdown=False))
    return result
