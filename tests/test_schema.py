"""Store validation: a good store passes, each kind of breakage is named."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import store_writer_proc as proc
import zarr

from ood_core.store.schema import REQUIRED_PROVENANCE_KEYS, StoreSchemaError, check_store, validate_store


@pytest.fixture
def good_store(tmp_path: Path) -> tuple[str, str]:
    """A store with one complete run and one run still writing."""
    store = str(tmp_path / "store.zarr")
    run_id = proc.write_complete_run(store, seed=1)
    writer = proc.start_run(store, seed=2)
    writer.append_samples(**proc.make_batch(2, 0))
    return store, run_id


def run_group(store: str, run_id: str) -> zarr.Group:
    return zarr.open_group(store, path=f"runs/{run_id}", mode="r+")


def set_record(store: str, run_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    group = run_group(store, run_id)
    record = dict(group.attrs["ood_run"])  # type: ignore[arg-type]
    change(record)
    group.update_attributes({"ood_run": record})


def test_good_store_is_valid(good_store: tuple[str, str]) -> None:
    store, _ = good_store
    assert validate_store(store) == []
    check_store(store)


def test_required_keys_cover_section_6() -> None:
    assert set(REQUIRED_PROVENANCE_KEYS) == {
        "run_id", "status", "started", "ended", "parameters", "environment", "model", "inversion",
        "normalization", "prior", "sampler", "novelty", "inputs", "quarantined", "timings",
    }


def test_deleted_array_is_named(good_store: tuple[str, str]) -> None:
    store, run_id = good_store
    shutil.rmtree(Path(store) / "runs" / run_id / "sample_seed")
    problems = validate_store(store)
    assert problems == [f"runs/{run_id}: array 'sample_seed' is missing"]
    with pytest.raises(StoreSchemaError, match="array 'sample_seed' is missing") as caught:
        check_store(store)
    assert caught.value.problems == problems


def test_corrupt_status_is_named(good_store: tuple[str, str]) -> None:
    store, run_id = good_store
    set_record(store, run_id, lambda r: r.update(status="done"))
    [problem] = validate_store(store)
    assert problem.startswith(f"runs/{run_id}: status 'done' is not one of")


def test_truncated_sample_array_is_named(good_store: tuple[str, str]) -> None:
    store, run_id = good_store
    run_group(store, run_id)["samples_physical"].resize((7, 16, 16))
    problems = validate_store(store)
    assert any("disagree on the length of 'sample'" in p and "'samples_physical': 7" in p for p in problems)
    assert any("differ from the 20 committed samples" in p for p in problems)
    with pytest.raises(StoreSchemaError, match="samples_physical"):
        check_store(store)


def test_non_strict_json_provenance_is_named(good_store: tuple[str, str]) -> None:
    store, run_id = good_store
    set_record(store, run_id, lambda r: r["sampler"].update(acceptance_rate=float("nan")))
    raw = (Path(store) / "runs" / run_id / "zarr.json").read_text()
    assert "NaN" in raw  # zarr wrote it, a strict JSON reader would choke on it
    with pytest.raises(ValueError):
        json.loads(raw, parse_constant=lambda token: (_ for _ in ()).throw(ValueError(token)))
    [problem] = validate_store(store)
    assert "provenance is not strict JSON" in problem


def test_missing_provenance_keys_are_named(good_store: tuple[str, str]) -> None:
    store, run_id = good_store
    set_record(store, run_id, lambda r: [r.pop("timings"), r.pop("novelty")])
    [problem] = validate_store(store)
    assert problem == f"runs/{run_id}: provenance lacks required keys ['novelty', 'timings']"


def test_wrong_dtype_and_dims_are_named(good_store: tuple[str, str]) -> None:
    store, run_id = good_store
    group = run_group(store, run_id)
    del group["sample_parent"]
    group.create_array("sample_parent", data=np.zeros(20, np.float64), dimension_names=("draw",))
    problems = validate_store(store)
    assert f"runs/{run_id}/sample_parent: dtype float64, expected int32" in problems
    assert f"runs/{run_id}/sample_parent: dimension names ['draw'], expected ['sample']" in problems


def test_root_attribute_problems_are_named(tmp_path: Path) -> None:
    bare = str(tmp_path / "bare.zarr")
    zarr.create_group(bare)
    assert validate_store(bare) == ["root: attrs['ood_store'] is missing"]
    old = str(tmp_path / "old.zarr")
    zarr.create_group(old, attributes={"ood_store": {"schema_version": 0}})
    assert validate_store(old) == ["root: schema_version 0, expected 2"]
    [problem] = validate_store(str(tmp_path / "nothing.zarr"))
    assert "no zarr v3 group" in problem


def test_memory_store_validates() -> None:
    store = f"memory://schema-test-{uuid.uuid4().hex}/store.zarr"
    proc.write_complete_run(store, seed=4)
    assert validate_store(store) == []
