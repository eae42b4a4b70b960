"""One writer per run: the lease a writer claims before it writes a run (issue 28, DESIGN section 5).

A lease is a small zarr group node ``leases/<run_id>/<generation>/zarr.json`` (attribute ``ood_lease``: writer,
host, pid, when claimed, when it expires). The run's creator claims generation 1; whoever takes a run up again
(a resume, a retried flow run) claims the next generation, and only when the current one has expired or its
writer's process is gone. Claiming is an *exclusive create* of the new generation's object, so of two resumers
that race for generation g + 1 exactly one gets it and the other is told who holds the run
(:class:`RunLeasedError`). The holder renews its own generation (nobody else ever writes it) from a daemon thread
every :data:`RENEW_EVERY_S` seconds; a holder that finds a newer generation has lost the run and writes no more
(:class:`LeaseLostError`). Leases are kept after use: the generations are the run's history of writers.

What "exclusive" rests on (:func:`_create_exclusive`):

- a local or network file system: ``os.link`` of a fully written temporary file, which fails when the name
  exists (atomic on POSIX file systems, NFS v3 and later included);
- S3 and S3-compatible stores (AWS since 2024, MinIO, moto): a conditional PUT (``If-None-Match: *``), which
  s3fs sends for ``mode="xb"``; fsspec's memory file system checks under its own lock;
- any other fsspec file system: its ``mode="xb"`` if it has one; one that cannot create exclusively falls back to
  look-then-write, logged as a warning: two resumers started within the same second could then both write.

A process holds a lease for every writer of that run it opens (stages, retried tasks); other processes that work
for the holder (Dask workers writing shards) name the holder's writer id and check it (:func:`check_holder`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ood_core.store.contract import check_run_id
from ood_core.store.errors import LeaseLostError, RunLeasedError
from ood_core.store.heartbeat import HEARTBEAT_INTERVAL_S, STALE_AFTER_S, pid_running
from ood_core.store.opening import fresh_listings

log = logging.getLogger(__name__)

LEASES_GROUP = "leases"
LEASE_ATTR = "ood_lease"
LEASE_SECONDS = STALE_AFTER_S
"""A lease not renewed for this long has expired (its writer is taken for dead, on any host)."""
RENEW_EVERY_S = HEARTBEAT_INTERVAL_S
PROCESS_TOKEN = uuid.uuid4().hex[:12]
"""Tells this process's leases from those of an earlier process that had the same pid."""
_GROUP_NODE = {"zarr_format": 3, "node_type": "group"}


@dataclass(frozen=True)
class Lease:
    """Generation ``generation`` of the right to write run ``run_id``, held by ``writer`` until ``expires``."""

    run_id: str
    generation: int
    writer: str
    host: str
    pid: int
    claimed: str
    expires: str
    released: bool = False

    def expires_at(self) -> datetime:
        """The expiry as an aware datetime."""
        when = datetime.fromisoformat(self.expires)
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def dead_reason(self, now: datetime | None = None) -> str | None:
        """Why this lease no longer holds the run (released, expired, its writer's process gone), or None."""
        if self.released:
            return f"writer {self.writer} released it"
        if self.host == socket.gethostname() and not pid_running(self.pid):
            return f"its writer (pid {self.pid} on {self.host}) is no longer running"
        now = now or datetime.now(UTC)
        if now >= self.expires_at():
            return f"it expired at {self.expires} (writer pid {self.pid} on {self.host})"
        return None

    def describe(self) -> str:
        """Who holds it, for messages."""
        return f"writer {self.writer} (pid {self.pid} on {self.host}, lease {self.generation} until {self.expires})"

    def is_ours(self) -> bool:
        """Whether this process holds it."""
        return self.writer.endswith(PROCESS_TOKEN) and self.pid == os.getpid()


def _wait_hint() -> str:
    return f"wait for it to end, or for its lease to expire ({LEASE_SECONDS:.0f} s after its last renewal)"


