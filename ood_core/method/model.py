"""Loading the frozen diffusion model: a diffusers ``UNet2DModel`` plus its noise schedule.

A model folder is either a diffusers pipeline folder (``model_index.json`` with ``unet/`` and
``scheduler/`` subfolders, as ``DDPMPipeline.save_pretrained`` writes it) or a bare UNet folder with a
``scheduler_config.json`` beside its ``config.json``. A hub id works where the machine is online.

On CUDA the network runs fast: weights and inputs in ``channels_last`` memory format, the dtype ``"auto"``
gives bfloat16 (the pipeline guards it with the reconstruction check, :mod:`ood_core.method.precision`),
``compile=True`` wraps the UNet in ``torch.compile``, and :func:`auto_batch_size` sizes batches from the
free GPU memory. The schedule's a_t are also kept on the host, so a DDIM step never reads the device. On the
CPU none of this applies: float32, contiguous, batches of 16, numerically as before.

Weights are read from ``.safetensors`` files only (tensors, no code), unless the caller passes
``allow_pickle_weights=True`` for a trusted folder that has only pickle ``.bin`` weights (diffusers then
reads them with torch's restricted loader, ``weights_only=True``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler, UNet2DModel

from ood_core.errors import ConfigurationError

DeviceSpec = Literal["auto", "cpu", "cuda"] | str
DTypeSpec = Literal["auto", "float32", "float16", "bfloat16"] | str

log = logging.getLogger(__name__)

CPU_BATCH_SIZE = 16
"""Images per network evaluation on the CPU (and the default wherever free memory is not measured)."""

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
    """Map a dtype name to torch; half precision only on CUDA, where it is fast and supported.

    "auto" is bfloat16 on CUDA and float32 on the CPU."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in _DTYPES:
        raise ConfigurationError(f"unknown dtype {spec!r}; choose one of auto, {', '.join(sorted(_DTYPES))}")
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
    channels_last: bool = False
    compiled: bool = False
    alphas_host: tuple[float, ...] = ()
    """a_t as Python floats (same float64 values): read by the DDIM step loop without touching the device."""
    _forward: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    _compiled_batch: list[int] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.alphas_host:
            self.alphas_host = tuple(float(a) for a in self.alphas_cumprod.detach().cpu().tolist())

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
        """eps(x, t) for a batch at one integer timestep; returns float32 of x's shape, on the model's device.

        A compiled model sees one batch size (:meth:`reserve_batch`, else the largest so far): smaller batches
        are padded with zeros and cut again (every image is computed on its own), so it compiles once."""
        batch = x.shape[0]
        x = x.to(self.device, self.dtype)
        forward: Callable[..., Any] = self.unet
        if self._forward is not None:
            forward = self._forward
            self.reserve_batch(batch)
            if batch < self._compiled_batch[0]:
                x = torch.cat([x, x.new_zeros((self._compiled_batch[0] - batch, *x.shape[1:]))])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.full((x.shape[0],), int(timestep), device=self.device, dtype=torch.long)
        out: torch.Tensor = forward(x, t).sample[:batch]
        if self.learned_variance:
            out = out[:, : self.channels]
        return out.float()

    def reserve_batch(self, batch: int) -> None:
        """The batch size a compiled model is compiled for (at least ``batch``); no effect when not compiled."""
        if self._forward is None:
            return
        if not self._compiled_batch:
            self._compiled_batch.append(batch)
        elif batch > self._compiled_batch[0]:
            self._compiled_batch[0] = batch  # one more compilation, then smaller batches pad up to this one

    def with_dtype(self, dtype: torch.dtype) -> FrozenDiffusionModel:
        """This model with its weights in another dtype (a copy; not compiled): the precision check's reference."""
        if dtype == self.dtype and self._forward is None:
            return self
        unet = copy.deepcopy(self.unet).to(dtype=dtype)
        return replace(self, unet=unet, dtype=dtype, compiled=False, _forward=None, _compiled_batch=[])

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
            "channels_last": self.channels_last,
            "compiled": self.compiled,
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


