"""Issue 30: a store stays as fast at its 200th run as at its first (bytes written outside a run's own nodes do not
grow), the run catalogue lists runs without opening them, and version-1 stores open and migrate losing nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.storage._local as zarr_local

from ood_cli.main import EXIT_OK, EXIT_USAGE, main
from ood_core.store import RunWriter, audit_store, list_run_page, list_runs, new_run_id, open_run, validate_store
from ood_core.store import readers as readers_module
from ood_core.store.catalogue import read_entries, write_entry
from ood_core.store.migration import migrate_store
from ood_core.store.opening import zarr_store
from ood_core.store.readers import SINCE_SLACK, run_entries

LEGACY_STORE = Path(__file__).resolve().parent / "data" / "legacy_run"


def _tiny_run(store: str, seed: int, complete: bool = True) -> str:
    """A run through the real writer (creation, appends, completion, catalogue) with tiny arrays."""
    rng = np.random.default_rng(seed)
    writer = RunWriter.create(
        store, n_inputs=1, channels=1, height=4, width=4, criterion_names=["a"], units="1",
        provenance={"parameters": {"seed": seed, "samples": 2}, "input_set_key": f"key{seed % 3}",
                    "model": {"source": "none", "weights_sha256": "0" * 64}, "sampler": {"acceptance_rate": 0.5}},
    )
    image = rng.uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    writer.write_inputs(image, np.zeros((1, 4, 4), bool), image, image, np.ones(1, np.float32))
    writer.append_samples(image.repeat(2, 0), image[:, 0].repeat(2, 0), image.repeat(2, 0), np.arange(2),
                          np.zeros(2, np.int32), np.zeros((2, 1), np.float32), np.ones(2, np.float32))
    if complete:
        writer.complete()
    else:
        writer.fail("made to fail")
    return writer.run_id


def test_bytes_written_outside_a_new_run_do_not_grow_over_200_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store.zarr"
    written: list[tuple[str, int]] = []
    put = zarr_local._put

    def counting_put(path: Path, value: Any, exclusive: bool = False) -> int:
        n = put(path, value, exclusive=exclusive)  # a set_if_not_exists that finds the object raises: not counted
        written.append((Path(path).relative_to(store).as_posix(), int(n)))
        return n

    monkeypatch.setattr(zarr_local, "_put", counting_put)
    outside, own, root_sizes = [], [], []
    for k in range(200):
        start = len(written)
        run_id = _tiny_run(str(store), k)
        mine = (f"runs/{run_id}/", f"catalogue/{run_id}/")
        new = written[start:]
        outside.append(sum(n for key, n in new if not key.startswith(mine)))
        own.append(sum(n for key, n in new if key.startswith(mine)))
        root_sizes.append((store / "zarr.json").stat().st_size)
    # the first run makes the root, runs/ and catalogue/ groups; after it, nothing outside the run's own nodes
    assert outside[0] > 0 and max(outside[1:]) == 0, outside[:5]
    assert len(set(root_sizes)) == 1, (root_sizes[0], root_sizes[-1])
    assert max(own[1:]) <= 1.02 * min(own[1:]), (min(own[1:]), max(own[1:]))  # a run's own writes do not grow
    assert len(read_entries(zarr_store(str(store)))) == 200
    assert [r.status for r in list_runs(str(store))] == ["complete"] * 200


def test_ood_runs_filters_from_the_catalogue_without_opening_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store.zarr")
    done = [_tiny_run(store, 0), _tiny_run(store, 1)]
    failed = _tiny_run(store, 2, complete=False)
    entries = {e["run_id"]: e for e in run_entries(store)}
    assert entries[done[0]]["status"] == "complete" and entries[done[0]]["n_samples"] == 2
    assert entries[done[0]]["input_set_key"] == "key0" and entries[done[0]]["acceptance_rate"] == 0.5
    assert entries[failed]["status"] == "failed" and entries[failed]["error"] == "made to fail"

    def no_run_opened(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a run group was opened")

    monkeypatch.setattr(readers_module, "_safe_run_info", no_run_opened)
    capsys.readouterr()
    assert main(["runs", store, "--status", "complete"]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(run_id in out for run_id in done) and failed not in out
    assert main(["runs", store, "--since", "2999-01-01"]) == EXIT_OK
    assert "no runs matching the filters" in capsys.readouterr().out
    assert main(["runs", store, "--status", "failed", "--since", "2000-01-01"]) == EXIT_OK
    out = capsys.readouterr().out
    assert failed in out and done[0] not in out


def test_a_writing_run_is_read_from_its_group_and_a_missing_entry_is_a_problem(tmp_path: Path) -> None:
    store = str(tmp_path / "store.zarr")
    run_id = _tiny_run(store, 0)
    shutil.rmtree(Path(store) / "catalogue" / run_id)
    assert [r.run_id for r in list_runs(store)] == [run_id]  # no entry: read from the run group
    # (the tiny runs' provenance lacks the section-6 keys: only the catalogue's problems are looked at)
    [problem] = [p for p in validate_store(store) if p.startswith("catalogue/")]
    assert "no catalogue entry" in problem
    report = migrate_store(store)
    assert report.entries_written == 1 and not [p for p in validate_store(store) if p.startswith("catalogue/")]


def _files(store: Path, under: str) -> dict[str, str]:
    return {p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((store / under).rglob("*")) if p.is_file()}


def test_a_version_1_store_opens_and_migrates_losing_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(LEGACY_STORE, store)
    url = str(store)
    root_before = json.loads((store / "zarr.json").read_text())
    assert root_before["attributes"]["ood_store"]["schema_version"] == 1 and "consolidated_metadata" in root_before
    assert validate_store(url) == [] and all(c.ok for c in audit_store(url))  # `ood check` before
    [run] = list_runs(url)
    before = open_run(url, chunks=None).load()
    files_before = _files(store, "runs")
    run_json = f"runs/{run.run_id}/zarr.json"
    attrs_before = json.loads((store / run_json).read_text())["attributes"]

    assert main(["migrate", url]) == EXIT_OK
    root_after = json.loads((store / "zarr.json").read_text())
    assert root_after["attributes"]["ood_store"]["schema_version"] == 2 and "consolidated_metadata" not in root_after
    assert root_after["attributes"]["ood_store"]["created"] == root_before["attributes"]["ood_store"]["created"]
    files_after = _files(store, "runs")
    changed = {key for key in files_before if files_before[key] != files_after.get(key)}
    assert changed == {run_json} and set(files_after) == set(files_before)  # arrays and chunks byte-identical
    run_after = json.loads((store / run_json).read_text())
    assert run_after["attributes"] == attrs_before and "consolidated_metadata" in run_after
    assert read_entries(zarr_store(url))[run.run_id]["status"] == "complete"
    assert validate_store(url) == [] and all(c.ok for c in audit_store(url))  # `ood check` after
    assert open_run(url, chunks=None).load().identical(before)
    again = migrate_store(url)
    assert (again.entries_written, again.runs_consolidated) == (0, 0) and _files(store, "runs") == files_after


def test_the_first_write_to_a_version_1_store_migrates_it(tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    shutil.copytree(LEGACY_STORE, store)
    new = _tiny_run(str(store), 5)
    assert json.loads((store / "zarr.json").read_text())["attributes"]["ood_store"]["schema_version"] == 2
    assert len(read_entries(zarr_store(str(store)))) == 2 and list_runs(str(store))[-1].run_id == new
    assert not [p for p in validate_store(str(store)) if p.startswith(("catalogue/", "root"))]


DAY0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _many_runs(store: Path, days: int, failed: tuple[int, ...] = (), extra: tuple[str, ...] = ()) -> list[str]:
    """The entry of a real run made into one run a day from DAY0 (id and "started" that day; ``failed`` ones
    failed) and runs named ``extra``: each a run folder and a final catalogue entry. Ids in sorted order."""
    real = _tiny_run(str(store), 0)
    [entry] = read_entries(zarr_store(str(store))).values()
    shutil.rmtree(store / "runs" / real)
    shutil.rmtree(store / "catalogue" / real)
    moments = [DAY0 + dt.timedelta(days=k) for k in range(days)]
    ids = [new_run_id(moment) for moment in moments] + list(extra)
    for k, run_id in enumerate(ids):
        (store / "runs" / run_id).mkdir()
        (store / "runs" / run_id / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
        started = (moments[k] if k < days else DAY0 + dt.timedelta(days=days)).isoformat()
        status = "failed" if k in failed else "complete"
        write_entry(zarr_store(str(store)), {**entry, "run_id": run_id, "started": started, "status": status,
                                             "error": "made to fail" if status == "failed" else None})
    return ids


def _recording_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key of every object read from a local store from now on."""
    reads: list[str] = []
    get = zarr_local.LocalStore.get

    async def recording_get(self: zarr_local.LocalStore, key: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr_local.LocalStore, "get", recording_get)
    return reads


