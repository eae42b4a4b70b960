"""Damaged stores are named, never read as data (issue 13, items 5, 6, 8, 9): checksums, robust listing,
heartbeat and stale runs, folders that are not stores. Damage is done to real files of real stores."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import store_writer_proc as proc
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from ood_cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from ood_core.store import (
    CHECKSUM_ATTR,
    RunWriter,
    StoreError,
    StoreIntegrityError,
    audit_store,
    crc32c,
    export_run_fits,
    list_runs,
    open_run,
    open_store,
    validate_store,
)
from ood_core.store.heartbeat import beat, start_heartbeat
from ood_core.store.integrity import _digest
from ood_core.store.recording import RecordingStore

WRITER = Path(__file__).with_name("store_writer_proc.py")


@pytest.fixture
def three_runs(tmp_path: Path) -> tuple[str, list[str]]:
    store = str(tmp_path / "store.zarr")
    return store, [proc.write_complete_run(store, seed) for seed in (1, 2, 3)]


def chunk_files(store: str, run_id: str, array: str) -> list[Path]:
    return sorted(p for p in (Path(store) / "runs" / run_id / array / "c").rglob("*") if p.is_file())


def test_complete_run_records_a_checksum_for_every_array(three_runs: tuple[str, list[str]]) -> None:
    store, run_ids = three_runs
    group = zarr.open_group(store, path=f"runs/{run_ids[0]}", mode="r")
    record = group.attrs[CHECKSUM_ATTR]
    assert isinstance(record, dict)
    arrays = record["arrays"]
    assert sorted(arrays) == sorted(name for name, _ in group.arrays())
    assert arrays["samples"]["objects"] == len(chunk_files(store, run_ids[0], "samples")) >= 1
    assert arrays["samples"]["shape"] == [20, 3, 16, 16] and re.fullmatch("[0-9a-f]{8}", arrays["samples"]["crc32c"])
    assert record["algorithm"].startswith("crc32c")
    assert validate_store(store) == []
    assert all(check.ok and check.status == "complete" for check in audit_store(store))


def test_sha256_records_of_earlier_versions_still_verify(three_runs: tuple[str, list[str]]) -> None:
    store, run_ids = three_runs
    group = zarr.open_group(store, path=f"runs/{run_ids[0]}", mode="r+")
    record = dict(group.attrs[CHECKSUM_ATTR])
    old = {}
    for name, entry in record["arrays"].items():
        objects, digest = sync(_digest(group.store, f"{group.path}/{name}/", "sha256"))
        assert objects == entry["objects"]
        old[name] = {key: value for key, value in entry.items() if key != "crc32c"} | {"sha256": digest}
    group.update_attributes({CHECKSUM_ATTR: {"algorithm": "sha256 of the stored objects, in key order",
                                             "arrays": old}})
    open_run(store, run_ids[0])
    chunk = chunk_files(store, run_ids[0], "samples")[0]
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match="samples: chunk contents differ from the checksum"):
        open_run(store, run_ids[0])


@pytest.mark.parametrize("array", ["samples", "samples_physical"])
def test_deleted_chunk_is_named_by_open_run_export_and_check(
    three_runs: tuple[str, list[str]], tmp_path: Path, array: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_ids = three_runs
    damaged = run_ids[1]
    stored = chunk_files(store, damaged, array)
    stored[-1].unlink()
    missing = f"1 of its {len(stored)} stored chunk objects (chunks or shards) are missing"
    # Before the checksums, this chunk read as NaN without a word.
    raw = open_run(store, damaged, chunks=None, verify=False)
    assert np.isnan(raw[array].values).any()
    with pytest.raises(StoreIntegrityError, match=re.escape(f"runs/{damaged}/{array}: {missing}")):
        open_run(store, damaged)
    with pytest.raises(StoreIntegrityError, match=f"run {damaged} is damaged"):
        export_run_fits(store, tmp_path / "fits", damaged)
    assert not list((tmp_path / "fits").glob("*.fits"))
    open_run(store, run_ids[0])  # the runs beside it are intact
    checks = {c.run_id: c for c in audit_store(store)}
    assert [c.ok for c in checks.values()] == [True, False, True]
    assert checks[damaged].problems == [f"runs/{damaged}/{array}: {missing}"]

    assert main(["check", store]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert f"{damaged:<32} complete  DAMAGED" in out and missing in out
    assert "3 run(s) checked (metadata, shapes and chunk checksums): 2 intact, 1 damaged or broken" in out
    assert main(["export-fits", store, str(tmp_path / "out"), "--run", damaged]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"run {damaged} is damaged" in err and f"runs/{damaged}/{array}" in err
    assert not list((tmp_path / "out").glob("*"))


def test_deleted_array_metadata_is_named_even_without_content_verification(
    three_runs: tuple[str, list[str]]
) -> None:
    store, run_ids = three_runs
    (Path(store) / "runs" / run_ids[2] / "samples" / "zarr.json").unlink()
    # xarray alone silently drops the variable.
    assert "samples" not in xr.open_zarr(store, group=f"runs/{run_ids[2]}", consolidated=False).data_vars
    with pytest.raises(StoreIntegrityError, match=r"samples: the array is missing \(its metadata, zarr.json"):
        open_run(store, run_ids[2], verify=False)
    [check] = [c for c in audit_store(store, content=False) if c.run_id == run_ids[2]]
    assert any("samples: the array is missing" in p for p in check.problems)


def test_flipped_bytes_in_a_chunk_are_named(three_runs: tuple[str, list[str]]) -> None:
    store, run_ids = three_runs
    chunk = chunk_files(store, run_ids[0], "input_latents")[0]
    data = bytearray(chunk.read_bytes())
    data[-5] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreIntegrityError, match="input_latents: chunk contents differ from the checksum"):
        open_run(store, run_ids[0])
    # A leftover partial write of a killed process is not part of the array.
    (chunk.parent / (chunk.name + ".4f2a.partial")).write_bytes(b"junk")
    open_run(store, run_ids[1])


def test_one_unreadable_run_record_does_not_hide_the_others(
    three_runs: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_ids = three_runs
    record = Path(store) / "runs" / run_ids[1] / "zarr.json"
    record.write_text(record.read_text()[:300])
    # the catalogue lists the run as it completed (no run group is read); reading the groups finds the damage
    assert [r.status for r in list_runs(store)] == ["complete"] * 3
    runs = list_runs(store, from_catalogue=False)
    assert [(r.run_id, r.status) for r in runs] == [
        (run_ids[0], "complete"), (run_ids[1], "broken"), (run_ids[2], "complete")]
    assert runs[1].problem is not None and "JSONDecodeError" in runs[1].problem
    assert open_run(store).attrs["ood_run"]["run_id"] == run_ids[2]
    # every healthy run listed first, non-zero only at the end
    assert main(["runs", store, "--read-runs"]) == EXIT_FAILED
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[1].split()[:4] == [run_ids[0], "complete", "3", "20"]
    assert lines[2].split()[:2] == [run_ids[1], "broken"] and lines[3].split()[:2] == [run_ids[2], "complete"]
    assert f"{run_ids[1]}: broken: run record unreadable (JSONDecodeError" in captured.out
    assert "1 run(s) with an unreadable record" in captured.err
    problems = validate_store(store)
    assert len(problems) == 1 and problems[0].startswith(f"runs/{run_ids[1]}: run group unreadable")
    assert [c.status for c in audit_store(store)] == ["complete", "broken", "complete"]


def test_corrupt_chunk_is_a_named_problem_not_a_codec_traceback(
    three_runs: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_ids = three_runs
    chunk = chunk_files(store, run_ids[0], "samples_physical")[0]
    data = bytearray(chunk.read_bytes())
    data[20:40] = b"x" * 20  # zstd itself would raise "Data corruption detected"
    chunk.write_bytes(bytes(data))
    assert main(["export-fits", store, str(tmp_path / "fits"), "--run", run_ids[0]]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "samples_physical: chunk contents differ" in err and "Traceback" not in err


def test_writing_run_has_a_heartbeat_and_a_dead_one_reads_as_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store.zarr")
    live = proc.start_run(store, seed=5)
    [info] = list_runs(store)
    assert info.status == "writing" and not info.stale and info.heartbeat is not None
    assert info.heartbeat["pid"] == os.getpid()
    assert list_runs(store, stale_after=0)[0].stale  # silent for longer than the timeout
    assert "no heartbeat for" in str(list_runs(store, stale_after=0)[0].problem)
    live.close()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    writer = subprocess.Popen([sys.executable, str(WRITER), store, "killable", "7"], stdout=subprocess.PIPE,
                              text=True, env=env)
    assert writer.stdout is not None
    lines = [writer.stdout.readline().split() for _ in range(2)]
    killed = dict(lines)["WRITING"]
    [running] = [r for r in list_runs(store) if r.run_id == killed]
    assert not running.stale and running.heartbeat is not None and running.heartbeat["pid"] == writer.pid
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [dead] = [r for r in list_runs(store) if r.run_id == killed]
    assert dead.status == "writing" and dead.stale
    assert dead.problem == f"its writer (pid {writer.pid} on {dead.heartbeat['host']}) is no longer running"  # type: ignore[index]
    assert main(["runs", store]) == EXIT_OK
    out = capsys.readouterr().out
    assert any(line.split()[:2] == [killed, "stale"] for line in out.splitlines())
    assert f"continue it: ood run --resume {killed} --store {store}" in out


def test_heartbeat_thread_beats_without_saves_and_stops_when_complete(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    writer = proc.start_run(store, seed=8)
    group = zarr.open_group(store, path=f"runs/{writer.run_id}", mode="r+")

    def beat_time() -> str:
        fresh = zarr.open_group(store, path=f"runs/{writer.run_id}", mode="r")
        return str(fresh.attrs["ood_run"]["heartbeat"]["time"])  # type: ignore[index, call-overload]

    first = beat_time()
    stop = start_heartbeat(writer, group, "ood_run", interval=0.05)
    deadline = time.monotonic() + 10
    while beat_time() == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert beat_time() != first
    for index in range(proc.N_BATCHES):
        writer.append_samples(**proc.make_batch(8, index))
    writer.complete()  # the provenance the beats did not touch is intact
    time.sleep(0.3)
    assert not beat(group, "ood_run")  # a complete run takes no more beats
    stop.set()
    assert open_run(store).attrs["ood_run"]["sampler"]["acceptance_rate"] == 0.5


def test_a_folder_that_is_not_a_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"an existing folder that is not a zarr store \(1 entries: notes\.txt\)"):
        open_store(str(data))
    with pytest.raises(StoreError, match="not a zarr store"):
        RunWriter.create(str(data), n_inputs=1, channels=1, height=4, width=4, criterion_names=["a"],
                         provenance={})
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"]
    assert main(["run", str(tmp_path), "--store", str(data)]) == EXIT_USAGE
    assert "not a zarr store" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    open_store(str(tmp_path / "empty"))  # an empty folder may become a store
    with pytest.raises(StoreError, match="is not a folder"):
        open_store(str(data / "notes.txt"))


def test_a_run_killed_while_being_created_is_marked_failed_when_resumed(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    writer = proc.start_run(store, seed=9)
    writer.close()
    for name in ("criterion", "sample_nearest_input_distance"):  # what a kill inside create() leaves unmade
        shutil.rmtree(Path(store) / "runs" / writer.run_id / name)
    with pytest.raises(StoreError, match=r"cannot be resumed: interrupted while the run was being created \(arrays "
                                         r"\['sample_nearest_input_distance', 'criterion'\]"):
        RunWriter.open(store, writer.run_id)
    [info] = list_runs(store)
    assert info.status == "failed" and "interrupted while the run was being created" in str(info.problem)


def test_a_run_folder_left_empty_by_a_kill_is_no_run(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    run_id = proc.write_complete_run(store, seed=1)
    leftover = Path(store) / "runs" / "20990101T000000000000Z-abcdef"
    leftover.mkdir()
    (leftover / "zarr.json.3f9c.partial").write_text("{")  # killed before the atomic rename
    assert [r.run_id for r in list_runs(store)] == [run_id]
    assert validate_store(store) == []


def test_resume_is_refused_unless_the_run_is_stale(
    three_runs: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, run_ids = three_runs
    live = proc.start_run(store, seed=6)  # written by this (living) process: not stale
    cases = {
        run_ids[0]: f"run {run_ids[0]} is 'complete'; only a stale 'writing' run or a failed run whose failure",
        "nope": "no run nope in",
        live.run_id: f"run {live.run_id} is being written by writer ",
    }
    for run_id, words in cases.items():
        assert main(["run", "--resume", run_id, "--store", store]) == EXIT_USAGE
        assert words in capsys.readouterr().err
    assert main(["run", "a.fits", "--resume", live.run_id, "--store", store]) == EXIT_USAGE
    assert "give only --store" in capsys.readouterr().err
    assert main(["run", "--store", store]) == EXIT_USAGE
    assert "give either INPUT files" in capsys.readouterr().err
    live.close()


# ----------------------------------------------------------------------------- checksums taken as objects are written


@pytest.mark.parametrize("split", [0, 1, 7, 4096, 12_582_912])
def test_crc32c_of_a_concatenation_from_the_checksums_of_its_parts(split: int) -> None:
    data = np.random.default_rng(split).integers(0, 256, 12_582_912 + 40, dtype=np.uint8).tobytes()
    head, tail = data[:split], data[split:]
    assert crc32c.combine(crc32c.value(head), crc32c.value(tail), len(tail)) == crc32c.value(data)
    running = crc32c.RunningCrc32c()
    running.update(b"key\0")
    running.append(crc32c.value(data), len(data))
    assert running.hexdigest() == f"{crc32c.value(b'key' + bytes(1) + data):08x}"


@pytest.mark.parametrize("stages", [False, True])
def test_completion_records_the_checksums_a_full_read_back_gives_without_reading(tmp_path: Path, stages: bool) -> None:
    """stages: the run is completed by another writer of this process, as the pipeline's stages do."""
    store = str(tmp_path / "store.zarr")
    writer = RunWriter.create(
        store, n_inputs=proc.N_INPUTS, channels=proc.CHANNELS, height=proc.SIZE, width=proc.SIZE,
        criterion_names=proc.CRITERIA, provenance=proc.provenance(4), sample_chunk=2, shard_samples=8,
    )
    writer.write_inputs(**proc.make_inputs(4))
    for index in range(7):  # 28 samples: whole shards written as staged, the last one partial, through zarr
        writer.append_samples(**proc.make_batch(4, index))
    writer.flush()
    if stages:
        writer.close()
        writer = RunWriter.open(store, writer.run_id)
    recording = writer.group.store
    assert isinstance(recording, RecordingStore)
    samples = chunk_files(store, writer.run_id, "samples")
    assert len(samples) == 4
    for path in samples:  # every stored object's checksum was taken from the bytes handed to the store
        key = path.relative_to(store).as_posix()
        assert recording.recorded(key) == (crc32c.value(path.read_bytes()), path.stat().st_size)
    reads: list[str] = []
    original_get = recording.get

    async def counting_get(key: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return await original_get(key, *args, **kwargs)

    recording.get = counting_get  # type: ignore[method-assign]  # count the objects completion reads
    writer.complete()
    assert not [key for key in reads if "/c/" in key or key.endswith("/c")]  # no chunk or shard was read back
    assert all(recording.recorded(path.relative_to(store).as_posix()) is None for path in samples)  # released
    group = zarr.open_group(store, path=f"runs/{writer.run_id}", mode="r")
    for name, entry in group.attrs[CHECKSUM_ATTR]["arrays"].items():
        assert (entry["objects"], entry["crc32c"]) == sync(_digest(group.store, f"{group.path}/{name}/")), name
    open_run(store, writer.run_id)


def test_bytes_changed_after_they_were_written_are_caught_after_completion(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    writer = proc.start_run(store, seed=5)
    for index in range(proc.N_BATCHES):
        writer.append_samples(**proc.make_batch(5, index))
    writer.flush()
    [shard] = chunk_files(store, writer.run_id, "sample_latents")
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x04  # damaged on disk before the run completed: the record keeps what was written
    shard.write_bytes(bytes(data))
    [seeds] = chunk_files(store, writer.run_id, "sample_seed")
    seeds.write_bytes(seeds.read_bytes()[:-8])  # rewritten with another size: read back, recorded as stored
    writer.complete()
    with pytest.raises(StoreIntegrityError) as caught:
        open_run(store, writer.run_id)
    assert caught.value.problems == [
        f"runs/{writer.run_id}/sample_latents: chunk contents differ from the checksum recorded when the run completed"
    ]


def test_the_recording_store_forgets_what_it_cannot_know(tmp_path: Path) -> None:
    recording = RecordingStore(LocalStore(str(tmp_path / "objects")))
    prototype = default_buffer_prototype()
    first, second = (prototype.buffer.from_bytes(bytes([n]) * (1000 + n)) for n in (1, 2))
    for key in ("a/b/c", "a/bc", "x"):
        sync(recording.set(key, first))
    assert recording.recorded("a/b/c") == (crc32c.value(bytes([1]) * 1001), 1001)
    sync(recording.delete_dir("a/b"))
    assert recording.recorded("a/b/c") is None and recording.recorded("a/bc") is not None  # a folder, not a prefix
    sync(recording.delete("a/bc"))
    assert recording.recorded("a/bc") is None

    async def write_twice_at_once() -> None:
        await asyncio.gather(recording.set("x", first), recording.set("x", second))

    sync(write_twice_at_once())
    assert recording.recorded("x") is None  # which write the stored object holds is not known here
    sync(recording.set("x", second))
    assert recording.recorded("x") == (crc32c.value(bytes([2]) * 1002), 1002)
    assert sync(recording.getsize("x")) == 1002
