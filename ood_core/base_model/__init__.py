"""The embedded default: training the shipped base model, demo skies, the model card."""

from ood_core.base_model.demo_skies import (
    SkyConfig,
    make_sky,
    psf_kernel,
    write_demo_skies,
)
from ood_core.base_model.model_card import (
    ReconstructionRow,
    loss_curve_png,
    main,
    reconstruction_table,
    sample_grid_png,
    write_model_card,
)
from ood_core.base_model.patches import BatchedPatchSampler, PatchSampler
from ood_core.base_model.training import (
    CHECKPOINT_FILE,
    TrainConfig,
    Trainer,
    TrainSetup,
    TrainState,
    build_scheduler,
    build_unet,
    export_model,
    read_checkpoint,
    resolve_setup,
    train_base_model,
    warm_start_from_export,
)
from ood_core.base_model.training_data import DATA_SETS, EXCLUDED_ASTRONOMICAL, dead_leaves, natural_images

__all__ = [
    "CHECKPOINT_FILE",
    "DATA_SETS",
    "EXCLUDED_ASTRONOMICAL",
    "BatchedPatchSampler",
    "PatchSampler",
    "ReconstructionRow",
    "SkyConfig",
    "TrainConfig",
    "TrainSetup",
    "TrainState",
    "Trainer",
    "build_scheduler",
    "build_unet",
    "dead_leaves",
    "export_model",
    "loss_curve_png",
    "main",
    "make_sky",
    "natural_images",
    "psf_kernel",
    "read_checkpoint",
    "reconstruction_table",
    "resolve_setup",
    "sample_grid_png",
    "train_base_model",
    "warm_start_from_export",
    "write_demo_skies",
    "write_model_card",
]
