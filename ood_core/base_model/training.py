"""Training the embedded base model: a small DDPM on natural-image patches (deliberately not astronomy).

The in-domain data are random patches, at random scales and with flips, of the photographs bundled
with scikit-image and scikit-learn, so the project can train offline and FITS skies are genuinely out
of domain. Astronomical pictures that ship with scikit-image (Hubble deep field, moon) are excluded.
Training checkpoints after every ``checkpoint_every`` steps and resumes from the last checkpoint.
Checkpoints are ``state.safetensors`` (tensors in safetensors, the rest JSON; see :mod:`.checkpoint`), so
resuming from a folder someone else filled never unpickles anything.

Training runs on ``TrainConfig.device`` (auto: CUDA when available), under bfloat16 autocast on CUDA by default
(weights, optimizer and loss stay float32), with the batched patch sampler on CUDA (:mod:`.patches`). A CPU run
keeps the per-image patch loop and a CPU generator, so it resumes bit for bit. Checkpoints are device-independent
(every tensor is saved from the CPU); a run may resume on another device, where it continues statistically (its
random stream is re-seeded from the step) and the checkpoint's ``history`` records which steps ran where.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from ood_core.base_model.checkpoint import load_checkpoint, load_legacy_pickle, save_checkpoint
from ood_core.base_model.patches import SAMPLERS
from ood_core.base_model.training_mix import Sampler, build_sampler, describe_data
from ood_core.errors import ConfigurationError
from ood_core.method.model import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.safetensors"
LEGACY_CHECKPOINT_FILE = "state.pt"
"""Pickle checkpoints of older versions: read only with torch's restricted loader (weights_only=True)."""
LEGACY_HISTORY = {"device": "cpu", "device_name": "cpu", "dtype": "float32", "sampler": "loop"}
"""Where the steps of a checkpoint or export without a ``history`` ran: the CPU loop was the only path then."""
TRAIN_DTYPES = ("auto", "float32", "bfloat16")
GPU_LOSS_READ_EVERY = 25
"""On a GPU the loss is read back (a host sync) only every this many steps, for progress; CPU: every step."""


@dataclass
class TrainConfig:
    """Architecture and optimisation settings of the base model."""

    resolution: int = 64
    channels: int = 3
    """Image channels of the model: 3 (RGB, ``models/base64``) or 1 (single-band skies)."""
    data: tuple[str, ...] = ("photos",)
    """Named sets of training images (:mod:`.training_data`): photos, wheel-photos, dead-leaves, and sky-sim (the
    simulated skies of :mod:`.sky_scenes`, a new scene for every patch)."""
    natural_share: float = 0.1
    """With sky-sim and image sets together: the share of every batch cut from the image sets."""
    library: dict[str, Any] = field(default_factory=dict)
    """Overrides of the GalSim stamp library's :class:`~.sky_library.LibraryConfig` (sky-sim)."""
    scenes: dict[str, Any] = field(default_factory=dict)
    """Overrides of the simulated scenes' :class:`~.sky_scenes.SceneConfig` (sky-sim)."""
    init_from: str | None = None
    """A model folder whose weights start the training (same architecture), instead of a random init."""
    train_only: tuple[str, ...] = ()
    """Names (prefixes) of the UNet parameters to train, the others frozen (e.g. conv_in, conv_out); empty: all."""
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (2,)
    batch_size: int = 16
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    total_steps: int = 6000
    ema_max_decay: float = 0.999
    checkpoint_every: int = 100
    seed: int = 0
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda."""
    dtype: str = "auto"
    """Autocast precision of the UNet: auto (bfloat16 on CUDA, float32 on the CPU) | float32 | bfloat16."""
    sampler: str = "auto"
    """Patch sampler: auto (batched on CUDA, loop on the CPU) | loop | batched (see :mod:`.patches`)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return plain


def build_unet(config: TrainConfig) -> UNet2DModel:
    """A UNet2DModel of the given widths with self-attention at the listed levels."""
    levels = range(len(config.block_out_channels))
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DModel(
        sample_size=config.resolution,
        in_channels=config.channels,
        out_channels=config.channels,
        layers_per_block=config.layers_per_block,
        block_out_channels=config.block_out_channels,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=16,
        attention_head_dim=32,
    )


