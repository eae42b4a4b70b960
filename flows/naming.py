"""Flow run names templated from the flow's parameters (works for dicts and pydantic models alike).

Names tell runs apart: what a run reads and where it writes (``glimpse_*.fits+2-to-store.zarr``) come before the
settings. A name typed in the UI's custom-run form is kept: Prefect applies a flow's ``flow_run_name`` to every
run, so the name callable returns the run's current name when it is not one Prefect or the UI made up (two or
three lowercase words joined by ``-``, see :data:`GENERATED_NAME`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

GENERATED_NAME = re.compile(r"^[a-z]+[0-9]*(-[a-z]+[0-9]*){1,2}$")
"""Made-up run names: Prefect's two lowercase words (``crimson-wombat``) and the UI form's three
(``gamma6-fangorn-warp``). A typed name is kept when it is anything else (a space, a capital, ``_``, ``.``)."""
LABEL_LENGTH = 40


def _get(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _label(path: str) -> str:
    name = PurePath(path.rstrip("/")).name or path
    return name if len(name) <= LABEL_LENGTH else name[: LABEL_LENGTH - 3] + "..."


def where_label(params: Any) -> str | None:
    """"<first input>[+N more]-to-<store>" from ``inputs``/``inbox`` and ``store``; None when neither is set."""
    inputs = _get(params, "inputs")
    source = None
    if isinstance(inputs, list) and inputs:
        source = _label(str(inputs[0])) + (f"+{len(inputs) - 1}" if len(inputs) > 1 else "")
    elif _get(params, "inbox"):
        source = _label(str(_get(params, "inbox")))
    store = _get(params, "store")
    parts = [p for p in (source, f"to-{_label(str(store))}" if store else None) if p]
    return "-".join(parts) or None


def typed_name(current: str | None) -> str | None:
    """The run's current name when a person chose it (not a made-up ``adjective-animal``), else None."""
    if current and not GENERATED_NAME.match(current):
        return current
    return None


def run_name(prefix: str, *fields: str, argument: str = "params", where: bool = False) -> Callable[[], str]:
    """A callable ``flow_run_name``: "<prefix>[-<where>]-<field>=<value>-..." from the flow's ``argument``.

    Prefect formats a string template with the raw parameters, which for a pydantic parameter may still be a
    dict when the run comes from a deployment; reading them through prefect.runtime handles both.
    """

    def name() -> str:
        from prefect.runtime import flow_run

        kept = typed_name(flow_run.get_name())
        if kept:
            return kept
        params = (flow_run.parameters or {}).get(argument)
        parts = [prefix]
        label = where_label(params) if where else None
        if label:
            parts.append(label)
        for field in fields:
            value = _get(params, field)
            if value is not None:
                parts.append(f"{field}={value}")
        return "-".join(parts)

    name.__name__ = f"{prefix}_run_name"
    return name


pipeline_run_name = run_name("pipeline", "seed", "samples", "t0", "steps", where=True)
