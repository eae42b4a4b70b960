"""One pipeline run: parameters, ingest, the stages, and the one stage sequence that drives them.

    ingest -> create_run -> run_stages: invert -> prior -> sample -> finish

Flows run each stage as a Prefect task through :func:`run_stages`; :func:`run_in_process` does the same
without Prefect.
"""

from ood_core.errors import NoUsableInputError
from ood_core.pipeline.config import (
    MIN_USABLE_INPUTS,
    PipelineParameters,
    RunSettings,
    default_model_path,
)
from ood_core.pipeline.ingest import (
    IngestResult,
    drop_duplicates,
    ingest,
    input_identity,
    input_set_key,
    read_inputs,
)
from ood_core.pipeline.sample_stage import ProgressHook, SlotPlan
from ood_core.pipeline.sequence import (
    NETWORK_STAGES,
    SettingsChooser,
    StageExecutor,
    execute_shard,
    execute_stage,
    finish_sample_shards,
    mark_failed,
    prepare_run,
    prepare_sample_shards,
    resume_run,
    run_in_process,
    run_stages,
)
from ood_core.pipeline.stages import (
    ACCEPTED_PER_SAMPLE,
    STAGES,
    RunResult,
    create_run,
    finish_run,
    finish_sample,
    stage_invert,
    stage_prior,
    stage_sample,
    stored_prior,
)

__all__ = [
    "ACCEPTED_PER_SAMPLE",
    "MIN_USABLE_INPUTS",
    "NETWORK_STAGES",
    "STAGES",
    "IngestResult",
    "NoUsableInputError",
    "PipelineParameters",
    "ProgressHook",
    "RunResult",
    "RunSettings",
    "SettingsChooser",
    "SlotPlan",
    "StageExecutor",
    "create_run",
    "default_model_path",
    "drop_duplicates",
    "execute_shard",
    "execute_stage",
    "finish_run",
    "finish_sample",
    "finish_sample_shards",
    "ingest",
    "input_identity",
    "input_set_key",
    "mark_failed",
    "prepare_run",
    "prepare_sample_shards",
    "read_inputs",
    "resume_run",
    "run_in_process",
    "run_stages",
    "stage_invert",
    "stage_prior",
    "stage_sample",
    "stored_prior",
]
