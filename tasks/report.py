"""Report task: a run's summary (with its contact sheet), per-sample criteria table and calibration table as
Prefect artifacts."""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ood_core.evaluation.run_summary import calibration_rows, criteria_rows, run_summary_markdown
from ood_core.evaluation.sheets import run_contact_sheet
from ood_core.store import open_run
from tasks.artifacts import artifact_key, artifact_path, png_base64


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def report_task(result: dict[str, Any], key_prefix: str = "ood-run") -> dict[str, Any]:
    """Attach the summary (contact sheet embedded) and the criteria table to the flow run; returns keys, PNG path."""
    ds = open_run(result["store"], result["run_id"], chunks=None)
    record = dict(ds.attrs["ood_run"])
    sheet = run_contact_sheet(ds, artifact_path(result["store"], f"{result['run_id']}_contact.png"))
    prefix = artifact_key(key_prefix)
    keys = {"summary": f"{prefix}-summary", "criteria": f"{prefix}-criteria"}
    summary = run_summary_markdown(result, record, sheet_path=sheet.path, sheet_caption=sheet.caption,
                                   sheet_b64=png_base64(sheet.path))
    create_markdown_artifact(summary, key=keys["summary"], description=f"ood-synth run {result['run_id']}")
    create_table_artifact(criteria_rows(ds), key=keys["criteria"],
                          description=f"per-sample criteria of run {result['run_id']} (seeds as text: exact)")
    calibration = calibration_rows(record)
    if calibration:
        keys["calibration"] = f"{prefix}-calibration"
        create_table_artifact(calibration, key=keys["calibration"],
                              description=f"leave-shots-out calibration of run {result['run_id']}: settings x "
                                          f"scores against the held-out shots (lower is better)")
    return {"artifact_keys": sorted(keys.values()), "contact_sheet": os.fspath(sheet.path)}
