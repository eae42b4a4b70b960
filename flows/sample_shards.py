"""The sample stage split into shards that run as mapped tasks on a Dask cluster.

    prepare-shards -> sample-shard x N (Dask workers, each its own region of the run's arrays) -> finish-shards

The pipeline flow calls :func:`sample_shards` in place of its sample task when ``shards > 1``. A shard task that
fails (a lost worker, a store hiccup) is retried and redoes only its own uncommitted blocks; the run is complete
only after every shard is and their regions are merged. The samples are bit for bit those of one shard.

Every task writes for the run's writer, the process that holds the run's lease (``ood_core.store.lease``): it
names that writer, and a shard stops when the writer's lease no longer holds. When the scheduler at
``dask_address`` is lost, the flow waits up to :data:`flows.cluster.SCHEDULER_WAIT_S` for it to come back at
that address (its workers reconnect) and runs the shards again from their committed blocks; a scheduler that
stays away fails the run as resumable (``ood run --resume``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger, unmapped

from flows.cluster import SCHEDULER_WAIT_S, SchedulerLostError, dask_runner, scheduler_reachable, wait_for_scheduler
from flows.naming import run_name
from ood_core.pipeline import PipelineParameters
from ood_core.store.lease import held
from tasks.stages import finish_shards_task, prepare_shards_task, sample_shard_task


@flow(name="sample-shards", flow_run_name=run_name("shards", "shards", "dask_address"))
def sample_shards_flow(params: PipelineParameters, run_id: str, writer_id: str | None = None) -> dict[str, Any]:
    """Prepare the shards, run one task per shard on this flow's task runner, merge; returns the sampler record."""
    count = prepare_shards_task(params, run_id, writer_id)
    if count:
        futures = sample_shard_task.map(unmapped(params), unmapped(run_id), list(range(count)), unmapped(writer_id))
        reports = [future.result() for future in futures]  # raises the first shard error after its retries
        get_run_logger().info("%d shards done: %d samples", count, sum(r["rows"] for r in reports))
    return finish_shards_task(params, run_id, writer_id)


def sample_shards(params: PipelineParameters, run_id: str) -> dict[str, Any]:
    """The sharded sample stage on a DaskTaskRunner: the scheduler at ``params.dask_address`` (waited for when it
    is lost mid-stage), or a local cluster of ``params.dask_workers`` (default: one per shard, at most one per
    CPU) worker processes."""
    workers = params.dask_workers or max(1, min(params.shards, os.cpu_count() or 1))
    lease = held(params.store, run_id)
    writer_id = None if lease is None else lease.writer
    deadline = time.monotonic() + SCHEDULER_WAIT_S
    while True:
        runner = dask_runner(params.dask_address, workers)
        try:
            result: dict[str, Any] = sample_shards_flow.with_options(task_runner=runner)(params, run_id, writer_id)
            return result
        except Exception as exc:
            address = params.dask_address
            if not address or scheduler_reachable(address):
                raise  # not the scheduler: the shard's own error (after its retries)
            if not wait_for_scheduler(address, deadline):
                raise SchedulerLostError(f"the Dask scheduler at {address} was lost mid-stage and did not come back "
                                         f"within {SCHEDULER_WAIT_S:.0f} s ({type(exc).__name__}: {exc}); the run "
                                         f"is resumable from its committed blocks") from exc
            get_run_logger().warning("the Dask scheduler at %s was lost (%s) and is back: the shards go on from "
                                     "their committed blocks", address, type(exc).__name__)