def _fs(store_url: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    if "://" in store_url and not store_url.startswith("file://"):
        fs, root = fsspec.core.url_to_fs(store_url, **fresh_listings(store_url, storage_options))
        return fs, str(root).rstrip("/")
    return LocalFileSystem(), str(Path(store_url.removeprefix("file://")).resolve())


def _folder(root: str, run_id: str) -> str:
    return f"{root}/{LEASES_GROUP}/{check_run_id(run_id)}"


def _node(attributes: Mapping[str, Any]) -> bytes:
    return json.dumps({**_GROUP_NODE, "attributes": dict(attributes)}, indent=2).encode()


def _parse(data: bytes) -> Lease | None:
    try:
        raw = json.loads(data)["attributes"][LEASE_ATTR]
        return Lease(**raw)
    except (ValueError, KeyError, TypeError):
        return None


def _generations(fs: fsspec.AbstractFileSystem, folder: str) -> list[int]:
    fs.invalidate_cache(folder)  # s3fs caches listings; a lease must be seen as soon as it exists
    try:
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def _read(fs: fsspec.AbstractFileSystem, folder: str, generation: int) -> Lease | None:
    try:
        return _parse(fs.cat_file(f"{folder}/{generation:08d}/zarr.json"))
    except FileNotFoundError:
        return None


def current_lease(store_url: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None) -> Lease | None:
    """The newest generation of a run's lease (None: nobody ever claimed it, e.g. a run of an older version)."""
    fs, root = _fs(store_url, storage_options)
    folder = _folder(root, run_id)
    generations = _generations(fs, folder)
    return _read(fs, folder, generations[-1]) if generations else None


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; False when it did (see the module's notes)."""
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{PROCESS_TOKEN}.{threading.get_ident()}")
        temporary.write_bytes(data)
        try:
            os.link(temporary, target)
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)
        return True
    try:
        with fs.open(path, "xb") as handle:
            handle.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError) as exc:  # a file system without exclusive create
        log.warning("%s cannot create files exclusively (%s): one writer per run is not guaranteed here", fs, exc)
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True