def build_scheduler(config: TrainConfig) -> DDPMScheduler:
    """DDPM schedule of the method's base models: 1000 steps, linear betas, epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


@dataclass
class TrainState:
    step: int
    losses: list[float]
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    """Which steps ran where: [{"start", "end", "device", "device_name", "dtype", "sampler"}, ...]."""


ProgressCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainSetup:
    """Where and how one training call runs: the config's ``auto`` settings resolved on this machine."""

    device: torch.device
    dtype: torch.dtype
    sampler: str

    @property
    def generator_device(self) -> torch.device:
        """The batched sampler draws on the device; the loop sampler (and so its whole run) on the CPU."""
        return self.device if self.sampler == "batched" else torch.device("cpu")

    def describe(self) -> dict[str, str]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"device": self.device.type, "device_name": name, "dtype": str(self.dtype).removeprefix("torch."),
                "sampler": self.sampler}


def resolve_setup(config: TrainConfig) -> TrainSetup:
    """Device (auto: CUDA when available), autocast dtype (auto: bfloat16 on CUDA) and patch sampler
    (auto: batched on CUDA, the per-image loop on the CPU); a request this machine cannot honour raises."""
    device = resolve_device(config.device)
    if config.dtype not in TRAIN_DTYPES:
        raise ConfigurationError(f"training dtype {config.dtype!r}: choose one of {', '.join(TRAIN_DTYPES)}")
    dtype = resolve_dtype(config.dtype, device)
    sampler = config.sampler
    if sampler == "auto":
        sampler = "batched" if device.type == "cuda" else "loop"
    if sampler not in SAMPLERS:
        raise ConfigurationError(f"patch sampler {config.sampler!r}: choose one of auto, {', '.join(SAMPLERS)}")
    return TrainSetup(device=device, dtype=dtype, sampler=sampler)


