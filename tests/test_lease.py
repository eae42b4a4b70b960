"""One writer per run (issue 28): the lease claimed before a run is written, on a local store and on an S3
endpoint served on the loopback (moto's server mode, through s3fs); a writer that lost its lease writes no more."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import store_writer_proc as proc

from ood_core.store import LeaseLostError, RunLeasedError, RunWriter, StoreError
from ood_core.store import lease as leases

RUN = "20261206T000000000000Z-abcdef"
HOLD_SCRIPT = """
import sys, time
from ood_core.store.lease import hold
claim = hold(sys.argv[1], sys.argv[2])
print("HELD", claim.lease.generation, claim.lease.writer, flush=True)
time.sleep(600)
"""


def _forge(store: Path, run_id: str, generation: int, **fields: Any) -> None:
    """A lease written by some other writer (another host, say), as claim() writes one."""
    now = datetime.now(UTC)
    lease = {"run_id": run_id, "generation": generation, "writer": "node-7:41:0123456789ab", "host": "node-7",
             "pid": 41, "claimed": now.isoformat(), "expires": (now + timedelta(seconds=60)).isoformat(),
             "released": False, **fields}
    path = store / "leases" / run_id / f"{generation:08d}" / "zarr.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"ood_lease": lease}}))


@pytest.fixture()
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Another process holding run RUN of a local store (its lease renewed), and its writer id."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(tmp_path / "s.zarr"), RUN],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().split()
    assert line[:2] == ["HELD", "1"], line
    yield child, line[2]
    child.kill()
    child.wait()


def test_a_live_writer_refuses_a_claim_by_name_and_its_death_frees_the_run(
        tmp_path: Path, holder: tuple[subprocess.Popen[str], str]) -> None:
    child, writer = holder
    store = str(tmp_path / "s.zarr")
    with pytest.raises(RunLeasedError, match=f"being written by writer {writer} \\(pid {child.pid} on") as info:
        leases.claim(store, RUN)
    assert info.value.holder.pid == child.pid and info.value.holder.generation == 1
    child.send_signal(signal.SIGKILL)
    child.wait()
    lease, replaced = leases.claim(store, RUN)
    assert lease.generation == 2 and lease.pid == os.getpid()
    assert replaced is not None and f"pid {child.pid}" in (replaced.dead_reason() or "")
    assert "no longer running" in (replaced.dead_reason() or "")
    # the generations stay: the run's history of writers
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "leases" / RUN).iterdir() if p.is_dir()) == [
        "00000001", "00000002"]


def test_a_lease_of_another_host_holds_until_it_expires(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    _forge(store, RUN, 1)
    with pytest.raises(RunLeasedError, match="writer node-7:41:0123456789ab \\(pid 41 on node-7, lease 1"):
        leases.claim(str(store), RUN)
    _forge(store, RUN, 1, expires=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    lease, replaced = leases.claim(str(store), RUN)
    assert lease.generation == 2 and replaced is not None and "expired" in (replaced.dead_reason() or "")


def test_hold_keeps_renewing_and_let_go_releases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "RENEW_EVERY_S", 0.05)
    store = str(tmp_path / "s.zarr")
    first = leases.hold(store, RUN)
    assert first.new and first.replaced is None
    again = leases.hold(store, RUN)  # a later stage of this process: the same lease, nothing written
    assert not again.new and again.lease.writer == first.lease.writer
    time.sleep(0.3)
    renewed = leases.current_lease(store, RUN)
    assert renewed is not None and renewed.expires_at() > first.lease.expires_at()
    leases.let_go(store, RUN)
    released = leases.current_lease(store, RUN)
    assert released is not None and released.released and leases.held(store, RUN) is None
    later = leases.hold(store, RUN)  # released: the next writer need not wait for the expiry
    assert later.new and later.lease.generation == 2
    leases.let_go(store, RUN)


def _race(store: str, storage_options: dict[str, Any], ready: Any, results: Any) -> None:
    ready.wait()
    try:
        lease, _ = leases.claim(store, RUN, storage_options=storage_options)
        results.put(("won", lease.writer))
    except RunLeasedError as exc:
        results.put(("refused", exc.holder.writer))


def _race_claims(store: str, storage_options: dict[str, Any], n: int = 4) -> list[tuple[str, str]]:
    """``n`` processes claim the run at the same moment (after a barrier)."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(n), context.Queue()
    workers = [context.Process(target=_race, args=(store, storage_options, ready, results)) for _ in range(n)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    return outcomes


def _exactly_one_won(outcomes: list[tuple[str, str]]) -> None:
    winners = [writer for what, writer in outcomes if what == "won"]
    assert len(winners) == 1, outcomes
    assert all(writer == winners[0] for what, writer in outcomes if what == "refused"), outcomes


def test_of_racing_claims_on_a_dead_lease_exactly_one_wins(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    _forge(store, RUN, 1, expires=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    _exactly_one_won(_race_claims(str(store), {}))
    assert leases.current_lease(str(store), RUN).generation == 2  # type: ignore[union-attr]


def test_a_writer_whose_lease_was_taken_over_writes_no_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "RENEW_EVERY_S", 0.05)
    store = str(tmp_path / "s.zarr")
    writer = proc.start_run(store, seed=1)
    writer.append_samples(**proc.make_batch(1, 0))
    writer.flush()
    lease = leases.current_lease(store, writer.run_id)
    assert lease is not None and lease.generation == 1 and lease.pid == os.getpid()
    _forge(tmp_path / "s.zarr", writer.run_id, 2)  # someone took the run for dead and claimed it
    deadline = time.monotonic() + 10
    while leases.held(store, writer.run_id) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLostError, match="taken over by lease generation 2"):
        writer.update_provenance(note="one more")
    with pytest.raises(StoreError):  # neither can a resume here: node-7 holds it
        RunWriter.open(store, writer.run_id)
    writer.close()


def test_resume_refuses_complete_and_refused_runs_and_takes_up_an_infrastructure_failure(tmp_path: Path) -> None:
    store = str(tmp_path / "s.zarr")
    done = proc.start_run(store, seed=2)
    done.complete()
    with pytest.raises(StoreError, match="is 'complete'"):
        RunWriter.resume(store, done.run_id)
    refused = proc.start_run(store, seed=3)
    refused.fail("InvalidInputError: a.fits: not a FITS file", resumable=False, kind="refused: inputs or settings")
    with pytest.raises(StoreError, match=re.escape("refused (InvalidInputError: a.fits: not a FITS file); it stays")):
        RunWriter.resume(store, refused.run_id)
    broken = proc.start_run(store, seed=4)
    broken.append_samples(**proc.make_batch(4, 0))
    broken.flush()  # committed: kept by the resume (fail() drops what was not)
    broken.fail(OSError("store unreachable"), resumable=True, kind="store or file I/O")
    again = RunWriter.resume(store, broken.run_id)
    assert again.provenance["status"] == "writing" and again.committed_samples == proc.BATCH
    attempts = again.provenance["attempts"]
    assert [(a["attempt"], a["how"], a["lease"], a["outcome"]) for a in attempts] == [
        (1, "created", 1, "failed"), (2, "resumed", 2, None)]
    assert attempts[0]["resumable"] is True and attempts[0]["error"] == "OSError: store unreachable"
    again.append_samples(**proc.make_batch(4, 1))
    again.complete()
    record = again.provenance
    assert record["status"] == "complete" and record["attempts"][-1]["outcome"] == "complete"
    assert leases.current_lease(store, broken.run_id).released  # type: ignore[union-attr]


@pytest.fixture()
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An S3 endpoint on the loopback (moto's server mode) with a bucket; the storage options s3fs needs."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "test", "secret": "test",
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    # moto keeps its buckets per process, across servers: a bucket of this test's own
    options["bucket"] = f"ood-test-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(key="test", secret="test", client_kwargs=options["client_kwargs"]).mkdir(options["bucket"])
    yield options
    server.stop()


def test_on_s3_racing_claims_exactly_one_wins_and_a_live_lease_refuses(s3: dict[str, Any]) -> None:
    store = f"s3://{s3.pop('bucket')}/store.zarr"
    outcomes = _race_claims(store, s3)
    _exactly_one_won(outcomes)
    winner = leases.current_lease(store, RUN, storage_options=s3)
    assert winner is not None and winner.generation == 1 and winner.writer == next(
        w for what, w in outcomes if what == "won")
    # the winner's process is gone: the next claim takes generation 2 at once
    lease, replaced = leases.claim(store, RUN, storage_options=s3)
    assert lease.generation == 2 and replaced is not None and "no longer running" in (replaced.dead_reason() or "")
    # another process is refused while this one lives, and told who holds the run
    assert _race_claims(store, s3, n=1) == [("refused", lease.writer)]


def test_a_store_url_whose_protocol_package_is_missing_is_refused_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    from ood_core.store import check_store_location

    real = fsspec.get_filesystem_class

    def missing(protocol: str) -> Any:
        if protocol in ("s3", "gcs"):
            raise ImportError(f"Install the package for {protocol}")
        return real(protocol)

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(StoreError, match=re.escape(
            "s3://bucket/s.zarr: the s3:// protocol needs the package s3fs, which is not installed: "
            "pip install 'ood-synth[s3]'")):
        check_store_location("s3://bucket/s.zarr")
    with pytest.raises(StoreError, match=re.escape("the package gcsfs, which is not installed: pip install gcsfs")):
        check_store_location("gcs://bucket/s.zarr")
    with pytest.raises(StoreError, match="fsspec knows no protocol 'nope'"):
        check_store_location("nope://bucket/s.zarr")
    check_store_location("memory://fine/s.zarr")