def test_a_page_of_runs_reads_only_the_page_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store.zarr"
    ids = _many_runs(store, 300)
    reads = _recording_reads(monkeypatch)
    page = list_run_page(str(store), limit=10)
    assert [r.run_id for r in page.runs] == ids[::-1][:10] and (page.total, page.unread) == (300, 290)
    assert sorted(k for k in reads if k.startswith("catalogue/")) == sorted(f"catalogue/{i}/zarr.json"
                                                                           for i in ids[-10:])
    assert not [k for k in reads if k.startswith("runs/")]  # final entries: no run group opened
    reads.clear()
    assert [r.run_id for r in list_runs(str(store), limit=3)] == ids[:3]  # oldest first unless newest_first
    assert len([k for k in reads if k.startswith("catalogue/")]) == 3
    assert [r.run_id for r in list_run_page(str(store), limit=0).runs] == ids[::-1]  # 0: every run
    assert [r.run_id for r in list_runs(str(store))] == ids


def test_a_filtered_page_reads_until_it_is_full_and_since_skips_older_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store.zarr"
    ids = _many_runs(store, 120, failed=(5, 100), extra=("manual-run",))  # "manual-run" sorts after the dated ids
    reads = _recording_reads(monkeypatch)
    page = list_run_page(str(store), limit=1, status="failed")
    assert [r.run_id for r in page.runs] == [ids[100]] and page.runs[0].problem == "made to fail"
    read = [k for k in reads if k.startswith("catalogue/")]
    assert len(read) < 120 and page.unread == 121 - 21  # batches of 1, 2, 4, 8, 16 read; 21 ids used up
    page = list_run_page(str(store), limit=5, status="failed")
    assert [r.run_id for r in page.runs] == [ids[100], ids[5]] and page.unread == 0
    reads.clear()
    since = DAY0 + dt.timedelta(days=110)
    page = list_run_page(str(store), limit=50, since=since)
    assert [r.run_id for r in page.runs] == ["manual-run", *ids[119:109:-1]] and page.unread == 0
    read = {k.split("/")[1] for k in reads if k.startswith("catalogue/")}
    assert SINCE_SLACK < dt.timedelta(days=1) and read == {"manual-run", *ids[110:]}  # ids[109], a day older: not
    assert list_run_page(str(store), limit=50, since=since.replace(tzinfo=None)).runs == page.runs  # naive: UTC