def _write_over(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Replace the holder's own generation (renewal, release): whole, never half-written."""
    if isinstance(fs, LocalFileSystem):
        temporary = Path(f"{path}.{PROCESS_TOKEN}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
    else:
        fs.pipe_file(path, data)


def _ensure_groups(fs: fsspec.AbstractFileSystem, root: str, folder: str) -> None:
    for where, what in ((f"{root}/{LEASES_GROUP}", "one group per run, one subgroup per writer generation"),
                        (folder, "the generations of this run's lease")):
        if not fs.exists(f"{where}/zarr.json"):
            _create_exclusive(fs, f"{where}/zarr.json", _node({"ood_leases": what}))


def _new_lease(run_id: str, generation: int, seconds: float) -> Lease:
    now = datetime.now(UTC)
    host, pid = socket.gethostname(), os.getpid()
    return Lease(run_id=run_id, generation=generation, writer=f"{host}:{pid}:{PROCESS_TOKEN}", host=host, pid=pid,
                 claimed=now.isoformat(timespec="microseconds"),
                 expires=(now + timedelta(seconds=seconds)).isoformat(timespec="microseconds"))


def claim(store_url: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None,
          seconds: float | None = None) -> tuple[Lease, Lease | None]:
    """Claim the run for this process: (the lease held now, the generation it replaced or None).

    A live lease of this process is kept (the replaced one is then None and nothing is written); one that is
    released, expired or whose writer died is replaced by the next generation; a live lease of another writer
    raises :class:`RunLeasedError`, as does losing the race for the next generation.
    """
    fs, root = _fs(store_url, storage_options)
    folder = _folder(root, run_id)
    generations = _generations(fs, folder)
    previous = _read(fs, folder, generations[-1]) if generations else None
    if previous is not None and previous.dead_reason() is None:
        if previous.is_ours():
            return previous, None
        raise RunLeasedError(store_url, previous, _wait_hint())
    generation = (generations[-1] if generations else 0) + 1
    lease = _new_lease(run_id, generation, LEASE_SECONDS if seconds is None else seconds)
    _ensure_groups(fs, root, folder)
    if not _create_exclusive(fs, f"{folder}/{generation:08d}/zarr.json", _node({LEASE_ATTR: asdict(lease)})):
        winner = _read(fs, folder, generation)
        raise RunLeasedError(store_url, winner or replace(lease, writer="another writer", pid=-1, host="?"),
                             _wait_hint())
    return lease, previous


def renew(store_url: str, lease: Lease, *, storage_options: Mapping[str, Any] | None = None,
          seconds: float | None = None, release: bool = False) -> Lease:
    """Push a held lease's expiry ``seconds`` ahead (or release it); LeaseLostError when a newer generation exists."""
    fs, root = _fs(store_url, storage_options)
    folder = _folder(root, lease.run_id)
    newest = _generations(fs, folder)
    if newest and newest[-1] > lease.generation:
        raise LeaseLostError(f"{store_url}: run {lease.run_id} was taken over by lease generation {newest[-1]} "
                             f"({_read(fs, folder, newest[-1])}); this writer (lease {lease.generation}) stops")
    now = datetime.now(UTC)
    ahead = timedelta(seconds=0 if release else LEASE_SECONDS if seconds is None else seconds)
    renewed = replace(lease, released=release, expires=(now + ahead).isoformat(timespec="microseconds"))
    _write_over(fs, f"{folder}/{lease.generation:08d}/zarr.json", _node({LEASE_ATTR: asdict(renewed)}))
    return renewed


def check_holder(store_url: str, run_id: str, writer: str, *,
                 storage_options: Mapping[str, Any] | None = None) -> Lease:
    """The run's live lease when ``writer`` holds it (a process working for that writer may write); else
    LeaseLostError saying who holds it now, or that nobody does."""
    lease = current_lease(store_url, run_id, storage_options=storage_options)
    if lease is None or lease.writer != writer:
        raise LeaseLostError(f"{store_url}: run {run_id} is no longer held by {writer} "
                             f"(now: {lease.describe() if lease else 'no lease'}); this work stops")
    dead = lease.dead_reason()
    if dead is not None:
        raise LeaseLostError(f"{store_url}: the lease of run {run_id} no longer holds: {dead}; resume the run")
    return lease


@dataclass
class _Holding:
    lease: Lease
    storage_options: dict[str, Any]
    stop: threading.Event
    lost: str | None = None


_HELD: dict[tuple[str, str], _Holding] = {}
_HELD_LOCK = threading.Lock()


def _renew_until(store_url: str, holding: _Holding, every: float) -> None:
    failures = 0
    while not holding.stop.wait(every):
        try:
            holding.lease = renew(store_url, holding.lease, storage_options=holding.storage_options)
            failures = 0
        except LeaseLostError as exc:
            holding.lost = str(exc)
            log.error("%s", exc)
            return
        except Exception as exc:  # a missed renewal is retried; the lease holds until it expires
            failures += 1
            log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                    "lease of run %s not renewed (%d in a row): %s", holding.lease.run_id, failures, exc)


def _key(store_url: str, run_id: str) -> tuple[str, str]:
    local = "://" not in store_url or store_url.startswith("file://")
    return (str(Path(store_url.removeprefix("file://")).resolve()) if local else store_url, run_id)


@dataclass(frozen=True)
class Claim:
    """What :func:`hold` did: the lease held now, whether it was claimed just now (False: this process held it
    already), and the generation it replaced (None: the first)."""

    lease: Lease
    new: bool
    replaced: Lease | None


def hold(store_url: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None,
         every: float | None = None) -> Claim:
    """Claim the run (:func:`claim`) and keep the lease renewed from a daemon thread until :func:`let_go`;
    a run this process holds already is simply returned (``new`` False)."""
    key = _key(store_url, run_id)
    with _HELD_LOCK:
        holding = _HELD.get(key)
        if holding is not None and holding.lost is None and not holding.stop.is_set():
            return Claim(holding.lease, False, None)
        lease, previous = claim(store_url, run_id, storage_options=storage_options)
        holding = _Holding(lease, dict(storage_options or {}), threading.Event())
        _HELD[key] = holding
    threading.Thread(target=_renew_until, args=(store_url, holding, every or RENEW_EVERY_S), daemon=True,
                     name=f"lease {run_id}").start()
    return Claim(lease, True, previous)


def held(store_url: str, run_id: str) -> Lease | None:
    """This process's live lease of the run, or None."""
    holding = _HELD.get(_key(store_url, run_id))
    return None if holding is None or holding.stop.is_set() or holding.lost else holding.lease


def require_held(store_url: str, run_id: str) -> None:
    """LeaseLostError when this process held the run and lost it (it must write no more)."""
    holding = _HELD.get(_key(store_url, run_id))
    if holding is not None and holding.lost:
        raise LeaseLostError(holding.lost)


def let_go(store_url: str, run_id: str) -> None:
    """Stop renewing and release this process's lease of the run (the next writer need not wait for expiry)."""
    with _HELD_LOCK:
        holding = _HELD.pop(_key(store_url, run_id), None)
    if holding is None or holding.lost:
        return
    holding.stop.set()
    try:
        renew(store_url, holding.lease, storage_options=holding.storage_options, release=True)
    except Exception as exc:  # it expires on its own
        log.warning("lease of run %s not released (%s); it expires at %s", run_id, exc, holding.lease.expires)
