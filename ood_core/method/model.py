"""Loading the frozen diffusion model: a diffusers ``UNet2DModel`` plus its noise schedule.

A model folder is either a diffusers pipeline folder (``model_index.json`` with ``unet/`` and
``scheduler/`` subfolders, as ``DDPMPipeline.save_pretrained`` writes it) or a bare UNet folder with a
``scheduler_config.json`` beside its ``config.json``. A hub id works where the machine is online.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler, UNet2DModel

from ood_core.errors import ConfigurationError

DeviceSpec = Literal["auto", "cpu", "cuda"] | str
DTypeSpec = Literal["float32", "float16", "bfloat16"] | str

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def resolve_device(spec: DeviceSpec = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cuda' without a GPU is an explicit error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("device 'cuda' requested but no CUDA GPU is visible; use --device auto or cpu")
    return device


def resolve_dtype(spec: DTypeSpec, device: torch.device) -> torch.dtype:
    """Map a dtype name to torch; half precision only on CUDA, where it is fast and supported."""
    if spec not in _DTYPES:
        raise ConfigurationError(f"unknown dtype {spec!r}; choose one of {sorted(_DTYPES)}")
    dtype = _DTYPES[spec]
    if dtype != torch.float32 and device.type == "cpu":
        raise ConfigurationError(f"dtype {spec} is not supported on CPU for this model; use float32")
    return dtype


def weights_sha256(folder: Path) -> str:
    """sha256 over the model's weight files (sorted by name), for provenance."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise ConfigurationError(f"no weight files ({', '.join(_WEIGHT_SUFFIXES)}) under {folder}")
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class FrozenDiffusionModel:
    """A noise-prediction network eps(x, t) with the cumulative alphas a_t of its own schedule."""

    unet: UNet2DModel
    alphas_cumprod: torch.Tensor  # (T,) float64 on the model's device
    device: torch.device
    dtype: torch.dtype
    source: str
    weights_sha256: str
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def resolution(self) -> int:
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def learned_variance(self) -> bool:
        """Models such as guided-diffusion's output eps and a variance: 2C channels."""
        return int(self.unet.config.out_channels) == 2 * self.channels

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """eps(x, t) for a batch at one integer timestep; returns float32 of x's shape."""
        t = torch.full((x.shape[0],), int(timestep), device=self.device, dtype=torch.long)
        out: torch.Tensor = self.unet(x.to(self.device, self.dtype), t).sample
        if self.learned_variance:
            out = out[:, : self.channels]
        return out.float()

    def provenance(self) -> dict[str, Any]:
        """What a reader needs to identify this model: source, checksum, configs, device."""
        return {
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "unet_config": _plain_config(self.unet_config),
            "scheduler_config": _plain_config(self.scheduler_config),
            "learned_variance": self.learned_variance,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters": int(sum(p.numel() for p in self.unet.parameters())),
        }


def _plain_config(config: Any) -> dict[str, Any]:
    return {str(k): v for k, v in json.loads(json.dumps(dict(config), default=str)).items()}


def _locate(source: Path) -> tuple[Path, Path]:
    """Return (unet folder, scheduler config file) for a pipeline folder or a bare UNet folder."""
    if (source / "unet" / "config.json").is_file():
        unet_dir = source / "unet"
        candidates = [source / "scheduler" / "scheduler_config.json", source / "scheduler_config.json"]
    elif (source / "config.json").is_file():
        unet_dir = source
        candidates = [source / "scheduler_config.json", source.parent / "scheduler" / "scheduler_config.json"]
    else:
        raise ConfigurationError(
            f"{source} is not a diffusers model folder: expected unet/config.json or config.json"
        )
    for candidate in candidates:
        if candidate.is_file():
            return unet_dir, candidate
    raise ConfigurationError(
        f"no scheduler config for {source}: looked for {', '.join(str(c) for c in candidates)}"
    )


def load_model(
    source: str | Path, device: DeviceSpec = "auto", dtype: DTypeSpec = "float32"
) -> FrozenDiffusionModel:
    """Load a frozen UNet2DModel and its schedule from a local folder (or a hub id when online)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = Path(source)
    if path.exists():
        unet_dir, scheduler_file = _locate(path)
        unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch_dtype)
        scheduler_config: dict[str, Any] = json.loads(scheduler_file.read_text())
        checksum = weights_sha256(unet_dir)
    else:
        # A hub id: diffusers resolves and caches it; only possible when the machine is online.
        try:
            unet = UNet2DModel.from_pretrained(str(source), subfolder="unet", torch_dtype=torch_dtype)
            scheduler = DDPMScheduler.from_pretrained(str(source), subfolder="scheduler")
        except Exception as exc:  # diffusers raises several types for missing/unreachable repos
            raise ConfigurationError(f"cannot load model {source!r}: not a local folder and not loadable "
                                     f"from the hub ({exc})") from exc
        scheduler_config = dict(scheduler.config)
        checksum = "hub:" + str(getattr(unet.config, "_name_or_path", source))
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ConfigurationError(f"model predicts {prediction!r}; DDIM inversion here needs epsilon prediction")
    schedule = DDPMScheduler.from_config(scheduler_config)
    unet.requires_grad_(False)
    unet.eval()
    unet.to(torch_device)
    return FrozenDiffusionModel(
        unet=unet,
        alphas_cumprod=schedule.alphas_cumprod.to(torch.float64).to(torch_device),
        device=torch_device,
        dtype=torch_dtype,
        source=str(source),
        weights_sha256=checksum,
        unet_config=dict(unet.config),
        scheduler_config=scheduler_config,
    )


_CACHE: dict[tuple[str, str, str], FrozenDiffusionModel] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(source: str | Path, device: DeviceSpec = "auto", dtype: DTypeSpec = "float32") -> FrozenDiffusionModel:
    """:func:`load_model` once per process and setting (the stages of one run, and task workers, share it)."""
    key = (str(source), str(device), str(dtype))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_model(source, device=device, dtype=dtype)
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every cached model (benchmarks that time loading)."""
    with _CACHE_LOCK:
        _CACHE.clear()
