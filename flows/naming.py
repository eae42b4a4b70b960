"""Flow run names templated from the flow's parameters (works for dicts and pydantic models alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _get(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def run_name(prefix: str, *fields: str, argument: str = "params") -> Callable[[], str]:
    """A callable ``flow_run_name``: "<prefix>-<field>=<value>-..." from the flow's ``argument`` parameter.

    Prefect formats a string template with the raw parameters, which for a pydantic parameter may still be a
    dict when the run comes from a deployment; reading them through prefect.runtime handles both.
    """

    def name() -> str:
        from prefect.runtime import flow_run

        params = (flow_run.parameters or {}).get(argument)
        parts = [prefix]
        for field in fields:
            value = _get(params, field)
            if value is not None:
                parts.append(f"{field}={value}")
        return "-".join(parts)

    name.__name__ = f"{prefix}_run_name"
    return name
