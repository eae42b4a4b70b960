"""The sample stage split into shards that run as mapped tasks on a Dask cluster.

    prepare-shards -> sample-shard x N (Dask workers, each its own region of the run's arrays) -> finish-shards

The pipeline flow calls :func:`sample_shards` in place of its sample task when ``shards > 1``. A shard task that
fails (a lost worker, a store hiccup) is retried and redoes only its own uncommitted blocks; the run is complete
only after every shard is and their regions are merged. The samples are bit for bit those of one shard.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, unmapped

from flows.cluster import dask_runner
from flows.naming import run_name
from ood_core.pipeline import PipelineParameters
from tasks.stages import finish_shards_task, prepare_shards_task, sample_shard_task


@flow(name="sample-shards", flow_run_name=run_name("shards", "shards", "dask_address"))
def sample_shards_flow(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """Prepare the shards, run one task per shard on this flow's task runner, merge; returns the sampler record."""
    count = prepare_shards_task(params, run_id)
    if count:
        futures = sample_shard_task.map(unmapped(params), unmapped(run_id), list(range(count)))
        reports = [future.result() for future in futures]  # raises the first shard error after its retries
        get_run_logger().info("%d shards done: %d samples", count, sum(r["rows"] for r in reports))
    return finish_shards_task(params, run_id)


def sample_shards(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """The sharded sample stage on a DaskTaskRunner: the scheduler at ``params.dask_address``, or a local cluster
    of ``params.dask_workers`` (default: one per shard, at most one per CPU) worker processes."""
    workers = params.dask_workers or max(1, min(params.shards, os.cpu_count() or 1))
    runner = dask_runner(params.dask_address, workers)
    result: dict[str, Any] = sample_shards_flow.with_options(task_runner=runner)(params, run_id)
    return result
