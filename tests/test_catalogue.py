"""Issue 30: a store stays as fast at its 200th run as at its first (bytes written outside a run's own nodes do not
grow), the run catalogue lists runs without opening them, and version-1 stores open and migrate losing nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.storage._local as zarr_local

from ood_cli.main import EXIT_OK, main
from ood_core.store import RunWriter, audit_store, list_runs, open_run, validate_store
from ood_core.store import readers as readers_module
from ood_core.store.catalogue import read_entries
from ood_core.store.migration import migrate_store
from ood_core.store.opening import zarr_store
from ood_core.store.readers import run_entries

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