def test_ood_runs_shows_the_newest_page_and_says_how_many_runs_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store.zarr"
    ids = _many_runs(store, 60, failed=(3,))
    capsys.readouterr()
    assert main(["runs", str(store)]) == EXIT_OK  # default: the newest 50, oldest first
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["run", "id"] and [line.split()[0] for line in lines[1:51]] == ids[10:]
    assert lines[-1] == "(10 older run(s) not shown; --limit N or --all lists more)"
    for flags in (["--all"], ["--limit", "0"]):
        assert main(["runs", str(store), *flags]) == EXIT_OK
        out = capsys.readouterr().out
        assert all(run_id in out for run_id in ids) and "not shown" not in out
        assert f"  {ids[3]}: failed: made to fail" in out
    assert main(["runs", str(store), "--limit", "2", "--status", "failed"]) == EXIT_OK
    lines = capsys.readouterr().out.strip().splitlines()  # read back to the oldest runs: every match is shown
    assert lines[1].split()[:2] == [ids[3], "failed"] and len(lines) == 3 and "not read" not in lines[-1]
    assert main(["runs", str(store), "--limit", "1", "--status", "complete"]) == EXIT_OK
    out = capsys.readouterr().out
    assert ids[-1] in out and "(59 older run(s) not read: more may match; --limit N or --all lists more)" in out
    assert main(["runs", str(store), "--limit", "-1"]) == EXIT_USAGE