def _pickle_refused(unet_dir: Path) -> ConfigurationError:
    pickles = sorted(p.name for p in unet_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    found = f" (found {', '.join(pickles)})" if pickles else ""
    return ConfigurationError(
        f"{unet_dir}: no .safetensors weights{found}. Pickle weights can run code when loaded, so they are read "
        "only when allowed: load_model(..., allow_pickle_weights=True) for a folder you trust, or convert the "
        "weights to safetensors (UNet2DModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True))"
    )


def _load_local_unet(unet_dir: Path, torch_dtype: torch.dtype, allow_pickle_weights: bool) -> UNet2DModel:
    has_safetensors = any(unet_dir.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle_weights:
        raise _pickle_refused(unet_dir)
    unet: UNet2DModel = UNet2DModel.from_pretrained(
        unet_dir, torch_dtype=torch_dtype, use_safetensors=True if not allow_pickle_weights else None
    )
    return unet


def load_model(
    source: str | Path,
    device: DeviceSpec = "auto",
    dtype: DTypeSpec = "float32",
    *,
    compile: bool = False,
    channels_last: bool | None = None,
    allow_pickle_weights: bool = False,
) -> FrozenDiffusionModel:
    """Load a frozen UNet2DModel and its schedule from a local folder (or a hub id when online).

    ``channels_last`` (default: on CUDA only) stores weights and inputs in that memory format; ``compile``
    wraps the UNet in ``torch.compile`` (compiled on the first call, tens of seconds). Only ``.safetensors``
    weights are read unless ``allow_pickle_weights`` (a trusted folder with ``.bin``)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = Path(source)
    if path.exists():
        unet_dir, scheduler_file = _locate(path)
        unet = _load_local_unet(unet_dir, torch_dtype, allow_pickle_weights)
        scheduler_config: dict[str, Any] = json.loads(scheduler_file.read_text())
        checksum = weights_sha256(unet_dir)
    else:
        # A hub id: diffusers resolves and caches it; only possible when the machine is online.
        try:
            unet = UNet2DModel.from_pretrained(
                str(source), subfolder="unet", torch_dtype=torch_dtype,
                use_safetensors=True if not allow_pickle_weights else None,
            )
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
    use_channels_last = torch_device.type == "cuda" if channels_last is None else channels_last
    if use_channels_last:
        unet.to(memory_format=torch.channels_last)
    return FrozenDiffusionModel(
        unet=unet,
        alphas_cumprod=schedule.alphas_cumprod.to(torch.float64).to(torch_device),
        device=torch_device,
        dtype=torch_dtype,
        source=str(source),
        weights_sha256=checksum,
        unet_config=dict(unet.config),
        scheduler_config=scheduler_config,
        channels_last=use_channels_last,
        compiled=compile,
        _forward=torch.compile(unet, dynamic=False) if compile else None,
    )


_CACHE: dict[tuple[str, str, str, bool], FrozenDiffusionModel] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(
    source: str | Path, device: DeviceSpec = "auto", dtype: DTypeSpec = "float32", *, compile: bool = False
) -> FrozenDiffusionModel:
    """:func:`load_model` once per process and setting (the stages of one run, and task workers, share it)."""
    key = (str(source), str(device), str(dtype), bool(compile))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_model(source, device=device, dtype=dtype, compile=compile)
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every cached model (benchmarks that time loading)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------------- batch size


def auto_batch_size(model: FrozenDiffusionModel, *, fraction: float = 0.6, most: int = 4096) -> int:
    """Images per network evaluation: :data:`CPU_BATCH_SIZE` on the CPU; on CUDA as many as ``fraction`` of the
    free memory (``torch.cuda.mem_get_info``) holds, from the measured peak memory of two probe batches
    (a multiple of 64 when above 64, at most ``most``)."""
    if model.device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(model.device)
    small, large = _probe_peak_bytes(model, 8), _probe_peak_bytes(model, 32)
    per_image = max((large - small) / 24.0, 1.0)
    fixed = max(small - 8 * per_image, 0.0)
    # the DDIM loop also holds x, eps and x0_hat in float32 next to the network's activations
    per_image += 3 * 4 * model.channels * model.resolution**2
    count = int((free * fraction - fixed) // per_image)
    count = max(1, min(most, count))
    chosen = count - count % 64 if count > 64 else count
    log.info("batch size %d from %.1f GiB free (%.1f MiB per image)", chosen, free / 2**30, per_image / 2**20)
    return chosen


def _probe_peak_bytes(model: FrozenDiffusionModel, batch: int) -> float:
    """Peak CUDA memory of one uncompiled forward pass at ``batch`` images, above what was allocated before."""
    torch.cuda.synchronize(model.device)
    torch.cuda.reset_peak_memory_stats(model.device)
    base = torch.cuda.memory_allocated(model.device)
    plain = replace(model, _forward=None, _compiled_batch=[])
    x = torch.zeros((batch, model.channels, model.resolution, model.resolution), device=model.device)
    plain.predict_noise(x, model.num_train_timesteps // 2)
    torch.cuda.synchronize(model.device)
    return float(torch.cuda.max_memory_allocated(model.device) - base)
