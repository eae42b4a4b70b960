"""Evaluate tasks: run ``ood_core.evaluation.evaluate_run`` on the GPU pool, attach its summary as an artifact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ood_core.evaluation import evaluate_run, evaluation_markdown
from tasks.artifacts import artifact_key, png_base64
from tasks.common import GPU_TAG, run_logger


@task(name="evaluate", tags=[GPU_TAG], cache_policy=NO_CACHE)
def evaluate_task(
    store: str, reference: Sequence[str], run_id: str | None = None, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Metrics of the run and the baselines against the reference; writes JSON and PNGs, returns the result.

    ``options``: keyword arguments of ``evaluate_run`` (out_dir, baselines, seed, ...).
    """
    return evaluate_run(store, list(reference), run_id, progress=run_logger().info, **(options or {}))


@task(name="evaluation-report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def evaluation_report_task(result: dict[str, Any], key_prefix: str = "ood-evaluation") -> list[str]:
    """Attach the markdown summary, every PNG embedded in it; returns the artifact keys."""
    embedded = {name: data for name, path in result.get("plots", {}).items() if (data := png_base64(path))}
    key = artifact_key(f"{key_prefix}-{result.get('run_id', '')}-summary")
    create_markdown_artifact(evaluation_markdown(result, embedded), key=key,
                             description=f"evaluation of run {result.get('run_id')}")
    return [key]
