"""Opening the store and the nodes of a run: a zarr Store for any URL, the root group (created, checked against
the schema version, or refused), the ``runs`` group, one run's group, its arrays and its JSON attributes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import zarr
import zarr.errors
from fsspec.registry import known_implementations
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from ood_core.store.contract import (
    LIBRARY,
    READABLE_SCHEMA_VERSIONS,
    RUN_ATTR,
    RUNS_GROUP,
    SCHEMA_VERSION,
    STORE_ATTR,
    check_run_id,
)
from ood_core.store.errors import RunNotFoundError, StoreError, StoreNotFoundError
from ood_core.store.provenance import utc_now_iso
from ood_core.store.recording import RecordingStore

PROTOCOL_EXTRAS = {"s3": "s3", "s3a": "s3"}
"""fsspec protocols with an extra of this project that installs their package (``pip install 'ood-synth[s3]'``)."""


def check_protocol(url: str) -> None:
    """StoreError with the install command when the package of the URL's fsspec protocol is missing (before
    anything is written or computed)."""
    if "://" not in url or url.startswith("file://"):
        return
    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError as exc:
        raise StoreError(f"{url}: fsspec knows no protocol {protocol!r} ({exc})") from exc
    except ImportError as exc:
        known = known_implementations.get(protocol, {})
        package = str(known.get("class", protocol)).split(".", 1)[0]
        extra = PROTOCOL_EXTRAS.get(protocol)
        command = f"pip install 'ood-synth[{extra}]'" if extra else f"pip install {package}"
        raise StoreError(f"{url}: the {protocol}:// protocol needs the package {package}, which is not installed: "
                         f"{command}") from exc


def fresh_listings(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The storage options, with s3fs's listing cache off unless asked for: runs, shards and catalogue entries
    are written by other processes, and a cached listing (kept for the life of the process) would hide them."""
    options = dict(storage_options or {})
    if url.split("://", 1)[0] in PROTOCOL_EXTRAS:
        options.setdefault("use_listings_cache", False)
    return options


def zarr_store(
    url: str, *, read_only: bool = False, storage_options: Mapping[str, Any] | None = None
) -> Store:
    """A zarr Store for a local path or any fsspec URL (``memory://``, ``s3://`` ...)."""
    if "://" in url and not url.startswith("file://"):
        check_protocol(url)
        return FsspecStore.from_url(url, storage_options=fresh_listings(url, storage_options), read_only=read_only)
    return LocalStore(url.removeprefix("file://"), read_only=read_only)


async def _list_dir(store: Store, prefix: str) -> list[str]:
    return [name async for name in store.list_dir(prefix)]


def list_names(store: Store, prefix: str) -> list[str]:
    """The names directly under ``prefix``, in no order (one listing; empty when there is no such folder)."""
    if isinstance(store, LocalStore):  # zarr's listing makes a Path of each name: 10x slower at 10,000 runs
        try:
            return os.listdir(store.root / prefix)
        except (FileNotFoundError, NotADirectoryError):
            return []
    return sync(_list_dir(store, prefix))


def _store_attr() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "created": utc_now_iso(), "library": LIBRARY}


