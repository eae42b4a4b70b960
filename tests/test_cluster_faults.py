"""A sharded run whose Dask scheduler is killed mid-run (issue 28): the flow waits a bounded time for the scheduler
to come back at its address; when it does not, the run fails as resumable, and a resume on a new scheduler gives
the bytes of a plain run. Also on an S3 store served on the loopback. Scheduler and workers are real processes
(`dask scheduler`, `dask worker`), killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from flows import sample_shards as sharding
from flows.pipeline import pipeline_flow
from ood_core.pipeline import PipelineParameters, run_in_process
from ood_core.store import list_runs, open_run
from ood_core.store.schema import validate_store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
SAMPLE_NAMES = ("samples", "samples_physical", "sample_latents", "sample_seed", "sample_parent", "sample_criteria",
                "sample_nearest_input_distance")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A scheduler process at a fixed address and two single-threaded worker processes."""

    def __init__(self, port: int) -> None:
        self.address = f"tcp://127.0.0.1:{port}"
        self.port = port
        self.processes: list[subprocess.Popen[bytes]] = []
        self.scheduler: subprocess.Popen[bytes] | None = None

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def start(self) -> Cluster:
        self.scheduler = self._spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                                     str(self.port), "--no-dashboard")
        for _ in range(2):
            self._spawn("distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-dashboard")
        from distributed import Client

        with Client(self.address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
        return self

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture()
def clusters() -> Iterator[list[Cluster]]:
    made: list[Cluster] = []
    yield made
    for cluster in made:
        cluster.stop()


def params_for(inputs: Path, store: str, **overrides: Any) -> PipelineParameters:
    values: dict[str, Any] = dict(inputs=[str(inputs)], store=store, samples=12, steps=2, t0=400, reference_count=4,
                                  batch_size=2, device="cpu", seed=11, prior="ppca", candidate_budget=600)
    values.update(overrides)
    return PipelineParameters(**values)


@pytest.fixture(scope="module")
def plain(skies: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The samples of the same run made in one go, in one process, unsharded."""
    store = str(tmp_path_factory.mktemp("plain") / "plain.zarr")
    run_in_process(params_for(skies, store))
    return samples_of(store)


def samples_of(store: str, **options: Any) -> dict[str, np.ndarray]:
    ds = open_run(store, chunks=None, **options)
    return {name: ds[name].values for name in SAMPLE_NAMES}


def assert_same_samples(made: dict[str, np.ndarray], plain: dict[str, np.ndarray]) -> None:
    for name in SAMPLE_NAMES:
        np.testing.assert_array_equal(made[name], plain[name], err_msg=name)


def kill_mid_shard(store: str, cluster: Cluster, stop: threading.Event, options: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL the scheduler once a shard has committed a block and is not done."""
    seen: dict[str, Any] = {"errors": []}
    while not stop.is_set():
        time.sleep(0.2)
        try:
            runs = list_runs(store, storage_options=options)
            if not runs:
                continue
            shards = zarr.open_group(store, path=f"runs/{runs[0].run_id}/shards", mode="r", storage_options=(
                {**options, "use_listings_cache": False} if store.startswith("s3://") else None))
            states = [dict(g.attrs.get("ood_shard") or {}) for _, g in shards.groups()]
        except Exception as exc:  # not made yet, or being written: look again
            seen["errors"] = [*seen["errors"][-4:], repr(exc)]
            continue
        if any(s.get("rows", 0) > 0 and not s.get("done") for s in states):
            cluster.kill_scheduler()
            return {"states": states}
    return seen


def killed_then_resumed(skies: Path, store: str, clusters: list[Cluster], monkeypatch: pytest.MonkeyPatch,
                        options: dict[str, Any] | None = None) -> str:
    """A sharded run whose scheduler is killed and stays away; resumed on a new scheduler; returns the run id."""
    options = options or {}
    monkeypatch.setattr(sharding, "SCHEDULER_WAIT_S", 3.0)
    first = Cluster(free_port()).start()
    clusters.append(first)
    params = params_for(skies, store, shards=2, dask_address=first.address)
    stop, killed = threading.Event(), {}
    killer = threading.Thread(target=lambda: killed.update(kill_mid_shard(store, first, stop, options)))
    killer.start()
    try:
        with pytest.raises(Exception) as failure:
            pipeline_flow(params)
    finally:
        stop.set()
        killer.join()
    assert killed.get("states"), f"the scheduler was not killed mid-shard: {killed}"
    assert "did not come back within 3 s" in str(failure.value), repr(failure.value)
    [run] = list_runs(store, storage_options=options)
    assert run.status == "failed" and run.resumable

    second = Cluster(free_port()).start()  # a new scheduler elsewhere: the resume names it
    clusters.append(second)
    resumed = params.model_copy(update={"dask_address": second.address})
    result = pipeline_flow(resumed, resume_run_id=run.run_id)
    assert result["run_id"] == run.run_id and result["n_samples"] == 12
    return run.run_id


def test_a_killed_scheduler_fails_the_run_resumably_and_the_resume_is_bit_identical(
        skies: Path, plain: dict[str, np.ndarray], tmp_path: Path, clusters: list[Cluster],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store.zarr")
    run_id = killed_then_resumed(skies, store, clusters, monkeypatch)
    assert_same_samples(samples_of(store), plain)
    assert validate_store(store) == []
    attempts = open_run(store, run_id).attrs["ood_run"]["attempts"]
    assert [(a["how"], a["outcome"]) for a in attempts] == [("created", "failed"), ("resumed", "complete")]
    assert "scheduler" in attempts[0]["error"]


def test_a_scheduler_back_within_the_wait_lets_the_run_go_on(
        skies: Path, plain: dict[str, np.ndarray], tmp_path: Path, clusters: list[Cluster],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store.zarr")
    monkeypatch.setattr(sharding, "SCHEDULER_WAIT_S", 240.0)
    cluster = Cluster(free_port()).start()
    clusters.append(cluster)
    stop, killed = threading.Event(), {}

    def kill_and_restart() -> None:
        killed.update(kill_mid_shard(store, cluster, stop, {}))
        if killed:
            for process in cluster.processes:  # its workers go with it, as a cluster manager restarts both
                process.kill()
            time.sleep(2)
            clusters.append(Cluster(cluster.port).start())

    restarter = threading.Thread(target=kill_and_restart)
    restarter.start()
    try:
        result = pipeline_flow(params_for(skies, store, shards=2, dask_address=cluster.address))
    finally:
        stop.set()
        restarter.join()
    assert killed.get("states"), "the scheduler was not killed mid-shard"
    assert result["n_samples"] == 12
    assert_same_samples(samples_of(store), plain)
    [run] = list_runs(store)
    assert run.status == "complete"
    assert [a["outcome"] for a in open_run(store).attrs["ood_run"]["attempts"]] == ["complete"]


@pytest.fixture()
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint on the loopback (moto's server mode) with a bucket, configured as users configure one: the
    AWS_* environment variables, which the Dask worker processes inherit."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://{host}:{port}")):
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"ood-test-{uuid.uuid4().hex[:8]}"  # moto keeps its buckets per process, across servers
    s3fs.S3FileSystem().mkdir(bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_on_s3_a_killed_scheduler_fails_the_run_resumably_and_the_resume_is_bit_identical(
        skies: Path, plain: dict[str, np.ndarray], tmp_path: Path, clusters: list[Cluster],
        monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> None:
    store = f"{s3_endpoint}/store.zarr"
    run_id = killed_then_resumed(skies, store, clusters, monkeypatch)
    assert_same_samples(samples_of(store), plain)
    assert validate_store(store) == []
    leases = open_run(store, run_id).attrs["ood_run"]["attempts"]
    assert [(a["lease"], a["outcome"]) for a in leases] == [(1, "failed"), (2, "complete")]
