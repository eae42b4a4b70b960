"""The Dask clusters the flows spread work over: an existing scheduler given by address (for example a
``dask-cuda`` cluster with one worker per GPU), or a local cluster of worker processes started for the flow run."""

from __future__ import annotations

from typing import Any, cast

from prefect.task_runners import TaskRunner
from prefect_dask.task_runners import DaskTaskRunner


def dask_runner(address: str | None, workers: int, *, processes: bool = True) -> TaskRunner[Any]:
    """A DaskTaskRunner on the scheduler at ``address``, or on a new local cluster of ``workers`` single-threaded
    workers (processes unless ``processes`` is False)."""
    if address:
        return cast(TaskRunner[Any], DaskTaskRunner(address=address))
    return cast(TaskRunner[Any], DaskTaskRunner(cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": processes, "dashboard_address": None,
    }))
