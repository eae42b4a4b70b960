"""Training the embedded base model: a small DDPM on natural-image patches (deliberately not astronomy).

The in-domain data are random patches, at random scales and with flips, of the photographs bundled
with scikit-image and scikit-learn, so the project can train offline and FITS skies are genuinely out
of domain. Astronomical pictures that ship with scikit-image (Hubble deep field, moon) are excluded.
Training checkpoints after every ``checkpoint_every`` steps and resumes from the last checkpoint.
Checkpoints are ``state.safetensors`` (tensors in safetensors, the rest JSON; see :mod:`.checkpoint`), so
resuming from a folder someone else filled never unpickles anything.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from ood_core.base_model.checkpoint import load_checkpoint, load_legacy_pickle, save_checkpoint
from ood_core.errors import ConfigurationError

# RGB photographs of everyday scenes; grey textures are replicated to RGB.
_SKIMAGE_RGB = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "motorcycle_right.png")
_SKIMAGE_GREY = ("camera.png", "brick.png", "grass.png", "gravel.png", "coins.png")
_SKLEARN_RGB = ("china.jpg", "flower.jpg")
EXCLUDED_ASTRONOMICAL = ("hubble_deep_field", "moon")
CHECKPOINT_FILE = "state.safetensors"
LEGACY_CHECKPOINT_FILE = "state.pt"
"""Pickle checkpoints of older versions: read only with torch's restricted loader (weights_only=True)."""


def natural_images() -> dict[str, npt.NDArray[np.float32]]:
    """The offline in-domain photographs as float32 (H, W, 3) arrays in [0, 1]."""
    import skimage.data
    import skimage.io
    from sklearn.datasets import load_sample_image

    # Files that ship inside the scikit-image wheel (no download through its data fetcher).
    data_dir = Path(skimage.data.__file__).parent
    images: dict[str, npt.NDArray[np.float32]] = {}
    for name in _SKIMAGE_RGB:
        rgb = skimage.io.imread(data_dir / name)[..., :3]
        images[name.split(".")[0]] = np.asarray(rgb, dtype=np.float32) / 255.0
    for name in _SKIMAGE_GREY:
        grey = np.asarray(skimage.io.imread(data_dir / name), dtype=np.float32) / 255.0
        images[name.split(".")[0]] = np.repeat(grey[..., None], 3, axis=2)
    for name in _SKLEARN_RGB:
        images[name.split(".")[0]] = np.asarray(load_sample_image(name), dtype=np.float32) / 255.0
    return images


class PatchSampler:
    """Random square patches at random scales with horizontal/vertical flips, in [-1, 1] (N, 3, R, R)."""

    def __init__(self, images: dict[str, npt.NDArray[np.float32]], resolution: int, max_scale: float = 4.0):
        self.images = [torch.from_numpy(img).permute(2, 0, 1).contiguous() for img in images.values()]
        self.resolution = resolution
        self.max_scale = max_scale

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        res = self.resolution
        out = torch.empty(batch_size, 3, res, res)
        picks = torch.randint(len(self.images), (batch_size,), generator=generator)
        for i in range(batch_size):
            image = self.images[int(picks[i])]
            height, width = image.shape[1:]
            max_scale = min(self.max_scale, height / res, width / res)
            # Log-uniform scale: crop side = res * scale, then area-resize to res.
            scale = math.exp(float(torch.rand((), generator=generator)) * math.log(max(max_scale, 1.0)))
            side = max(res, min(round(res * scale), height, width))
            y = int(torch.randint(height - side + 1, (), generator=generator))
            x = int(torch.randint(width - side + 1, (), generator=generator))
            patch = image[:, y : y + side, x : x + side]
            if side != res:
                patch = F.interpolate(patch[None], size=(res, res), mode="area")[0]
            if bool(torch.rand((), generator=generator) < 0.5):
                patch = patch.flip(2)
            if bool(torch.rand((), generator=generator) < 0.5):
                patch = patch.flip(1)
            out[i] = patch
        return out * 2.0 - 1.0


@dataclass
class TrainConfig:
    """Architecture and optimisation settings of the base model."""

    resolution: int = 64
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
        in_channels=3,
        out_channels=3,
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


ProgressCallback = Callable[[int, int, float], None]


def train_base_model(
    config: TrainConfig,
    checkpoint_dir: Path,
    *,
    max_steps: int | None = None,
    progress: ProgressCallback | None = None,
) -> TrainState:
    """Train (or resume) until ``config.total_steps`` or ``max_steps`` more steps; checkpoint regularly."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state_file = checkpoint_dir / CHECKPOINT_FILE
    torch.manual_seed(config.seed)
    unet = build_unet(config)
    scheduler = build_scheduler(config)
    ema = EMAModel(unet.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, power=2 / 3)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainState(step=0, losses=[], seconds=0.0)
    saved = read_checkpoint(checkpoint_dir)
    if saved is not None:
        unet.load_state_dict(saved["unet"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        state = TrainState(step=saved["step"], losses=saved["losses"], seconds=saved["seconds"])
    sampler = PatchSampler(natural_images(), config.resolution)
    alphas_cumprod = scheduler.alphas_cumprod
    end = config.total_steps if max_steps is None else min(config.total_steps, state.step + max_steps)
    unet.train()
    started = time.perf_counter()
    window: list[float] = []
    while state.step < end:
        batch = sampler.sample(config.batch_size, generator)
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(config.num_train_timesteps, (batch.shape[0],), generator=generator)
        a_t = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = a_t.sqrt() * batch + (1 - a_t).sqrt() * noise
        lr_scale = min(1.0, (state.step + 1) / max(config.warmup_steps, 1))
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * lr_scale
        loss = F.mse_loss(unet(noisy, timesteps).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's backward() is unannotated
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.step(unet.parameters())
        state.step += 1
        window.append(float(loss.detach()))
        if progress is not None:
            progress(state.step, end, window[-1])
        if state.step % config.checkpoint_every == 0 or state.step == end:
            state.losses.append(float(np.mean(window)))
            window = []
            state.seconds += time.perf_counter() - started
            started = time.perf_counter()
            _save_checkpoint(state_file, unet, ema, optimizer, generator, state, config)
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
        "step": state.step,
        "losses": state.losses,
        "seconds": state.seconds,
        "config": config.to_dict(),
    }
    save_checkpoint(path, payload)  # atomic: a kill mid-save never corrupts the last good checkpoint


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
    state = TrainState(
        step=int(log["steps"]), losses=list(log["loss_per_checkpoint"]), seconds=float(log["train_seconds"])
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
        "parameters": int(sum(p.numel() for p in unet.parameters())),
        "config": config.to_dict(),
        "data": {
            "skimage": list(_SKIMAGE_RGB + _SKIMAGE_GREY),
            "sklearn": list(_SKLEARN_RGB),
            "excluded_astronomical": list(EXCLUDED_ASTRONOMICAL),
        },
    }
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=2))
    return log
