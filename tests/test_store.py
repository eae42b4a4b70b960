"""The zarr sample store: round trips, status protocol, killed and concurrent writers, fsspec URLs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import store_writer_proc as proc
import xarray as xr
import zarr
from astropy.io import fits
from made_fits import write_skies

from ood_core.store import (
    SCHEMA_VERSION,
    BackgroundWriteError,
    RunNotCompleteError,
    RunNotFoundError,
    RunWriter,
    StoreError,
    list_runs,
    open_run,
    open_store,
)

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "store_writer_proc.py"


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store.zarr")


def expected_samples(seed: int, n_batches: int = proc.N_BATCHES) -> dict[str, np.ndarray]:
    batches = [proc.make_batch(seed, i) for i in range(n_batches)]
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def assert_run_matches(ds: xr.Dataset, seed: int, n_batches: int = proc.N_BATCHES) -> None:
    for name, values in {**proc.make_inputs(seed), **expected_samples(seed, n_batches)}.items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)
        assert ds[name].dtype == values.dtype, name


def test_batches_read_back_identical_with_named_dims(store: str) -> None:
    run_id = proc.write_complete_run(store, seed=7)
    ds = open_run(store)
    assert ds.attrs["ood_run"]["run_id"] == run_id
    assert ds.attrs["ood_run"]["status"] == "complete"
    assert ds.sizes == {"input": 3, "channel": 3, "y": 16, "x": 16, "sample": 20, "criterion": 3, "reference": 4}
    assert ds["samples"].dims == ("sample", "channel", "y", "x")
    assert ds["samples_physical"].dims == ("sample", "y", "x")
    assert ds["input_mask"].dims == ("input", "y", "x")
    assert ds["sample_criteria"].dims == ("sample", "criterion")
    assert list(ds["criterion"].values) == list(proc.CRITERIA)
    assert ds["samples_physical"].attrs["units"] == "MJy/sr"
    assert ds["samples"].chunks is not None  # dask-backed
    assert_run_matches(ds, seed=7)
    # criterion coordinate selects by name
    np.testing.assert_array_equal(
        ds["sample_criteria"].sel(criterion="mean_angle_to_ood_deg").values,
        expected_samples(7)["sample_criteria"][:, 1],
    )


def test_plain_xarray_open_zarr_reads_a_run(store: str) -> None:
    run_id = proc.write_complete_run(store, seed=3)
    ds = xr.open_zarr(store, group=f"runs/{run_id}", consolidated=False)
    assert ds["samples"].dims == ("sample", "channel", "y", "x")
    assert_run_matches(ds, seed=3)
    assert ds["samples"].mean().compute() == pytest.approx(expected_samples(3)["samples"].mean(), rel=1e-6)


def test_memory_url_store_round_trip() -> None:
    url = f"memory://ood-test-{uuid.uuid4().hex}/store.zarr"
    run_id = proc.write_complete_run(url, seed=11)
    [info] = list_runs(url)
    assert (info.run_id, info.status, info.n_inputs, info.n_samples) == (run_id, "complete", 3, 20)
    assert_run_matches(open_run(url, run_id, chunks=None), seed=11)


def test_chunking_one_input_per_chunk_and_blocks_of_samples(store: str) -> None:
    run_id = proc.write_complete_run(store, seed=1)
    group = zarr.open_group(store, path=f"runs/{run_id}", mode="r")
    assert group["inputs"].chunks == (1, 3, 16, 16)
    assert group["samples"].chunks == (64, 3, 16, 16)  # several samples per chunk (default: <= 4 MiB, <= 64)
    assert group["samples"].shards == (256, 3, 16, 16)  # many chunks per shard (one file)
    assert group["sample_seed"].chunks[0] >= 1024
    assert group["samples"].metadata.dimension_names == ("sample", "channel", "y", "x")


def test_root_attribute_and_foreign_groups(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="no store"):
        open_store(url, create=False)
    root = open_store(url)
    assert root.attrs["ood_store"]["schema_version"] == SCHEMA_VERSION
    assert root.attrs["ood_store"]["library"] == "ood-synth"
    created = root.attrs["ood_store"]["created"]
    assert open_store(url).attrs["ood_store"]["created"] == created  # reopening does not rewrite it

    foreign = zarr.create_group(str(tmp_path / "foreign.zarr"))
    foreign.create_group("something")
    with pytest.raises(StoreError, match="not an ood-synth store"):
        open_store(str(tmp_path / "foreign.zarr"))
    future_url = str(tmp_path / "future.zarr")
    future = zarr.create_group(future_url, attributes={"ood_store": {"schema_version": 99}})
    assert future.attrs["ood_store"]["schema_version"] == 99
    with pytest.raises(StoreError, match="schema_version 99"):
        open_store(future_url)


def test_status_protocol_and_latest_complete(store: str) -> None:
    first = proc.write_complete_run(store, seed=1)
    second = proc.write_complete_run(store, seed=2)
    failed = proc.start_run(store, seed=3)
    failed.fail(RuntimeError("GPU fell over"))
    writing = proc.start_run(store, seed=4)
    writing.append_samples(**proc.make_batch(4, 0))
    writing.flush()  # appends are written in the background; flush waits for the commit

    infos = list_runs(store)
    assert [i.run_id for i in infos] == sorted(i.run_id for i in infos)
    assert [i.status for i in infos] == ["complete", "complete", "failed", "writing"]
    assert [i.n_samples for i in infos] == [20, 20, 0, 4]
    assert infos[0].acceptance_rate == 0.5
    assert infos[0].ended is not None and infos[3].ended is None
    assert [i.run_id for i in list_runs(store, include_incomplete=False)] == [first, second]

    assert open_run(store).attrs["ood_run"]["run_id"] == second  # newest complete, not the newer writing
    assert open_run(store, first).attrs["ood_run"]["run_id"] == first
    with pytest.raises(RunNotCompleteError, match="writing"):
        open_run(store, writing.run_id)
    partial = open_run(store, writing.run_id, allow_incomplete=True, chunks=None)
    assert partial.sizes["sample"] == 4
    np.testing.assert_array_equal(partial["samples"].values, proc.make_batch(4, 0)["samples"])
    failed_ds = open_run(store, failed.run_id, allow_incomplete=True)
    assert failed_ds.attrs["ood_run"]["status"] == "failed"
    assert failed_ds.attrs["ood_run"]["error"] == "RuntimeError: GPU fell over"
    with pytest.raises(RunNotFoundError):
        open_run(store, "20000101T000000000000Z-000000")
    with pytest.raises(StoreError):
        failed.append_samples(**proc.make_batch(3, 0))


def test_open_run_without_complete_runs_says_so(store: str) -> None:
    proc.start_run(store, seed=1)
    with pytest.raises(RunNotFoundError, match="no complete run"):
        open_run(store)


def test_complete_refuses_a_run_that_is_not_whole(store: str) -> None:
    writer = RunWriter.create(store, n_inputs=2, channels=3, height=8, width=8, criterion_names=["a"],
                              provenance={})
    with pytest.raises(StoreError, match="inputs were never written"):
        writer.complete()
    assert list_runs(store)[0].status == "writing"


def test_append_validates_the_batch(store: str) -> None:
    writer = proc.start_run(store, seed=1)
    batch = proc.make_batch(1, 0)
    with pytest.raises(StoreError, match="differ in length"):
        writer.append_samples(**{**batch, "sample_seed": batch["sample_seed"][:2]})
    with pytest.raises(StoreError, match="lossy cast"):
        writer.append_samples(**{**batch, "sample_seed": batch["sample_seed"].astype(np.float64)})
    with pytest.raises(StoreError, match="per-sample shape"):
        writer.append_samples(**{**batch, "samples": batch["samples"][:, :, :8]})
    assert writer.n_samples == 0
    assert writer.append_samples(**batch) == proc.BATCH
    with pytest.raises(StoreError, match="shape"):
        writer.write_inputs(**{**proc.make_inputs(1), "inputs": np.zeros((2, 3, 16, 16), np.float32)})


def test_provenance_updates_and_stages_survive_reopening(store: str) -> None:
    writer = proc.start_run(store, seed=5)
    writer.update_provenance(sampler={"acceptance_rate": np.float64(0.125), "tried": np.int64(64)})
    writer.mark_stage_complete("invert")
    writer.mark_stage_complete("prior")
    writer.mark_stage_complete("invert")
    with pytest.raises(StoreError, match="status"):
        writer.update_provenance(status="complete")
    writer.append_samples(**proc.make_batch(5, 0))
    writer.flush()

    resumed = RunWriter.open(store, writer.run_id)
    assert resumed.completed_stages() == ["invert", "prior"]
    assert resumed.provenance["sampler"] == {"acceptance_rate": 0.125, "tried": 64}
    assert resumed.n_samples == proc.BATCH


def test_resume_trims_rows_of_an_interrupted_append(store: str) -> None:
    writer = proc.start_run(store, seed=6)
    writer.append_samples(**proc.make_batch(6, 0))
    # an append killed half-way: one array grew, the commit never happened
    group = zarr.open_group(store, path=f"runs/{writer.run_id}", mode="r+")
    group["samples"].resize((proc.BATCH * 2, 3, 16, 16))
    resumed = RunWriter.open(store, writer.run_id)
    assert zarr.open_array(store, path=f"runs/{writer.run_id}/samples", mode="r").shape[0] == proc.BATCH
    for index in range(1, proc.N_BATCHES):
        resumed.append_samples(**proc.make_batch(6, index))
    resumed.complete()
    assert_run_matches(open_run(store, writer.run_id), seed=6)
    with pytest.raises(StoreError, match="only a 'writing' run"):
        RunWriter.open(store, writer.run_id)


def test_run_ids_never_share_a_group(store: str) -> None:
    kwargs = dict(n_inputs=1, channels=1, height=4, width=4, criterion_names=["a"], provenance={})
    RunWriter.create(store, run_id="fixed-id", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="already exists"):
        RunWriter.create(store, run_id="fixed-id", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="run id"):
        RunWriter.create(store, run_id="../escape", **kwargs)  # type: ignore[arg-type]


def _fits_pixels_round_trip_bit_exact(store: str, files: list[Path], unit: str) -> None:
    images = np.stack([fits.getdata(f).astype(np.float32) for f in files])
    assert fits.getheader(files[0])["BUNIT"] == unit
    n, size = images.shape[0], images.shape[-1]
    writer = RunWriter.create(store, n_inputs=n, channels=1, height=size, width=size,
                              criterion_names=["a"], provenance={}, units=unit)
    writer.write_inputs(images[:, None], np.isnan(images), images[:, None], images[:, None], np.zeros(n))
    writer.append_samples(images[:, None], images, images[:, None], np.arange(n), np.arange(n),
                          np.zeros((n, 1)), np.ones(n))
    writer.complete()
    ds = open_run(store, chunks=None)
    np.testing.assert_array_equal(ds["samples_physical"].values, images)
    assert ds["samples_physical"].attrs["units"] == unit
    assert ds["sample_parent"].values.tolist() == list(range(n))


def test_made_fits_pixels_round_trip_bit_exact(store: str, tmp_path: Path) -> None:
    files = write_skies(tmp_path / "skies", 3, size=48, holes=True, unit="MJy/sr")  # NaN holes too
    assert all(np.isnan(fits.getdata(f)).any() for f in files)
    _fits_pixels_round_trip_bit_exact(store, files, "MJy/sr")


def test_real_fits_pixels_round_trip_bit_exact(store: str, fits_dir: Path) -> None:
    files = sorted((fits_dir / "cutouts_128").glob("glimpse_*.fits"))[:3]
    assert len(files) == 3, f"GLIMPSE cutouts missing from the dev set at {fits_dir}"
    _fits_pixels_round_trip_bit_exact(store, files, "MJy/sr")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _wait_for_committed(store: str, run_id: str, minimum: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = {i.run_id: i for i in list_runs(store)}
        if run_id in infos and infos[run_id].n_samples >= minimum:
            return
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {minimum} samples")


def test_sigkilled_writer_leaves_a_writing_run_that_readers_skip(store: str) -> None:
    child = subprocess.Popen([sys.executable, str(HELPER), store, "killable", "21"], stdout=subprocess.PIPE,
                             text=True, env=_env(), cwd=REPO)
    try:
        assert child.stdout is not None
        first = child.stdout.readline().split()
        second = child.stdout.readline().split()
        assert first[0] == "COMPLETE" and second[0] == "WRITING", (first, second)
        _wait_for_committed(store, second[1], minimum=2 * proc.BATCH)
        assert list_runs(store)[-1].status == "writing"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    infos = {i.run_id: i for i in list_runs(store)}
    assert infos[first[1]].status == "complete"
    assert infos[second[1]].status == "writing"
    ds = open_run(store)
    assert ds.attrs["ood_run"]["run_id"] == first[1]
    assert_run_matches(ds, seed=21)
    with pytest.raises(RunNotCompleteError):
        open_run(store, second[1])
    # the killed run's committed samples are intact and it can be resumed
    partial = open_run(store, second[1], allow_incomplete=True, chunks=None)
    n_committed = partial.sizes["sample"]
    assert n_committed >= 2 * proc.BATCH and n_committed % proc.BATCH == 0
    assert_run_matches(partial, seed=22, n_batches=n_committed // proc.BATCH)
    resumed = RunWriter.open(store, second[1])
    resumed.complete()
    assert open_run(store).attrs["ood_run"]["run_id"] == second[1]


def test_two_concurrent_writer_processes_both_complete(store: str) -> None:
    start_at = time.time() + 4.0  # both processes have imported everything by then
    children = [
        subprocess.Popen([sys.executable, str(HELPER), store, "complete", str(seed), str(start_at)],
                         stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
        for seed in (31, 32)
    ]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    run_ids = [out.split()[1] for out in outputs]
    assert len(set(run_ids)) == 2
    infos = {i.run_id: i for i in list_runs(store)}
    assert sorted(infos) == sorted(run_ids)
    assert all(infos[r].status == "complete" for r in run_ids)
    for run_id, seed in zip(run_ids, (31, 32), strict=True):
        assert_run_matches(open_run(store, run_id, chunks=None), seed=seed)


# --------------------------------------------------------------------------------------------- background writer


def test_complete_runs_open_with_consolidated_metadata(store: str) -> None:
    first = proc.write_complete_run(store, seed=41)
    ds = xr.open_zarr(f"{store}/runs/{first}", consolidated=True)  # the run group holds its own copy
    assert_run_matches(ds, seed=41)
    assert ds.attrs["ood_run"]["status"] == "complete"
    # a run started after the consolidation is still listed and resumable: the library reads the real metadata
    writing = proc.start_run(store, seed=42)
    writing.append_samples(**proc.make_batch(42, 0))
    writing.flush()
    assert {i.run_id: i.n_samples for i in list_runs(store)}[writing.run_id] == proc.BATCH
    assert RunWriter.open(store, writing.run_id).n_samples == proc.BATCH
    second = proc.write_complete_run(store, seed=43)  # completing consolidates that run's group only
    for run_id, seed in ((first, 41), (second, 43)):
        assert_run_matches(xr.open_zarr(f"{store}/runs/{run_id}", consolidated=True), seed=seed)
        assert_run_matches(open_run(store, run_id), seed=seed)


def test_appends_are_committed_in_the_background_and_flush_waits(store: str) -> None:
    writer = RunWriter.create(store, n_inputs=proc.N_INPUTS, channels=proc.CHANNELS, height=proc.SIZE,
                              width=proc.SIZE, criterion_names=proc.CRITERIA, provenance=proc.provenance(51),
                              units="MJy/sr", expected_samples=proc.BATCH * proc.N_BATCHES + 100)
    writer.write_inputs(**proc.make_inputs(51))
    for index in range(proc.N_BATCHES):
        assert writer.append_samples(**proc.make_batch(51, index)) == proc.BATCH * (index + 1)
    assert writer.n_samples == proc.BATCH * proc.N_BATCHES  # appended, whatever the thread has written yet
    writer.flush()
    assert writer.committed_samples == writer.n_samples
    assert [i.n_samples for i in list_runs(store)] == [writer.n_samples]
    # the pre-sized arrays were cut to the committed samples
    group = zarr.open_group(store, path=f"runs/{writer.run_id}", mode="r")
    assert group["samples"].shape[0] == group["sample_seed"].shape[0] == writer.n_samples
    writer.complete()
    assert_run_matches(open_run(store), seed=51)


def test_a_slow_writer_commits_within_the_commit_interval(store: str) -> None:
    writer = proc.start_run(store, seed=52)
    writer.append_samples(**proc.make_batch(52, 0))  # far less than a shard: it waits for more, 2 s at most
    _wait_for_committed(store, writer.run_id, minimum=proc.BATCH, timeout=10.0)
    assert writer.committed_samples == proc.BATCH


def _block_first_shard(store: str, run_id: str) -> Path:
    """A directory where the first shard of ``samples`` must go: writing the shard fails (a real OSError)."""
    blocker = Path(store) / "runs" / run_id / "samples" / "c" / "0" / "0" / "0" / "0"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("not a shard")
    return blocker


def test_a_background_write_error_is_raised_by_the_next_call_and_nothing_is_committed(store: str) -> None:
    writer = proc.start_run(store, seed=53)
    blocker = _block_first_shard(store, writer.run_id)
    writer.append_samples(**proc.make_batch(53, 0))
    with pytest.raises(BackgroundWriteError, match="background") as caught:
        writer.flush()
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(BackgroundWriteError):
        writer.append_samples(**proc.make_batch(53, 1))
    with pytest.raises(BackgroundWriteError):
        writer.complete()
    assert list_runs(store)[0].status == "writing" and list_runs(store)[0].n_samples == 0
    # the obstacle gone, a new writer resumes from the last commit and completes the run
    shutil.rmtree(blocker)
    resumed = RunWriter.open(store, writer.run_id)
    assert resumed.n_samples == 0
    for index in range(proc.N_BATCHES):
        resumed.append_samples(**proc.make_batch(53, index))
    resumed.complete()
    assert_run_matches(open_run(store, writer.run_id), seed=53)


def test_reopening_a_run_in_the_same_process_lets_the_old_writer_finish_first(store: str) -> None:
    old = proc.start_run(store, seed=54)
    for index in range(3):
        old.append_samples(**proc.make_batch(54, index))
    new = RunWriter.open(store, old.run_id)  # e.g. a retried task: the old writer's batches are written first
    assert new.n_samples == 3 * proc.BATCH
    with pytest.raises(BackgroundWriteError, match="abandoned"):
        old.append_samples(**proc.make_batch(54, 3))
    for index in range(3, proc.N_BATCHES):
        new.append_samples(**proc.make_batch(54, index))
    new.complete()
    assert_run_matches(open_run(store, old.run_id), seed=54)


def test_fail_drops_what_was_not_committed(store: str) -> None:
    writer = proc.start_run(store, seed=55)
    writer.append_samples(**proc.make_batch(55, 0))
    writer.flush()
    for index in range(1, proc.N_BATCHES):
        writer.append_samples(**proc.make_batch(55, index))
    writer.fail(RuntimeError("out of memory"))
    committed = list_runs(store)[0].n_samples
    time.sleep(0.3)  # nothing is committed after fail() returned
    [info] = list_runs(store)
    assert info.status == "failed" and info.n_samples == committed
    assert committed % proc.BATCH == 0 and committed >= proc.BATCH
