"""Ingest: the few-shot set as the run will use it. Read and validate every input once, set aside what is
unusable (with its reason), drop byte-identical copies, tile, check there are enough shots, normalize.

Nothing here touches the store or the network: a run that cannot proceed stops here, before anything is
written and before any network evaluation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ood_core.errors import ConfigurationError, InvalidInputError, NoUsableInputError, QuarantinedInput
from ood_core.io.bands import BandGroup, read_band_group, tile_band_group
from ood_core.io.fits import FitsImage, expand_inputs, read_fits_batch, unmatched_inputs
from ood_core.method.normalization import NormalizedBatch, prepare_band_batch, prepare_batch
from ood_core.pipeline.compatibility import mixed_input_warnings
from ood_core.pipeline.config import KEY_FIELDS_AT_DEFAULT_LEFT_OUT, MIN_USABLE_INPUTS, PipelineParameters
from ood_core.pipeline.frames import FramePlan, block_of, check_tile_size, plan_frames

KEY_IGNORED_PARAMETERS = ("inputs", "band_groups", "store", "batch_size", "compile", "shards", "dask_address",
                          "dask_workers")
"""Parameters that do not change what a run computes from the same input files (the idempotence key ignores them)."""


@dataclass
class IngestResult:
    """The usable images (after tiling), what was set aside and why, and the normalized batch."""

    images: list[FitsImage]
    """Single-band inputs; for band groups, each group's first band (the groups are in ``groups``)."""
    quarantined: list[QuarantinedInput]
    batch: NormalizedBatch
    bands: dict[str, Any] = field(default_factory=dict)
    """How the bands map onto the model's channels (:func:`band_channel_map`), for provenance."""
    groups: list[BandGroup] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    """What was done to each input frame (:class:`~ood_core.pipeline.frames.FramePlan` records; provenance
    ``frames``): whole or tiles, crop, block factor, tiles kept, dropped and not selected."""
    warnings: list[str] = field(default_factory=list)
    """Inputs that may not belong together (:mod:`ood_core.pipeline.compatibility`; provenance ``input_warnings``)."""


def band_channel_map(bands: int, channels: int, model: str) -> dict[str, Any]:
    """How inputs of ``bands`` bands go into a model of ``channels`` channels, or a ConfigurationError saying
    how to fix the call.

    One band per channel when the counts match. A single band into a C-channel model (an explicit ``--model``
    such as models/base64) is replicated into every channel and the samples are the channel mean, as the
    pipeline did before one-channel models shipped. Any other mismatch is refused.
    """
    if bands == channels:
        return {"bands": bands, "channels": channels, "mapping": "one band per channel"}
    if bands == 1:
        return {"bands": 1, "channels": channels,
                "mapping": f"the band replicated into {channels} channels; samples are the channel mean"}
    raise ConfigurationError(
        f"the inputs have {bands} bands but the model {model} reads {channels} channel(s): leave the model out "
        f"(or --model auto) to use the shipped model for {bands} bands, or give a model with {bands} input "
        f"channels (--model)")


def drop_duplicates(images: Sequence[FitsImage]) -> tuple[list[FitsImage], list[QuarantinedInput]]:
    """Keep the first of byte-identical files (same sha256); the others are quarantined as duplicates."""
    first: dict[str, FitsImage] = {}
    kept: list[FitsImage] = []
    duplicates: list[QuarantinedInput] = []
    for image in images:
        original = first.setdefault(image.sha256, image)
        if original is image:
            kept.append(image)
        else:
            duplicates.append(QuarantinedInput(image.path, f"duplicate of {original.path} (same sha256)",
                                               "DuplicateInputError"))
    return kept, duplicates


@dataclass
class FramesRead:
    """The images a run uses (whole inputs and kept tiles), what was set aside, each frame's plan, warnings."""

    images: list[FitsImage]
    quarantined: list[QuarantinedInput]
    plans: list[FramePlan]
    warnings: list[str]


def read_frames(params: PipelineParameters, resolution: int) -> FramesRead:
    """Read, deduplicate, compare (pixel scales, levels) and plan the geometry of every input frame
    (:mod:`ood_core.pipeline.frames`: whole, or tiles at the frame's own scale)."""
    check_tile_size(params.tile, resolution, params.max_block)
    quarantined: list[QuarantinedInput] = list(unmatched_inputs(params.inputs))
    frames, bad = read_fits_batch(expand_inputs(params.inputs), hdu=params.hdu,
                                  min_size=params.min_input_size(resolution))
    frames, duplicates = drop_duplicates(frames)
    quarantined += [*bad, *duplicates]
    warnings = mixed_input_warnings(frames, params.normalization) if len(frames) > 1 else []
    images, plans = plan_frames(frames, resolution, tile=params.tile, max_block=params.max_block,
                                max_tiles=params.max_tiles, seed=params.seed)
    return FramesRead(images, quarantined, plans, warnings)


