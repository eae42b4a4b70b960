"""Train-base flow: train (or resume training) the embedded base model, export it, write its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from flows.naming import run_name
from ood_core.base_model.training import (
    TrainConfig,
    export_model,
    read_checkpoint,
    train_base_model,
    warm_start_from_export,
)
from tasks.common import GPU_TAG, ProgressReporter, retry_on_io_error


class TrainBaseParameters(BaseModel):
    """Architecture, optimisation and output folders of a base-model training run."""

    model_config = ConfigDict(extra="forbid")

    out_dir: str = Field(min_length=1, description="folder the exported diffusers model (and card) goes to")
    checkpoint_dir: str = Field(min_length=1, description="checkpoint folder; an existing checkpoint is resumed")
    resolution: int = Field(default=64, ge=8, le=512, description="image side of the model")
    channels: int = Field(default=3, ge=1, le=3, description="image channels: 3 (RGB) or 1 (single band)")
    data: list[str] = Field(default=["photos"], min_length=1,
                            description="training data: sky-sim (simulated skies) and the image sets photos, "
                                        "wheel-photos, dead-leaves")
    natural_share: float = Field(default=0.1, ge=0.0, le=1.0,
                                 description="with sky-sim and image sets: the share of each batch from the images")
    init_from: str | None = Field(default=None, description="model folder whose weights start the training")
    train_only: list[str] = Field(default=[], description="UNet parameter name prefixes to train, the others "
                                  "frozen (e.g. conv_in conv_out); empty: all")
    continue_from: str | None = Field(default=None, description="exported model folder (with training_log.json) "
                                      "to continue when the checkpoint folder is empty: its weights, EMA and step "
                                      "count carry over, the optimizer restarts")
    block_out_channels: list[int] = Field(default=[32, 64, 128, 128], min_length=1, max_length=6,
                                          description="UNet widths per level (multiples of 16)")
    layers_per_block: int = Field(default=1, ge=1, le=4, description="ResNet layers per UNet block")
    attention_levels: list[int] = Field(default=[2], description="levels with self-attention")
    batch_size: int = Field(default=16, ge=1, le=1024, description="patches per step")
    learning_rate: float = Field(default=3e-4, gt=0, le=1.0, description="AdamW learning rate")
    warmup_steps: int = Field(default=200, ge=0, le=100_000, description="linear warm-up steps")
    total_steps: int = Field(default=6000, ge=1, le=10_000_000, description="steps of the whole training")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000,
                                  description="at most this many steps in this run (resume later for the rest)")
    max_seconds: float | None = Field(default=None, gt=0, le=30 * 86400,
                                      description="stop after this much wall time in this run, checkpointed")
    checkpoint_every: int = Field(default=100, ge=1, le=100_000, description="steps between checkpoints")
    seed: int = Field(default=0, ge=0, le=2**31, description="training seed")
    card_cutouts: str | None = Field(default=None, description="FITS cutout folder for the model card (none: skip)")
    card_t0: int = Field(default=600, ge=1, le=999, description="t0 of the card's reconstruction table")
    card_steps: int = Field(default=40, ge=2, le=1000, description="DDIM steps of the card's reconstruction table")
    where_trained: str | None = Field(default=None, description="hardware description for the model card "
                                                                "(default: the devices of the training history)")
    device: str = Field(default="auto", pattern="^(auto|cpu|cuda)$",
                        description="device of the training and of the card's model (auto: CUDA when available)")
    dtype: str = Field(default="auto", pattern="^(auto|float32|bfloat16)$",
                       description="training autocast precision (auto: bfloat16 on CUDA, float32 on the CPU)")
    sampler: str = Field(default="auto", pattern="^(auto|loop|batched)$",
                         description="patch sampler (auto: batched on CUDA, the per-image loop on the CPU)")

    def train_config(self) -> TrainConfig:
        """The ood_core training configuration."""
        return TrainConfig(
            resolution=self.resolution, channels=self.channels, data=tuple(self.data), init_from=self.init_from,
            natural_share=self.natural_share,
            train_only=tuple(self.train_only),
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block, attention_levels=tuple(self.attention_levels),
            batch_size=self.batch_size, learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
            total_steps=self.total_steps, checkpoint_every=self.checkpoint_every, seed=self.seed,
            device=self.device, dtype=self.dtype, sampler=self.sampler,
        )


@task(name="train", tags=[GPU_TAG], cache_policy=NO_CACHE)
def train_task(params: TrainBaseParameters) -> dict[str, Any]:
    """Train until total_steps (or max_steps more); resumes from the checkpoint folder."""
    reporter = ProgressReporter(f"train-base {params.out_dir}", every=5.0)

    def progress(step: int, end: int, loss: float) -> None:
        reporter("train", step, end)

    checkpoints = Path(params.checkpoint_dir)
    if params.continue_from and read_checkpoint(checkpoints) is None:
        seeded = warm_start_from_export(Path(params.continue_from), checkpoints, params.train_config())
        get_run_logger().info("continuing %s from step %d (fresh optimizer moments)", params.continue_from,
                              seeded.step)
    state = train_base_model(params.train_config(), checkpoints, max_steps=params.max_steps,
                             max_seconds=params.max_seconds, progress=progress)
    get_run_logger().info("trained to step %d (%.0f s in total)", state.step, state.seconds)
    return {"step": state.step, "seconds": state.seconds, "last_loss": state.losses[-1] if state.losses else None}


@task(name="export-model", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error,
      cache_policy=NO_CACHE)
def export_task(params: TrainBaseParameters) -> dict[str, Any]:
    """Write the EMA weights as a diffusers folder with its training log."""
    log = export_model(params.train_config(), Path(params.checkpoint_dir), Path(params.out_dir))
    return {"steps": log["steps"], "parameters": log["parameters"], "out_dir": params.out_dir}


@task(name="model-card", tags=[GPU_TAG], cache_policy=NO_CACHE)
def model_card_task(params: TrainBaseParameters) -> dict[str, Any]:
    """README, sample grid, loss curve and reconstruction table beside the weights."""
    from ood_core.base_model.model_card import write_model_card
    from ood_core.method.model import load_model

    assert params.card_cutouts is not None
    model = load_model(params.out_dir, device=params.device, dtype="float32")  # the card's figures in float32
    card = write_model_card(model, Path(params.out_dir), Path(params.card_cutouts),
                            where_trained=params.where_trained, settings=((params.card_t0, params.card_steps),))
    return {k: card[k] for k in ("weights_sha256", "steps", "median_of_source_medians_psnr_db")}


@flow(name="train-base", flow_run_name=run_name("train-base", "resolution", "total_steps", "max_steps"))
def train_base_flow(params: TrainBaseParameters) -> dict[str, Any]:
    """Train (resumable, progress shown), export to ``out_dir`` and write the model card."""
    trained = train_task(params)
    exported = export_task(params)
    card = model_card_task(params) if params.card_cutouts else None
    return {"train": trained, "export": exported, "card": card}
