"""What a training batch is drawn from: patches of the image sets, simulated skies, or a fixed mixture of both.

``TrainConfig.data`` names the sources. ``sky-sim`` (:mod:`.sky_scenes`) composes a new scene for every batch
element; the image sets (:mod:`.training_data`) are cut into patches by the loop or batched patch sampler. With
both, every batch holds ``round(natural_share * batch)`` patches of the image sets after the simulated skies, so
the mixture is the same in every step and the draws stay reproducible from the generator alone.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ood_core.base_model.patches import BatchedPatchSampler, PatchSampler
from ood_core.base_model.sky_library import LibraryConfig, sky_library
from ood_core.base_model.sky_scenes import SceneConfig, SkyScenes
from ood_core.base_model.training_data import (
    DATA_SETS,
    EXCLUDED_ASTRONOMICAL,
    LICENCES,
    SIMULATED_SKIES,
    natural_images,
)
from ood_core.errors import ConfigurationError


class DataConfig(Protocol):
    """The fields of a training config (:class:`~.training.TrainConfig`) that say what a batch is drawn from."""

    resolution: int
    channels: int
    data: tuple[str, ...]
    natural_share: float
    library: dict[str, Any]
    scenes: dict[str, Any]
    init_from: str | None


class Sampler(Protocol):
    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor: ...


class MixedSampler:
    """Simulated skies then image-set patches, ``round(share * batch)`` of the latter, in one batch."""

    def __init__(self, skies: Sampler, images: Sampler, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ConfigurationError(f"natural_share must lie in [0, 1], got {share}")
        self.skies, self.images, self.share = skies, images, share

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        natural = round(self.share * batch_size)
        parts = []
        if batch_size - natural:
            parts.append(self.skies.sample(batch_size - natural, generator))
        if natural:
            parts.append(self.images.sample(natural, generator))
        device = parts[0].device
        return torch.cat([part.to(device) for part in parts])


def split_data(data: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """(sky-sim named?, the image sets named); unknown names raise with the choices."""
    unknown = [name for name in data if name != SIMULATED_SKIES and name not in DATA_SETS]
    if unknown or not data:
        raise ConfigurationError(f"training data {list(data)}: choose from {', '.join([*DATA_SETS, SIMULATED_SKIES])}")
    return SIMULATED_SKIES in data, tuple(name for name in data if name != SIMULATED_SKIES)


def sky_scenes(config: DataConfig, device: torch.device) -> SkyScenes:
    """The simulated-sky sampler of a training config (its library rendered or read from the cache)."""
    library = sky_library(LibraryConfig(**_tuples(config.library)))
    scenes = SceneConfig(**{"resolution": config.resolution, "channels": config.channels,
                            **_tuples(config.scenes)})
    return SkyScenes(library, scenes, device)


def build_sampler(config: DataConfig, patch_sampler: str, device: torch.device) -> Sampler:
    """The batch source of ``config``: patches on ``device`` (loop: the CPU), skies, or their mixture."""
    simulated, image_sets = split_data(config.data)
    patches: Sampler | None = None
    if image_sets:
        images = natural_images(image_sets, config.channels)
        patches = (BatchedPatchSampler(images, config.resolution, device=device) if patch_sampler == "batched"
                   else PatchSampler(images, config.resolution))
    if not simulated:
        assert patches is not None
        return patches
    skies = sky_scenes(config, device)
    return skies if patches is None else MixedSampler(skies, patches, config.natural_share)


def describe_data(config: DataConfig) -> dict[str, Any]:
    """What a model was trained on, for the training log and the card: sets, licences, images, simulations."""
    simulated, image_sets = split_data(config.data)
    described: dict[str, Any] = {
        "sets": list(config.data),
        "channels": config.channels,
        "licences": {name: LICENCES[name] for name in config.data},
        "images": sorted(natural_images(image_sets, config.channels)) if image_sets else [],
        "excluded_astronomical": list(EXCLUDED_ASTRONOMICAL),
        "initialized_from": config.init_from,
    }
    if simulated:
        library = sky_library(LibraryConfig(**_tuples(config.library)))
        described["simulated_skies"] = {
            "library": library.describe(),
            "scenes": SceneConfig(**{"resolution": config.resolution, "channels": config.channels,
                                     **_tuples(config.scenes)}).to_dict(),
            "natural_share": config.natural_share if image_sets else 0.0,
        }
    return described


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples of the frozen configs (a config read from a checkpoint has lists)."""
    def convert(value: Any) -> Any:
        return tuple(convert(v) for v in value) if isinstance(value, list) else value

    return {key: convert(value) for key, value in values.items()}
