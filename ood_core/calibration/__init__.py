"""Leave-shots-out calibration (layer 4): a run chooses the settings the user left empty from its own shots,
scored with the evaluation's fast metrics, before the pipeline creates the run (``prepare_run(choose=...)``)."""

from ood_core.calibration.leave_out import (
    Plan,
    Setting,
    calibrate,
    default_grid,
    plain_run_evaluations,
    plan_for,
    run_calibration,
    split_shots,
)

__all__ = ["Plan", "Setting", "calibrate", "default_grid", "plain_run_evaluations", "plan_for", "run_calibration",
           "split_shots"]
