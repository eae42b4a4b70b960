"""The sharded sample stage (issue 12): regions of pre-sized arrays, one RegionWriter each, merged at the end; the
same samples bit for bit with 1 or N shards, in one process or as Prefect tasks on a 2-worker local Dask cluster;
a worker killed mid-shard costs a retry of that shard only, and the run completes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import store_writer_proc as proc
import zarr
from made_fits import write_skies

from ood_core.pipeline import PipelineParameters, SlotPlan, run_in_process
from ood_core.store import (
    RegionWriter,
    RunWriter,
    StoreError,
    assign_regions,
    list_runs,
    merge_regions,
    open_run,
    region_states,
    validate_store,
)

SAMPLE_NAMES = ("samples", "samples_physical", "sample_latents", "sample_seed", "sample_parent", "sample_criteria",
                "sample_nearest_input_distance")


@pytest.fixture()
def few_shot(tmp_path: Path) -> list[str]:
    folder = tmp_path / "inputs"
    write_skies(folder, 4)  # demo skies (tests/made_fits.py)
    return [str(folder)]


def params_for(inputs: list[str], store: Path, **overrides: object) -> PipelineParameters:
    values: dict[str, object] = dict(inputs=inputs, store=str(store), samples=12, steps=2, t0=400, reference_count=4,
                                     batch_size=2, device="cpu", seed=11, prior="ppca", candidate_budget=600)
    values.update(overrides)
    return PipelineParameters(**values)  # type: ignore[arg-type]


def samples_of(store: Path) -> dict[str, np.ndarray]:
    ds = open_run(str(store), chunks=None)
    return {name: ds[name].values for name in SAMPLE_NAMES}


def assert_same_samples(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for name in SAMPLE_NAMES:
        assert a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# --------------------------------------------------------------------------------------------- plan and store


def test_slot_plan_splits_whole_blocks_into_regions() -> None:
    plan = SlotPlan(samples=10, block=3, tries=5)
    assert plan.blocks == 4 and list(plan.slots(3)) == [9]
    assert [list(r) for r in plan.shard_blocks(2)] == [[0, 1], [2, 3]]
    assert plan.regions(2) == [(0, 6), (6, 10)]
    assert plan.regions(3) == [(0, 3), (3, 6), (6, 10)]
    assert plan.regions(9) == [(0, 3), (3, 6), (6, 9), (9, 10)]  # no more shards than blocks


def _shard_batch(seed: int, rows: int) -> dict[str, Any]:
    batch = proc.make_batch(seed, 0)
    return {name: values[:rows] for name, values in batch.items()}


def test_shards_fill_their_regions_and_the_merge_closes_the_gaps(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    writer = proc.start_run(store, seed=61)
    assign_regions(writer, [(0, 4), (4, 8), (8, 10)], unit=2)
    group = zarr.open_group(store, path=f"runs/{writer.run_id}", mode="r")
    assert group["samples"].shape[0] == 10 and group["samples"].shards[0] == 2 and group["sample_seed"].chunks == (2,)
    with pytest.raises(StoreError, match="written by shards"):
        writer.append_samples(**_shard_batch(61, 1))
    batches = {0: _shard_batch(70, 4), 1: _shard_batch(71, 3), 2: _shard_batch(72, 1)}  # regions 1, 2 not full
    for index in (2, 0, 1):  # any order, each in its own writer
        shard = RegionWriter(store, writer.run_id, index)
        shard.append_samples(**batches[index], checkpoint={"next_block": 9})
        with pytest.raises(ValueError, match="end of this writer's region"):
            shard.append_samples(**_shard_batch(73, 4))
        shard.complete()
    assert list_runs(store)[0].status == "writing" and list_runs(store)[0].n_samples == 0
    states = region_states(writer)
    assert [(s.rows, s.done, s.checkpoint) for s in states] == [(4, True, {"next_block": 9})] * 1 + [
        (3, True, {"next_block": 9}), (1, True, {"next_block": 9})]
    reopened = RunWriter.open(store, writer.run_id)  # does not trim the arrays the shards own
    assert zarr.open_array(store, path=f"runs/{writer.run_id}/samples", mode="r").shape[0] == 10
    total, _ = merge_regions(reopened)
    assert total == 8 and reopened.committed_samples == 8 and not reopened.sample_regions
    reopened.complete()
    ds = open_run(store, chunks=None)
    for name in SAMPLE_NAMES:
        expected = np.concatenate([batches[0][name], batches[1][name], batches[2][name]])
        np.testing.assert_array_equal(ds[name].values, expected, err_msg=name)
    assert validate_store(store) == []


def test_a_reopened_shard_resumes_after_its_committed_rows_and_merge_waits_for_every_shard(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    writer = proc.start_run(store, seed=62)
    assign_regions(writer, [(0, 4), (4, 8)], unit=4)
    first = RegionWriter(store, writer.run_id, 1)
    first.append_samples(**_shard_batch(80, 2), checkpoint={"next_block": 1})
    first.flush()
    # an attempt killed after writing its next rows and before committing them
    group = zarr.open_group(store, path=f"runs/{writer.run_id}", mode="r+")
    for name, values in _shard_batch(81, 2).items():
        group[name][6:8] = values
    again = RegionWriter(store, writer.run_id, 1)
    assert again.rows == 2 and again.checkpoint == {"next_block": 1} and not again.done
    again.append_samples(**_shard_batch(82, 2), checkpoint={"next_block": 2})
    again.complete()
    with pytest.raises(StoreError, match=r"shards \[0\] are not done"):
        merge_regions(RunWriter.open(store, writer.run_id))
    zero = RegionWriter(store, writer.run_id, 0)
    zero.complete()
    total, _ = merge_regions(RunWriter.open(store, writer.run_id))
    assert total == 4
    seeds = zarr.open_array(store, path=f"runs/{writer.run_id}/sample_seed", mode="r")[...]
    np.testing.assert_array_equal(seeds, np.concatenate([_shard_batch(80, 2)["sample_seed"],
                                                         _shard_batch(82, 2)["sample_seed"]]))


# --------------------------------------------------------------------------------------------- pipeline


def test_one_or_three_shards_in_one_process_give_the_same_samples(few_shot: list[str], tmp_path: Path) -> None:
    one = run_in_process(params_for(few_shot, tmp_path / "one.zarr", samples=7, batch_size=2))
    three = run_in_process(params_for(few_shot, tmp_path / "three.zarr", samples=7, batch_size=2, shards=3))
    assert one.n_samples == three.n_samples == 7
    assert_same_samples(samples_of(tmp_path / "one.zarr"), samples_of(tmp_path / "three.zarr"))
    record = open_run(str(tmp_path / "three.zarr")).attrs["ood_run"]
    assert record["sampler"]["shards"] == 3 and record["sharding"]["regions"] == [[0, 2], [2, 4], [4, 7]]
    assert record["sampler"]["tried"] == open_run(str(tmp_path / "one.zarr")).attrs["ood_run"]["sampler"]["tried"]
    assert validate_store(str(tmp_path / "three.zarr")) == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_two_dask_workers_give_the_unsharded_samples(few_shot: list[str], tmp_path: Path) -> None:
    from flows.pipeline import pipeline_flow

    run_in_process(params_for(few_shot, tmp_path / "one.zarr", samples=8))
    result = pipeline_flow(params_for(few_shot, tmp_path / "two.zarr", samples=8, shards=2, dask_workers=2))
    assert result["n_samples"] == 8
    assert_same_samples(samples_of(tmp_path / "one.zarr"), samples_of(tmp_path / "two.zarr"))
    assert validate_store(str(tmp_path / "two.zarr")) == []


def _kill_a_worker_mid_shard(client: Any, store: Path, stop: threading.Event) -> dict[str, Any]:
    """Wait until a shard has committed a block but is not done, then SIGKILL the worker process running a shard."""
    seen: dict[str, Any] = {"errors": []}
    while not stop.is_set():
        time.sleep(0.1)
        try:  # the store is being written meanwhile: a half-written record just means "look again"
            runs = list_runs(str(store)) if store.exists() else []
            if not runs:
                continue
            shards = zarr.open_group(str(store), path=f"runs/{runs[0].run_id}", mode="r").get("shards")
            if shards is None:
                continue
            states = [dict(g.attrs.get("ood_shard") or {}) for _, g in shards.groups()]
            if not any(s.get("rows", 0) > 0 and not s.get("done") for s in states):
                continue
            busy = [address for address, keys in client.processing().items() if keys]
            if not busy:
                continue
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        except Exception as exc:
            seen["errors"].append(repr(exc))
            continue
        os.kill(pid, signal.SIGKILL)
        seen.update(pid=pid, states=states)
        return seen
    return seen


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_worker_killed_mid_shard_costs_a_retry_and_the_run_completes(few_shot: list[str], tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from flows.pipeline import pipeline_flow

    run_in_process(params_for(few_shot, tmp_path / "one.zarr"))
    store = tmp_path / "two.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        stop = threading.Event()
        killed: dict[str, Any] = {}
        killer = threading.Thread(target=lambda: killed.update(_kill_a_worker_mid_shard(client, store, stop)))
        killer.start()
        try:
            result = pipeline_flow(params_for(few_shot, store, shards=2, dask_address=cluster.scheduler_address))
        finally:
            stop.set()
            killer.join()
    assert killed.get("pid"), f"no worker was killed mid-shard: {killed}"
    assert result["n_samples"] == 12
    assert_same_samples(samples_of(tmp_path / "one.zarr"), samples_of(store))
    assert validate_store(str(store)) == []
