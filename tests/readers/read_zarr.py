"""Read a run group with a client that is not this project's zarr-python; print JSON (tests/test_interop.py).

Runs in the readers' virtual environment (`make readers`: tests/readers/requirements.txt), never in the project's:

    python read_zarr.py tensorstore STORE GROUP   one JSON line per array: dtype, shape, sha256 of its values
                                                   (C order, little-endian), or the error tensorstore gave
    python read_zarr.py xarray STORE GROUP        the run through xarray.open_zarr on the zarr-python of that
                                                   environment (the oldest this project supports), consolidated
                                                   and not (consolidated: the run group opened as a store
                                                   of its own, schema 2): versions, warnings, sizes, per
                                                   variable dtype, sha256 of its values and attributes (one
                                                   JSON object)
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any


def _sha256(values: Any) -> str:
    import numpy as np

    array = np.ascontiguousarray(values)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return hashlib.sha256(array.tobytes()).hexdigest()


def read_tensorstore(store: str, group: str) -> None:
    import tensorstore as ts

    folder = Path(store) / group
    for path in sorted(p for p in folder.iterdir() if (p / "zarr.json").is_file()):
        if json.loads((path / "zarr.json").read_text()).get("node_type") != "array":
            continue
        out: dict[str, Any] = {"name": path.name}
        try:
            array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, open=True).result()
            values = array.read().result()
            out.update(dtype=str(values.dtype), shape=list(values.shape), sha256=_sha256(values))
        except Exception as exc:  # the reader's own refusal is the finding
            out["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out), flush=True)


def _open(store: str, group: str, consolidated: bool) -> dict[str, Any]:
    import xarray as xr

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the environment's own deprecations
        try:
            if consolidated:  # store schema 2: a run group holds its own consolidated metadata, the root none
                ds = xr.open_zarr(str(Path(store) / group), consolidated=True).load()
            else:
                ds = xr.open_zarr(store, group=group, consolidated=False).load()
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
    variables = {
        str(name): {"dims": list(var.dims), "dtype": str(var.dtype), "sha256": _sha256(var.values),
                    "attrs": {k: v for k, v in var.attrs.items() if isinstance(v, (str, int, float, list))}}
        for name, var in ds.variables.items()
    }
    return {"sizes": {str(k): int(v) for k, v in ds.sizes.items()}, "variables": variables,
            "coords": sorted(str(c) for c in ds.coords), "attrs": sorted(ds.attrs),
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


def read_xarray(store: str, group: str) -> None:
    import xarray as xr
    import zarr

    print(json.dumps({"zarr": zarr.__version__, "xarray": xr.__version__,
                      "consolidated": _open(store, group, True), "plain": _open(store, group, False)}))


if __name__ == "__main__":
    kind, store_path, group_path = sys.argv[1:4]
    {"tensorstore": read_tensorstore, "xarray": read_xarray}[kind](store_path, group_path)