class Trainer:
    """The UNet, EMA, optimizer, random generator and patch sampler of one training call, on its device.

    ``batch()`` draws a batch of patches, ``step(batch)`` takes one optimizer step and returns the loss (a
    tensor on the device: reading it is a host sync). ``bench/bench_training.py`` times the two apart.
    """

    def __init__(self, config: TrainConfig, setup: TrainSetup | None = None) -> None:
        self.config = config
        self.setup = setup or resolve_setup(config)
        device = self.setup.device
        torch.manual_seed(config.seed)
        self.unet = build_unet(config)
        if config.init_from is not None:
            self.unet.load_state_dict(initial_weights(config))
        self.unet.to(device)
        self.alphas_cumprod = build_scheduler(config).alphas_cumprod.to(device)
        self.ema = EMAModel(self.unet.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, power=2 / 3)
        self.optimizer = torch.optim.AdamW(trainable_parameters(self.unet, config.train_only),
                                           lr=config.learning_rate, weight_decay=0.0)
        self.generator = torch.Generator(device=self.setup.generator_device).manual_seed(config.seed)
        self.state = TrainState(step=0, losses=[], seconds=0.0)
        self.sampler: Sampler = build_sampler(config, self.setup.sampler, self.setup.generator_device)

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint written on any device (its tensors are on the CPU); one slimmed by
        :func:`slim_checkpoint` restarts the optimizer (and, without live weights, trains on from the EMA)."""
        step = int(saved["step"])
        self.ema.load_state_dict(saved["ema"])
        self.ema.to(device=self.setup.device)
        if "unet" in saved:
            self.unet.load_state_dict(saved["unet"])
        else:  # a checkpoint slimmed to its EMA (weights brought back from a lent GPU): the EMA weights train on
            self.ema.copy_to(self.unet.parameters())
        if "optimizer" in saved:
            self.optimizer.load_state_dict(saved["optimizer"])  # moves the moments to the parameters' device
        else:
            log.info("checkpoint at step %d has no optimizer state: AdamW restarts (as --continue-from does)", step)
        if saved.get("generator_device", "cpu") == self.generator.device.type:
            self.generator.set_state(saved["generator"])
        else:
            log.warning("checkpoint at step %d drew its random numbers on %s; this run draws on %s: re-seeded from "
                        "the step (the run continues statistically, not bit for bit)", step,
                        saved.get("generator_device", "cpu"), self.generator.device.type)
            self.generator.manual_seed(self.config.seed + step)
        history = saved.get("history") or ([{"start": 0, "end": step, **LEGACY_HISTORY}] if step else [])
        self.state = TrainState(step=step, losses=list(saved["losses"]), seconds=float(saved["seconds"]),
                                history=[dict(h) for h in history])

    def batch(self) -> torch.Tensor:
        return self.sampler.sample(self.config.batch_size, self.generator)

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """One AdamW step on ``batch`` (noise, timesteps from the run's generator); the detached loss."""
        config, device, generator = self.config, self.setup.device, self.generator
        noise = torch.randn(batch.shape, generator=generator, device=generator.device)
        timesteps = torch.randint(config.num_train_timesteps, (batch.shape[0],), generator=generator,
                                  device=generator.device)
        batch, noise, timesteps = batch.to(device), noise.to(device), timesteps.to(device)
        a_t = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = a_t.sqrt() * batch + (1 - a_t).sqrt() * noise
        lr_scale = min(1.0, (self.state.step + 1) / max(config.warmup_steps, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * lr_scale
        with torch.autocast(device.type, dtype=self.setup.dtype, enabled=self.setup.dtype != torch.float32):
            prediction = self.unet(noisy, timesteps).sample
        loss = F.mse_loss(prediction.float(), noise)  # float32 whatever the autocast dtype
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's backward() is unannotated
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.ema.step(self.unet.parameters())
        self.state.step += 1
        return loss.detach()

    def save(self, path: Path) -> None:
        _save_checkpoint(path, self.unet, self.ema, self.optimizer, self.generator, self.state, self.config)


def initial_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The UNet weights of the model folder ``config.init_from``; refused unless its architecture is the config's."""
    assert config.init_from is not None
    folder = Path(config.init_from)
    source = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True)
    expected = build_unet(config).config
    differ = [k for k in ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
                          "down_block_types", "sample_size") if _tuple_of(source.config[k]) != _tuple_of(expected[k])]
    if differ:
        found = ", ".join(f"{k}={source.config[k]}" for k in differ)
        raise ConfigurationError(f"--init-from {folder}: its UNet differs from the training config ({found}); "
                                 "give the training the same architecture")
    return {k: v.detach().clone() for k, v in source.state_dict().items()}


def trainable_parameters(unet: UNet2DModel, prefixes: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """The parameters named by ``prefixes`` (all when empty); the others stop requiring gradients."""
    chosen = []
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(not prefixes or name.startswith(prefixes))
        if parameter.requires_grad:
            chosen.append(parameter)
    if not chosen:
        raise ConfigurationError(f"train_only {list(prefixes)} names no UNet parameter; parameter names start with "
                                 f"{', '.join(sorted({n.split('.')[0] for n, _ in unet.named_parameters()}))}")
    return chosen


def _tuple_of(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _extend_history(history: list[dict[str, Any]], start: int, end: int, where: dict[str, str]) -> None:
    """Steps ``start..end`` ran ``where``: extend the last entry when it is the same setup and adjoins."""
    last = history[-1] if history else None
    if last is not None and last["end"] >= start and all(last.get(k) == v for k, v in where.items()):
        last["end"] = end
    else:
        history.append({"start": start, "end": end, **where})


def train_base_model(
    config: TrainConfig,
    checkpoint_dir: Path,
    *,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    progress: ProgressCallback | None = None,
) -> TrainState:
    """Train (or resume) until ``config.total_steps``, ``max_steps`` more steps or ``max_seconds`` of wall time
    (then checkpoint at once: a time-boxed run on a lent GPU keeps every step); checkpoint regularly.

    ``progress(step, end, loss)`` gets the latest loss read back: every step on the CPU, every
    :data:`GPU_LOSS_READ_EVERY` steps on a GPU (a read waits for the device)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state_file = checkpoint_dir / CHECKPOINT_FILE
    trainer = Trainer(config)
    saved = read_checkpoint(checkpoint_dir)
    if saved is not None:
        trainer.restore(saved)
    state, where = trainer.state, trainer.setup.describe()
    first = state.step
    end = config.total_steps if max_steps is None else min(config.total_steps, state.step + max_steps)
    read_every = 1 if trainer.setup.device.type == "cpu" else GPU_LOSS_READ_EVERY
    trainer.unet.train()
    started = deadline = time.perf_counter()
    deadline += math.inf if max_seconds is None else max_seconds
    window: list[torch.Tensor] = []
    last_loss = float("nan")
    while state.step < end:
        window.append(trainer.step(trainer.batch()))
        if progress is not None:
            if state.step % read_every == 0 or state.step == first + 1:
                last_loss = float(window[-1])
            progress(state.step, end, last_loss)
        if time.perf_counter() >= deadline:
            end = state.step
        if state.step % config.checkpoint_every == 0 or state.step == end:
            state.losses.append(float(np.mean(torch.stack(window).double().cpu().numpy())))
            window = []
            state.seconds += time.perf_counter() - started
            started = time.perf_counter()
            _extend_history(state.history, first, state.step, where)
            trainer.save(state_file)
    return state


def read_checkpoint(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The checkpoint state in ``checkpoint_dir`` (None when there is none); never runs code from the folder.

    ``state.safetensors`` is read as tensors + JSON; an old ``state.pt`` only through torch's restricted
    unpickler, and a pickle it refuses (one that would import or call anything) raises ConfigurationError.
    """
    current = checkpoint_dir / CHECKPOINT_FILE
    if current.exists():
        return load_checkpoint(current)
    legacy = checkpoint_dir / LEGACY_CHECKPOINT_FILE
    if legacy.exists():
        return load_legacy_pickle(legacy)
    return None


def _save_checkpoint(
    path: Path,
    unet: UNet2DModel,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: TrainState,
    config: TrainConfig,
) -> None:
    payload = {
        "unet": unet.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "generator_device": generator.device.type,
        "step": state.step,
        "losses": state.losses,
        "seconds": state.seconds,
        "history": state.history,
        "config": config.to_dict(),
    }
    save_checkpoint(path, payload)  # atomic, every tensor from the CPU: a kill mid-save keeps the last good one


def slim_checkpoint(saved: dict[str, Any], *, keep_live: bool = True) -> dict[str, Any]:
    """A checkpoint without its optimizer state (and without the live weights unless ``keep_live``): a third to
    two thirds of the bytes, still resumable (:meth:`Trainer.restore`); what a lent GPU brings back."""
    dropped = {"optimizer"} | (set() if keep_live else {"unet"})
    return {key: value for key, value in saved.items() if key not in dropped}


def warm_start_from_export(model_dir: Path, checkpoint_dir: Path, config: TrainConfig) -> TrainState:
    """Seed a checkpoint from an exported model folder when the original checkpoint is gone.

    The exported (EMA) weights become both the live and the EMA weights; the optimizer starts
    fresh. Step count, loss history and seconds carry over from the folder's training log, so
    the model card still tells the whole history.
    """
    log = json.loads((model_dir / "training_log.json").read_text())
    unet = UNet2DModel.from_pretrained(model_dir / "unet", use_safetensors=True)
    ema = EMAModel(unet.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, power=2 / 3)
    ema.optimization_step = int(log["steps"])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed + int(log["steps"]))
    steps = int(log["steps"])
    state = TrainState(
        step=steps, losses=list(log["loss_per_checkpoint"]), seconds=float(log["train_seconds"]),
        history=log.get("history") or ([{"start": 0, "end": steps, **LEGACY_HISTORY}] if steps else []),
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    _save_checkpoint(checkpoint_dir / CHECKPOINT_FILE, unet, ema, optimizer, generator, state, config)
    return state


def export_model(config: TrainConfig, checkpoint_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write the EMA weights as a diffusers pipeline folder (unet/ + scheduler/) and a training log."""
    saved = read_checkpoint(checkpoint_dir)
    if saved is None:
        raise ConfigurationError(f"{checkpoint_dir}: no checkpoint ({CHECKPOINT_FILE}) to export")
    unet = build_unet(config)
    unet.load_state_dict(saved["unet"])
    ema = EMAModel(unet.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, power=2 / 3)
    ema.load_state_dict(saved["ema"])
    ema.copy_to(unet.parameters())
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    build_scheduler(config).save_pretrained(out_dir / "scheduler")
    (out_dir / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": "0.42.1",
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
            },
            indent=2,
        )
    )
    log = {
        "steps": saved["step"],
        "batch_size": config.batch_size,
        "checkpoint_every": config.checkpoint_every,
        "loss_per_checkpoint": saved["losses"],
        "train_seconds": saved["seconds"],
        "history": saved.get("history") or [{"start": 0, "end": saved["step"], **LEGACY_HISTORY}],
        "parameters": int(sum(p.numel() for p in unet.parameters())),
        "config": config.to_dict(),
        "data": describe_data(config),
    }
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=2))
    return log
