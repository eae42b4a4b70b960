"""Provenance helpers: JSON-safe conversion, file hashes, environment capture and run ids.

Everything stored in a run's ``ood_run`` attribute goes through :func:`json_safe`, so the store holds only
strict JSON (no NaN, no numpy types) that any reader can parse.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

import numpy as np

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]

#: Distributions whose versions are recorded (looked up by metadata, so nothing heavy is imported).
TRACKED_PACKAGES = ("torch", "diffusers", "astropy", "zarr", "prefect", "numpy", "xarray", "scipy", "dask")
PACKAGE_NAME = "ood-synth"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def json_safe(obj: Any, _path: str = "$") -> JSONValue:
    """Convert ``obj`` to plain JSON types; non-finite floats become None.

    Raises TypeError naming the key path (e.g. ``$.sampler.seed``) of anything that has no JSON form.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), _path)
    if isinstance(obj, np.generic):  # remaining numpy scalars (str_, bytes_, complex...)
        return json_safe(obj.item(), _path)
    if isinstance(obj, (dt.datetime, dt.date, dt.time)):
        return obj.isoformat()
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, _path)
    if isinstance(obj, Mapping):
        out: dict[str, JSONValue] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{_path}: mapping key {key!r} is not a string")
            out[key] = json_safe(value, f"{_path}.{key}")
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(item, f"{_path}[{i}]") for i, item in enumerate(obj)]
    raise TypeError(f"{_path}: {type(obj).__name__} has no JSON form")


def strict_json_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN/inf (the output parses in every JSON reader)."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so big files are not held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds and a ``+00:00`` offset."""
    return utc_now().isoformat(timespec="microseconds")


def new_run_id(now: dt.datetime | None = None) -> str:
    """A run id that sorts by creation time and is unique: ``20261124T223300123456Z-1a2b3c``.

    The random suffix separates runs started in the same microsecond (e.g. on different machines).
    """
    moment = (now or utc_now()).astimezone(dt.UTC)
    return f"{moment:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}"


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(repo: str | os.PathLike[str] = _REPO_ROOT) -> str | None:
    """Commit hash of the source checkout (with ``-dirty`` when it has changes), or None without git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return f"{commit}-dirty" if status else commit


def environment_info() -> dict[str, Any]:
    """Package, versions, git commit and host: what is needed to rebuild the software side of a run."""
    version = package_version(PACKAGE_NAME)
    if version is None:  # running from a checkout that is not installed
        from ood_core import __version__

        version = __version__
    return {
        "package": PACKAGE_NAME,
        "version": version,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "packages": {name: package_version(name) for name in TRACKED_PACKAGES},
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