def _check_root(root: zarr.Group, url: str) -> None:
    info = root.attrs.get(STORE_ATTR)
    if not isinstance(info, dict):
        raise StoreError(f"{url}: zarr group without attrs[{STORE_ATTR!r}], not an ood-synth store")
    if info.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise StoreError(f"{url}: store schema_version {info.get('schema_version')!r}, this library reads "
                         f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")


def schema_version(root: zarr.Group) -> int:
    """The schema version of an opened store (checked by :func:`open_store` / :func:`open_root_readonly`)."""
    info = root.attrs.get(STORE_ATTR)
    return int(info["schema_version"]) if isinstance(info, dict) else SCHEMA_VERSION


def check_store_location(url: str) -> None:
    """Refuse a local path that exists but cannot become a store: a file, or a non-empty non-zarr folder.

    An existing folder with files but no ``zarr.json`` is someone's data, never silently made a store.
    """
    if "://" in url and not url.startswith("file://"):
        check_protocol(url)
        return
    path = Path(url.removeprefix("file://"))
    if not path.exists():
        return
    if not path.is_dir():
        raise StoreError(f"{url}: exists and is not a folder; give a new folder or an existing ood-synth store")
    if (path / "zarr.json").is_file():
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise StoreError(f"{url}: an existing folder that is not a zarr store ({len(entries)} entries: {shown}); "
                         "give a new or empty folder, or an existing ood-synth store")


def open_store(
    url: str, *, create: bool = True, storage_options: Mapping[str, Any] | None = None
) -> zarr.Group:
    """Open (and by default create) the store's root group for writing.

    Safe when several processes create the same store at once: creation never overwrites, and a
    process that loses the race opens the group the winner made. A local folder that exists, is not
    empty and is not a zarr group is refused (:func:`check_store_location`).
    """
    check_store_location(url)
    # writers record the checksum of every object they write (integrity: no read-back at completion)
    store = RecordingStore(zarr_store(url, storage_options=storage_options))
    try:
        root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        if not create:
            raise StoreError(f"{url}: no store here (pass create=True to make one)") from exc
        try:
            root = zarr.create_group(store, attributes={STORE_ATTR: _store_attr()}, zarr_format=3)
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
            root = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
    if STORE_ATTR not in root.attrs and not list(root.keys()):
        root.update_attributes({STORE_ATTR: _store_attr()})  # an empty group someone made: adopt it
    _check_root(root, url)
    return root


def open_root_readonly(url: str, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """The store's root group for reading (StoreNotFoundError when there is no store at ``url``)."""
    store = zarr_store(url, read_only=True, storage_options=storage_options)
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise StoreNotFoundError(f"{url}: no store here") from exc
    _check_root(root, url)
    return root


def runs_group(root: zarr.Group) -> zarr.Group:
    """The ``runs`` group, created if missing; tolerates another process creating it at the same time."""
    for _ in range(3):
        try:
            return root.require_group(RUNS_GROUP)
        except (zarr.errors.ContainsGroupError, FileExistsError):
            continue
    return root.require_group(RUNS_GROUP)


def run_group(root: zarr.Group, url: str, run_id: str) -> zarr.Group:
    """The group of run ``run_id`` (RunNotFoundError when there is none)."""
    check_run_id(run_id)
    try:
        node = root[f"{RUNS_GROUP}/{run_id}"]
    except KeyError as exc:
        raise RunNotFoundError(f"{url}: no run {run_id!r} (see list_runs)") from exc
    if not isinstance(node, zarr.Group):
        raise StoreError(f"{url}: runs/{run_id} is not a group")
    return node


def run_record(group: zarr.Group) -> dict[str, Any]:
    """A copy of a run's ``ood_run`` record (empty when it has none)."""
    record = group.attrs.get(RUN_ATTR)
    return dict(record) if isinstance(record, dict) else {}


def attr_dict(group: zarr.Group, name: str) -> dict[str, Any]:
    """A JSON-object attribute of a run group (StoreError naming the run when it is missing or not an object)."""
    value = group.attrs.get(name)
    if not isinstance(value, dict):
        raise StoreError(f"{group.path}: attribute {name!r} is missing or not a JSON object; not a run written here")
    return dict(value)


def node_array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of ``group`` (StoreError when that node is a group)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.path}/{name} is a group, expected an array")
    return node


def sample_array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """A sample array as its writers use it: every chunk is written, also one equal to the fill value (whose
    absence reads the same). zarr forgets this setting of ``create_array`` when an array is opened again, and
    then compares every chunk with the fill value before writing it; whole shards go out as they are staged
    (:mod:`.whole_shards`)."""
    return node_array(group, name).with_config({"write_empty_chunks": True})