def read_inputs(params: PipelineParameters, resolution: int) -> tuple[list[FitsImage], list[QuarantinedInput]]:
    """Every image the run uses (whole inputs, kept tiles) and every set-aside input with its reason."""
    read = read_frames(params, resolution)
    return read.images, read.quarantined


def read_band_inputs(params: PipelineParameters, resolution: int) -> tuple[list[BandGroup], list[QuarantinedInput]]:
    """Every usable band group (aligned, tiled when asked); a group with an unusable file is set aside whole."""
    check_tile_size(params.tile, resolution, params.max_block)
    groups: list[BandGroup] = []
    quarantined: list[QuarantinedInput] = []
    for paths in params.band_groups:
        try:
            group = read_band_group(paths, hdu=params.hdu, min_size=params.min_input_size(resolution))
        except InvalidInputError as exc:
            reason = f"band group {' + '.join(paths)} set aside: {exc}"
            quarantined += [QuarantinedInput(path, reason, type(exc).__name__) for path in paths]
            continue
        too_large = block_of(group.bands[0].shape, resolution) > params.max_block
        size = params.tile or (resolution if too_large else None)  # large fields: tiles at their own scale
        groups += tile_band_group(group, size) if size else [group]
    return groups, quarantined


def _ingest_band_groups(params: PipelineParameters, resolution: int, bands: dict[str, Any]) -> IngestResult:
    groups, quarantined = read_band_inputs(params, resolution)
    if len(groups) < MIN_USABLE_INPUTS:
        raise NoUsableInputError(quarantined, usable=len(groups), needed=MIN_USABLE_INPUTS)
    batch = prepare_band_batch(groups, resolution=resolution, stretch=params.stretch, resampling=params.resampling)
    names = groups[0].names
    bands = {**bands, "names": names, "band_map": "per input: inputs[i]['bands'] (channel, name, file, FILTER)"}
    return IngestResult([g.bands[0] for g in groups], quarantined, batch, bands, groups)


def ingest(params: PipelineParameters, resolution: int, channels: int) -> IngestResult:
    """Read, validate, deduplicate, tile and normalize the inputs.

    Raises ConfigurationError on a band/channel mismatch (before reading anything) and NoUsableInputError when
    fewer than MIN_USABLE_INPUTS images are usable (nothing is written then).
    """
    bands = band_channel_map(params.band_count, channels, params.model)
    if params.band_groups:
        return _ingest_band_groups(params, resolution, bands)
    read = read_frames(params, resolution)
    if len(read.images) < MIN_USABLE_INPUTS:
        raise NoUsableInputError(read.quarantined, usable=len(read.images), needed=MIN_USABLE_INPUTS)
    batch = prepare_batch(read.images, resolution=resolution, channels=channels, mode=params.normalization,
                          stretch=params.stretch, resampling=params.resampling)
    return IngestResult(read.images, read.quarantined, batch, bands, frames=[p.record() for p in read.plans],
                        warnings=read.warnings)


def input_identity(sha256: str, plane: str | None) -> str:
    """What the idempotence key knows of one image: its file's sha256, plus the tile's origin for a tile (the
    tiles kept from a frame are part of what the run computes from); whole inputs and cube planes: the sha256."""
    return f"{sha256} {plane}" if plane and "cutout" in plane else sha256


def input_set_key(input_sha256s: Sequence[str], params: PipelineParameters) -> str:
    """Idempotence key of a run: sha256 of the sorted distinct input identities (:func:`input_identity`: the
    file hashes, with the origin of each kept tile) and the parameters.

    File paths, the store and the batch size are left out: the same files with the same settings give the same
    key wherever they lie, so a scheduled flow can tell that it already processed them. Settings added later
    are left out at their defaults (:data:`~ood_core.pipeline.config.KEY_FIELDS_AT_DEFAULT_LEFT_OUT`).
    """
    settings = params.model_dump(mode="json", exclude=set(KEY_IGNORED_PARAMETERS))
    for name, default in KEY_FIELDS_AT_DEFAULT_LEFT_OUT.items():
        if settings.get(name) == default:
            settings.pop(name)
    payload = json.dumps({"inputs": sorted(set(input_sha256s)), "parameters": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
